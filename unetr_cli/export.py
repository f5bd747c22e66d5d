"""Export a trained model as TorchScript, ONNX or safetensors, with a parity check against the eager model.

TorchScript uses `torch.jit.script`, which is exact for MONAI's UNETR at any batch size (tracing would bake in
the example's shapes). The settings and label names travel inside each file, so `unetr predict` can use it
without flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from unetr_cli import __version__
from unetr_cli.checkpoint import save_safetensors
from unetr_cli.errors import UnetrError, UsageError
from unetr_cli.files import atomic_output
from unetr_cli.labels import label_names
from unetr_cli.settings import Settings

TOLERANCE = 1e-3  # max |eager - exported| on logits; fp32 kernels differ by ~1e-5


@dataclass
class ExportReport:
    path: Path
    kind: str
    max_abs_diff: float | None
    note: str = ""


def metadata(settings: Settings) -> dict[str, str]:
    """What travels with an exported model: settings, label names and the producing version."""
    return {
        "settings.json": json.dumps(settings.to_dict()),
        "labels.json": json.dumps(label_names(settings.model.out_channels)),
        "unetr_version": __version__,
    }


def _parity_input(settings: Settings, device: torch.device, batch: int = 1) -> torch.Tensor:
    """A random window (the same one every time), on the model's device: the check runs where the model is."""
    generator = torch.Generator().manual_seed(0)
    size = settings.model.img_size
    return torch.rand((batch, settings.model.in_channels, size, size, size), generator=generator).to(device)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def export_torchscript(model: torch.nn.Module, settings: Settings, path: Path) -> ExportReport:
    """Script, save, reload from disk, and compare with the eager model on a random window. The archive is
    serialised in memory and written by Python: TorchScript's own file writer aborts the whole process on a
    full disk (a native crash that leaves its temporary file), Python's raises an error."""
    import io

    model = model.eval()
    scripted = torch.jit.script(model)
    extra = metadata(settings)
    archive = io.BytesIO()
    torch.jit.save(scripted, archive, _extra_files={k: v for k, v in extra.items() if k.endswith(".json")})
    with atomic_output(path) as tmp:
        tmp.write_bytes(archive.getbuffer())
        del archive
        device = _device_of(model)
        reloaded = torch.jit.load(str(tmp), map_location=device)  # the file we just wrote ourselves
        diff = _max_diff(model, lambda x: reloaded(x), _parity_input(settings, device))
        _check(diff, path)
    return ExportReport(path, "TorchScript", diff)


def export_onnx(model: torch.nn.Module, settings: Settings, path: Path) -> ExportReport:
    """ONNX (opset 17) with a dynamic batch axis; checked with onnxruntime when it is installed."""
    model = model.eval()
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UsageError("--onnx needs the onnx package: pip install 'unetr[onnx]'") from None
    example = _parity_input(settings, _device_of(model))
    with atomic_output(path) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
        _add_onnx_metadata(tmp, settings)
        try:
            import onnxruntime
        except ImportError:
            diff = None
        else:
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            batch = _parity_input(settings, example.device, batch=2)  # not the export example's batch size
            diff = _max_diff(
                model, lambda x: torch.from_numpy(session.run(None, {"image": x.cpu().numpy()})[0]), batch
            )
            _check(diff, path)
    if diff is None:
        return ExportReport(
            path, "ONNX", None, "onnxruntime is not installed (pip install 'unetr[onnx]'): parity not checked"
        )
    return ExportReport(path, "ONNX", diff)


def export_safetensors(model: torch.nn.Module, settings: Settings, path: Path) -> ExportReport:
    """Weights only, with settings, labels and version in the JSON header: the safe format for sharing."""
    save_safetensors(
        model.state_dict(),
        {
            "settings": settings.to_dict(),
            **{k: v for k, v in metadata(settings).items() if k != "settings.json"},
        },
        path,
    )
    from unetr_cli.checkpoint import read_weights

    reloaded = read_weights(path)
    same = all(torch.equal(v.cpu(), reloaded.state_dict[k]) for k, v in model.state_dict().items())
    if not same:
        raise UnetrError(f"{path}: the written weights differ from the model's")
    return ExportReport(path, "safetensors", 0.0)


def _add_onnx_metadata(path: Path, settings: Settings) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata(settings).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key.removesuffix(".json"), value
    onnx.save(proto, str(path))


@torch.no_grad()
def _max_diff(model: torch.nn.Module, exported, example: torch.Tensor) -> float:
    expected = model(example)
    actual = exported(example)
    return float((expected.cpu() - actual.cpu()).abs().max())


def _check(diff: float, path: Path) -> None:
    if not diff <= TOLERANCE:
        raise UnetrError(
            f"{path}: exported model differs from the eager model by {diff:.3g} (tolerance "
            f"{TOLERANCE}); nothing was written"
        )


def check_free_space(model: torch.nn.Module, path: Path) -> None:
    """Refuse before writing when the folder cannot hold the file: TorchScript's writer aborts the whole
    process on a full disk (a native crash, not an error), so this is checked first."""
    import shutil

    need = sum(t.numel() * t.element_size() for t in model.state_dict().values()) * 1.1 + (16 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise UnetrError(
            f"{path}: not enough free space in {path.parent} ({free / 2**20:.0f} MB free, about "
            f"{need / 2**20:.0f} MB needed)"
        )


def check_output_file(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """Before the weights are read: -o is no input, exists only with --overwrite, and its folder exists and
    is writable (temporary files of dead unetr processes there are removed)."""
    from unetr_cli.files import ensure_writable_folder, remove_stale_temporaries
    from unetr_cli.guard import check_output

    check_output("-o", output, inputs, overwrite)
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: the folder {output.parent} does not exist")
    ensure_writable_folder(output.parent, "-o")
    remove_stale_temporaries(output.parent)


def export(kind: str, model: torch.nn.Module, settings: Settings, output: Path) -> ExportReport:
    """Export `model` as `kind` (torchscript, onnx or safetensors) after checking the folder can hold it."""
    exporter = {"torchscript": export_torchscript, "onnx": export_onnx, "safetensors": export_safetensors}[
        kind
    ]
    check_free_space(model, output)
    return exporter(model, settings, output)


def export_path_kind(torchscript: bool, onnx: bool, safetensors: bool) -> str:
    chosen = [k for k, v in (("torchscript", torchscript), ("onnx", onnx), ("safetensors", safetensors)) if v]
    if len(chosen) != 1:
        raise UsageError("choose exactly one of --torchscript, --onnx, --safetensors")
    return chosen[0]
