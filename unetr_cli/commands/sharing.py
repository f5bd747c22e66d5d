"""`unetr export` and `unetr download`: a model out as a file, weights in from the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from unetr_cli.commands import options as opt
from unetr_cli.commands.weights import WeightsOptions, trained_model
from unetr_cli.console import stdout
from unetr_cli.errors import UsageError


def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.", dir_okay=False)],
    checkpoint: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    torchscript: Annotated[
        bool, typer.Option("--torchscript", help="TorchScript (torch.jit.script).")
    ] = False,
    onnx: Annotated[
        bool, typer.Option("--onnx", help="ONNX, dynamic batch axis (checked with onnxruntime).")
    ] = False,
    safetensors: Annotated[
        bool, typer.Option("--safetensors", help="Weights + JSON metadata, no code.")
    ] = False,
    trust_torchscript: opt.TrustTorchscript = False,
    feature_size: opt.FeatureSize = None,
    img_size: opt.ImgSize = None,
    out_channels: opt.OutChannels = None,
    device: opt.Device = None,
    overwrite: opt.Overwrite = False,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
) -> None:
    """Export a model as TorchScript, ONNX or safetensors; settings and label names travel inside the file.

    The exported file is reloaded and compared with the eager model on a random window, on --device; the
    largest absolute difference is printed and the export fails above 1e-3. A file without stored settings
    (like the official UNETR_model_best_acc.pth) needs its architecture named: --preset btcv or the model
    flags.

    Examples:
      unetr export --checkpoint runs/btcv/checkpoint_best.pt --torchscript -o unetr_btcv.pt
      unetr export --checkpoint runs/btcv/checkpoint_best.pt --onnx -o unetr_btcv.onnx
      unetr export --checkpoint UNETR_model_best_acc.pth --preset btcv --safetensors -o unetr.safetensors
    """
    from unetr_cli import export as exporting

    kind = exporting.export_path_kind(torchscript, onnx, safetensors)
    weights_options = WeightsOptions(checkpoint, pretrained_dir, pretrained_model_name, trust_torchscript)
    exporting.check_output_file(output, weights_options.files, overwrite)
    weights = weights_options.read()
    named = any(v is not None for v in (feature_size, img_size, out_channels, config, preset, set_))
    if not weights.settings and not named:
        raise UsageError(
            f"{weights.source}: holds no model settings; name the architecture with --preset btcv (the "
            "official BTCV weights) or --feature-size/--img-size/--out-channels"
        )
    flags = {
        "model.feature_size": feature_size,
        "model.img_size": img_size,
        "model.out_channels": out_channels,
        "inference.device": device,
    }
    trained = trained_model(weights, opt.sources(config, preset, set_), flags)
    report = exporting.export(kind, trained.network.to(trained.device), trained.settings, output)
    parity = "n/a" if report.max_abs_diff is None else f"{report.max_abs_diff:.3g}"
    window = trained.settings.model.img_size
    stdout.print(
        f"wrote {report.path} ({report.kind}); max |eager - exported| on a random {window}^3 window: "
        f"{parity}",
        markup=False,
        soft_wrap=True,
    )
    if report.note:
        stdout.print(f"[yellow]note:[/] {escape(report.note)}")


def download(
    repo_id: Annotated[
        str | None, typer.Argument(help="Hub repository (owner/name) or a registry name.")
    ] = None,
    filename: Annotated[str | None, typer.Option(help="File in the repository.")] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (default: main).")] = None,
    to: Annotated[
        Path,
        typer.Option(
            "--to", help="Folder to place the file in (--pretrained-dir reads it).", file_okay=False
        ),
    ] = Path("pretrained_models"),
    list_models: Annotated[bool, typer.Option("--list", help="Show the registry of known models.")] = False,
    overwrite: opt.Overwrite = False,
) -> None:
    """Download weights through the Hugging Face hub (cache, tokens, HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE
    are honoured) and place them where --pretrained-dir expects them. Files are checked by sha256.

    Examples:
      unetr download --list
      unetr download OWNER/REPO --filename model.safetensors --to pretrained_models
      HF_HUB_OFFLINE=1 unetr download OWNER/REPO --filename model.safetensors
    """
    from unetr_cli import hub

    if list_models:
        _print_registry(hub)
        return
    if repo_id is None:
        raise UsageError("name a repository (OWNER/REPO --filename FILE) or use --list")
    path = hub.download(repo_id, filename, revision, to, overwrite)
    stdout.print(f"saved {path}", markup=False)
    print(path.resolve())


def _print_registry(hub) -> None:
    if not hub.REGISTRY:
        stdout.print(f"The registry is empty: {hub.REFERENCE_WEIGHTS_HINT}.", soft_wrap=True)
        return
    from rich.table import Table

    table = Table(title="known models")
    for column in ("name", "repository", "file", "revision", "features", "labels", "sha256"):
        table.add_column(column, no_wrap=column in ("name", "repository", "file"))
    for m in hub.REGISTRY.values():
        table.add_row(
            m.name, m.repo_id, m.filename, m.revision, str(m.feature_size), m.label_set, m.sha256[:12]
        )
    stdout.print(table)
