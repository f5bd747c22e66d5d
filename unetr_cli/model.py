"""Build MONAI's UNETR from settings and map any accepted state dict onto it.

The official BTCV weights were saved from the reference network, which differs from today's
`monai.networks.nets.UNETR` by key names only in ways that do not matter for the forward pass:
- 4 keys it has and MONAI dropped (the unused class token and three unused `conv3` shortcut convolutions);
- 24 keys MONAI added (`norm_cross_attn`, used only with cross-attention, which UNETR never enables).
`convert_state_dict` drops exactly the former, fills the latter from the fresh model, strips DDP/compile
prefixes, and otherwise demands an exact match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from unetr_cli.errors import CheckpointError
from unetr_cli.settings import ModelSettings

OBSOLETE_REFERENCE_KEYS = re.compile(
    r"^(vit\.patch_embedding\.cls_token|encoder[23]\.blocks\.\d+\.1\.conv3\.conv\.weight)$"
)
NEW_MONAI_KEYS = re.compile(r"^vit\.blocks\.\d+\.norm_cross_attn\.(weight|bias)$")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_KEYS = ("out.conv.conv.weight", "out.conv.conv.bias")


def build_model(settings: ModelSettings) -> torch.nn.Module:
    """MONAI's UNETR with the architecture in `settings` (pos_embed maps to MONAI's proj_type)."""
    from monai.networks.nets import UNETR

    model = UNETR(
        in_channels=settings.in_channels,
        out_channels=settings.out_channels,
        img_size=settings.img_size,
        feature_size=settings.feature_size,
        hidden_size=settings.hidden_size,
        mlp_dim=settings.mlp_dim,
        num_heads=settings.num_heads,
        proj_type=settings.pos_embed,
        norm_name=settings.norm_name,
        conv_block=settings.conv_block,
        res_block=settings.res_block,
        dropout_rate=settings.dropout_rate,
    )
    # UNETR never enables cross-attention, so these norms never get a gradient; freezing them spares DDP
    # from searching for unused parameters at every step.
    for name, parameter in model.named_parameters():
        if NEW_MONAI_KEYS.match(name):
            parameter.requires_grad_(False)
    return model


def strip_wrapper_prefixes(key: str) -> str:
    """`module.x` (DDP) and `_orig_mod.x` (torch.compile) both become `x`."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def describe_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """The model settings a state dict's tensor shapes reveal (feature size, classes, hidden size, ...)."""
    found: dict[str, object] = {}
    if (w := state.get("encoder1.layer.conv1.conv.weight")) is not None and w.ndim == 5:
        found["feature_size"], found["in_channels"] = int(w.shape[0]), int(w.shape[1])
    if (w := state.get("out.conv.conv.weight")) is not None and w.ndim == 5:
        found["out_channels"] = int(w.shape[0])
    if (w := state.get("vit.patch_embedding.position_embeddings")) is not None and w.ndim == 3:
        found["hidden_size"] = int(w.shape[2])
        found["img_size"] = 16 * round(int(w.shape[1]) ** (1 / 3))
    if (w := state.get("vit.blocks.0.mlp.linear1.weight")) is not None:
        found["mlp_dim"] = int(w.shape[0])
    if "vit.patch_embedding.patch_embeddings.1.weight" in state:
        found["pos_embed"] = "perceptron"
    elif "vit.patch_embedding.patch_embeddings.weight" in state:
        found["pos_embed"] = "conv"
    return found


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    reinit_head: bool = False,
) -> dict[str, torch.Tensor]:
    """Map `source` (any accepted state dict) onto the keys and shapes of `target` (a fresh model's).

    Args:
        source: weights from a file; may carry `module.`/`_orig_mod.` prefixes and the reference's keys.
        target: the state dict of the freshly built model (its keys, shapes and dtypes; with `reinit_head`
            also its re-initialised output layer). The keys MONAI added get a LayerNorm's initial values.
        reinit_head: keep the target's output layer (a different label set) instead of the source's.

    Raises:
        CheckpointError: any other difference, listing missing, unexpected and wrong-shaped keys, with a hint
            when the cause is a different feature_size, out_channels or other architecture setting.
    """
    state = {strip_wrapper_prefixes(k): v for k, v in source.items()}
    state = {k: v for k, v in state.items() if not (OBSOLETE_REFERENCE_KEYS.match(k) and k not in target)}
    for key in target:
        if NEW_MONAI_KEYS.match(key) and key not in state:  # a LayerNorm's own initial values
            fill = torch.ones if key.endswith(".weight") else torch.zeros
            state[key] = fill(target[key].shape, dtype=target[key].dtype)
    if reinit_head:
        for key in HEAD_KEYS:
            state[key] = target[key].clone()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(_mismatch_message(state, target, missing, unexpected, wrong_shape))
    _check_values(state, target)
    return {k: state[k].to(dtype=target[k].dtype) for k in target}


def _check_values(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    """Weights must be floating-point numbers, all finite: integer or boolean tensors would be cast silently
    and NaN weights give an all-background prediction."""
    floating = [k for k in target if target[k].dtype.is_floating_point]
    not_float = [f"{k} ({state[k].dtype})" for k in floating if not state[k].dtype.is_floating_point]
    if not_float:
        raise CheckpointError(
            f"{len(not_float)} weight(s) are not floating-point numbers: {', '.join(not_float[:3])}"
        )
    broken = [k for k in floating if not bool(torch.isfinite(state[k]).all())]
    if broken:
        raise CheckpointError(f"{len(broken)} weight(s) hold NaN or infinite values: {', '.join(broken[:3])}")


def _mismatch_message(state, target, missing, unexpected, wrong_shape) -> str:
    def listing(keys: list[str], limit: int = 6) -> str:
        shown = ", ".join(keys[:limit])
        return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

    parts = ["the weights do not fit the model:"]
    if wrong_shape:
        shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(target[k].shape)}" for k in wrong_shape]
        parts.append(f"{len(wrong_shape)} wrong-shaped ({listing(shapes, 3)})")
    if missing:
        parts.append(f"{len(missing)} missing ({listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({listing(unexpected)})")
    file_arch, model_arch = describe_architecture(state), describe_architecture(target)
    differing = [f"{k}={v} (model: {model_arch[k]})" for k, v in file_arch.items() if model_arch.get(k) != v]
    if differing:
        flags = " ".join(
            f"--{k.replace('_', '-')} {file_arch[k]}" for k in file_arch if model_arch.get(k) != file_arch[k]
        )
        hint = f"hint: the file was saved from a model with {', '.join(differing)}; try {flags}"
        if any(k.startswith("out_channels") for k in differing):
            hint += " (or keep your label set with --out-channels K --reinit-head)"
        parts.append(hint)
    return "\n".join([parts[0], *("  " + p for p in parts[1:])])


def load_state(
    model: torch.nn.Module, source: Mapping[str, torch.Tensor], reinit_head: bool = False, origin: str = ""
) -> None:
    """Load converted weights into `model` strictly (every key and shape accounted for); a mismatch is
    reported with the `origin` file named."""
    try:
        converted = convert_state_dict(source, model.state_dict(), reinit_head=reinit_head)
    except CheckpointError as error:
        raise CheckpointError(f"{origin}: {error}" if origin else str(error)) from None
    model.load_state_dict(converted, strict=True)


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """The same network, faster to evaluate: parameter-free InstanceNorm3d layers become GroupNorm with one
    group per channel, which normalises over exactly the same voxels (identical in fp32) but runs on
    channels_last_3d tensors without the layout copies InstanceNorm makes. Changes `model` in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (
                isinstance(child, torch.nn.InstanceNorm3d)
                and not child.affine
                and not child.track_running_stats
            ):
                setattr(
                    module,
                    name,
                    torch.nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=False),
                )
    return model.eval()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def model_with_weights(
    settings: ModelSettings, state: Mapping[str, torch.Tensor], origin: str = ""
) -> torch.nn.Module:
    """A model of `settings` holding `state` (converted and checked by `convert_state_dict`), in eval mode.

    The network is built on the meta device, skipping its initialisation, and takes the file's tensors as its
    own: no random initialisation of ~90M parameters that would be overwritten at once.
    """
    with torch.device("meta"), _SkipInitialisation():
        model = build_model(settings)
    try:
        converted = convert_state_dict(state, model.state_dict())
    except CheckpointError as error:
        raise CheckpointError(f"{origin}: {error}" if origin else str(error)) from None
    model.load_state_dict(converted, strict=True, assign=True)
    return model.eval()


class _SkipInitialisation(torch.overrides.TorchFunctionMode):
    """In-place tensor methods (`uniform_`, `erfinv_`, ...) on meta tensors do nothing: the values are
    about to be replaced. On meta, MONAI's `trunc_normal_` would otherwise reach `erfinv_`, which has no meta
    kernel and imports torch._dynamo to decompose it (2 s of every `unetr predict` start-up on a CPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__")
        if in_place and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))
