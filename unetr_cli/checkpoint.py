"""Checkpoints: atomic writes, safe reads, and recognising every weight format we accept.

Accepted inputs (detected from the file's bytes, never its extension):
- our own checkpoints (a dict with weights, optimiser, settings, ...), `.pth`;
- the reference `UNETR_model_best_acc.pth`: a raw state dict;
- the reference trainer's checkpoint dict `{"epoch", "best_acc", "state_dict", ...}`;
- safetensors files (weights plus a JSON metadata header);
- TorchScript archives, only with an explicit trust flag, since loading one runs code from the file.

Pickled files are read with `torch.load(weights_only=True)` and a narrow allow-list (the numpy scalar and
dtype the reference trainer stores for `best_acc`); anything else is refused with the offending global named.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetr_cli.errors import CheckpointError, InputError, UsageError
from unetr_cli.files import atomic_output

CHECKPOINT_FORMAT = "unetr-checkpoint/1"


def _numpy_scalar_globals() -> list:
    """The numpy globals a reference trainer checkpoint needs: scalar() and dtype, under old and new names."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    allowed += [getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType")]
    return allowed


def safe_load(path: str | Path) -> Any:
    """`torch.load` with weights_only=True (an explicit argument, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot
    turn it off) and only the numpy scalar globals allowed."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        what = f"it needs {', '.join(unsafe)}" if unsafe else str(err).splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to load: not plain weights ({what}); only tensors, numbers and "
            "strings are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path}: unreadable or truncated checkpoint ({str(err).splitlines()[0]})"
        ) from None


def _unsafe_globals(path: Path) -> list[str]:
    try:
        allowed = {
            f"{g.__module__}.{g.__qualname__}" for g in _numpy_scalar_globals() if not isinstance(g, tuple)
        }
        allowed |= {name for g in _numpy_scalar_globals() if isinstance(g, tuple) for name in g[1:]}
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # the file may not even be a readable archive
        return []


def atomic_save(payload: Any, path: str | Path) -> Path:
    """`torch.save` atomically: a kill at any moment leaves the old file or the new one, never a torn one."""
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


# --- formats ----------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """'torch' (a torch.save pickle), 'torchscript', or 'safetensors', from the file's first bytes."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a file")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise CheckpointError(f"{path}: truncated or corrupted archive") from None
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 0 < header_len < path.stat().st_size:
            return "safetensors"
    if head[:1] == b"\x80":  # a legacy (non-zip) torch.save pickle
        return "torch"
    raise CheckpointError(f"{path}: not a checkpoint (expected a PyTorch, safetensors or TorchScript file)")


@dataclass
class LoadedWeights:
    """Weights read from any accepted file, with whatever it says about itself."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    settings: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file they came from, for messages


def read_weights(path: str | Path, trust_torchscript: bool = False) -> LoadedWeights:
    """Read model weights from any accepted format (see the module docstring)."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "safetensors":
        weights = _read_safetensors(path)
    elif kind == "torchscript":
        _check_archive(path)
        weights = _read_torchscript(path, trust_torchscript)
    else:
        weights = _read_checked(path)
    weights.source = str(path)
    if weights.settings is not None and not isinstance(weights.settings, dict):
        raise CheckpointError(f"{path}: its stored settings are not a table of settings groups")
    return weights


def _check_archive(path: Path) -> None:
    """Every member of a zip-based checkpoint against its stored CRC-32: torch.load does not check them, and a
    few flipped bytes inside a weight would otherwise load silently (and predict garbage)."""
    if not zipfile.is_zipfile(path):
        return  # a legacy pickle: no checksums to check
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: truncated or corrupted archive ({str(err).splitlines()[0]})"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"{path}: corrupted: {damaged} does not match its stored checksum (a damaged copy? download or "
            "copy it again)"
        )


def _read_checked(path: Path) -> LoadedWeights:
    """A torch.save file read while a helper thread checks its archive's checksums (zlib computes them outside
    the interpreter lock, so the two overlap); a damaged archive is refused as such, whatever the read made of
    it. Reading first is safe: the read is weights-only."""
    with ThreadPoolExecutor(1, thread_name_prefix="unetr-checksums") as pool:
        checked = pool.submit(_check_archive, path)
        try:
            weights = _read_pickled(path)
        except CheckpointError:
            checked.result()  # the checksums name the damage better than the read does
            raise
        checked.result()
    return weights


def _read_pickled(path: Path) -> LoadedWeights:
    payload = safe_load(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        extra = {k: payload[k] for k in ("epoch", "step", "best_dice") if k in payload}
        return LoadedWeights(payload["model"], "unetr checkpoint", payload.get("settings"), extra)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        extra = {k: _plain(payload[k]) for k in ("epoch", "best_acc") if k in payload}
        return LoadedWeights(dict(payload["state_dict"]), "reference trainer checkpoint", None, extra)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return LoadedWeights(dict(payload), "state dict")
    raise CheckpointError(f"{path}: holds no model weights (expected a state dict or a checkpoint dict)")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _read_safetensors(path: Path) -> LoadedWeights:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({str(err).splitlines()[0]})") from None
    settings = _json_metadata(metadata.get("settings"), path)
    return LoadedWeights(
        state, "safetensors", settings, {k: v for k, v in metadata.items() if k != "settings"}
    )


def _read_torchscript(path: Path, trust: bool) -> LoadedWeights:
    if not trust:
        raise CheckpointError(
            f"{path}: is a TorchScript file; loading it runs code stored in the file. If you trust its "
            "source, pass --trust-torchscript (weights are then copied into a fresh model)"
        )
    extra_files = {"settings.json": "", "labels.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: unreadable TorchScript file ({str(err).splitlines()[0]})") from None
    settings = _json_metadata(extra_files["settings.json"] or None, path)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return LoadedWeights(state, "torchscript", settings, {"module": module})


def _json_metadata(text: str | bytes | None, path: Path) -> Any:
    """Settings stored as JSON text inside a weights file, or None."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: its settings metadata is not valid JSON") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path) -> Path:
    """Weights plus JSON metadata (settings, labels, version) as safetensors, written atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_output(path) as tmp:
        save_file(
            tensors,
            str(tmp),
            metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
        )
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes owner-only files; give the usual mode
    return Path(path)


DEFAULT_PRETRAINED_DIR = Path("pretrained_models")
DEFAULT_MODEL_NAME = "UNETR_model_best_acc.pth"


def locate_weights(
    spec: str | None, pretrained_dir: Path | None = None, model_name: str | None = None
) -> Path:
    """Where the weights are: a path, `hub:REPO[/FILE]` (downloaded on demand), or the reference's
    `--pretrained-dir` + `--pretrained-model-name` pair (default pretrained_models/UNETR_model_best_acc.pth).
    """
    if spec and spec.startswith("hub:"):
        from unetr_cli.hub import fetch_reference

        return fetch_reference(spec.removeprefix("hub:"))
    if spec:
        return Path(spec)
    if pretrained_dir is not None or model_name is not None:
        return Path(pretrained_dir or DEFAULT_PRETRAINED_DIR) / (model_name or DEFAULT_MODEL_NAME)
    raise UsageError(
        "no weights given: pass --from/--checkpoint PATH, or --pretrained-dir DIR "
        "[--pretrained-model-name NAME]"
    )


def check_saved_kind(weights: LoadedWeights, saved_checkpoint: str | None) -> None:
    """The reference's `--saved_checkpoint ckpt|torchscript`, checked against what the file really is."""
    if saved_checkpoint is None:
        return
    if saved_checkpoint not in ("ckpt", "torchscript"):
        raise UsageError(f"--saved-checkpoint {saved_checkpoint}: expected ckpt or torchscript")
    if (saved_checkpoint == "torchscript") != (weights.kind == "torchscript"):
        raise UsageError(f"--saved-checkpoint {saved_checkpoint}: {weights.source} is a {weights.kind}")
