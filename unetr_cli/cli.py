"""The `unetr` command line: thin Typer commands that build settings and call the engine.

Heavy libraries (torch, monai) are imported inside command bodies so `unetr --help` and shell completion stay
instant. Every command runs behind one error boundary (`_ErrorBoundary`) that turns the project's exceptions
into one red line on stderr and an exit code; `--debug` or `UNETR_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from unetr_cli import __version__
from unetr_cli import options as opt
from unetr_cli.console import Reporter, error_line, stdout
from unetr_cli.errors import OutputExistsError, UnetrError, UsageError


class _ErrorBoundary(TyperGroup):
    """Maps exceptions to one line and an exit code: 1 for errors, 2 for usage errors, 130 for Ctrl-C."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort):  # usage errors and exits keep Typer's handling
            raise
        except UnetrError as err:
            if _debugging(ctx):
                raise
            for line in str(err).splitlines() or [type(err).__name__]:
                error_line(line)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            error_line("interrupted")
            raise typer.Exit(130) from None
        except Exception as err:
            if _debugging(ctx):
                raise
            error_line(f"unexpected {type(err).__name__}: {err} (run `unetr --debug ...` for the traceback)")
            raise typer.Exit(1) from None


def _debugging(ctx: typer.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or os.environ.get("UNETR_DEBUG", "") not in ("", "0")


def command(typer_app: typer.Typer, name: str | None = None) -> Callable:
    """Register a command whose docstring ends in an `Examples:` block, shown after the options."""

    def register(function: Callable) -> Callable:
        doc = inspect.cleandoc(function.__doc__ or "")
        text, _, examples = doc.partition("\nExamples:\n")
        lines = [line.strip() for line in examples.splitlines() if line.strip()]
        epilog = "[bold]Examples[/]\n\n" + "\n\n".join(lines) if lines else None
        return typer_app.command(name, help=text, epilog=epilog)(function)

    return register


app = typer.Typer(
    cls=_ErrorBoundary,
    help="UNETR 3D CT multi-organ segmentation (BTCV): train, finetune, predict, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Show the resolved settings and the shipped presets.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        stdout.print(f"unetr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = {"debug": debug}


# --- settings ---------------------------------------------------------------------------------------------


@command(config_app, "show")
def config_show(
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    feature_size: opt.FeatureSize = None,
    img_size: opt.ImgSize = None,
    data_dir: opt.DataDir = None,
    lr: opt.Lr = None,
    batch_size: opt.BatchSize = None,
    json_output: opt.JsonOutput = False,
) -> None:
    """Print the settings every command would use, after defaults < preset < config file < UNETR_* < flags.

    Examples:
      unetr config show
      unetr config show --json --config train.toml --lr 4e-4
      UNETR_MODEL__FEATURE_SIZE=32 unetr config show --preset btcv
    """
    from unetr_cli.settings import settings_from_cli

    settings = settings_from_cli(
        config,
        preset,
        set_,
        **opt.setting_flags(locals()),
    )
    if json_output:
        print(json.dumps(settings.to_dict(), indent=2))
        return
    from rich.table import Table

    for group, values in settings.to_dict().items():
        table = Table(title=group, title_justify="left", show_header=False, box=None, padding=(0, 2))
        for key, value in values.items():
            table.add_row(key, json.dumps(value))
        stdout.print(table)


@command(config_app, "presets")
def config_presets() -> None:
    """List the named presets shipped with unetr and what each one changes.

    Examples:
      unetr config presets
      unetr config show --preset tiny-cpu
    """
    from unetr_cli.settings import preset_names, read_preset

    for name in preset_names():
        changes = ", ".join(
            f"{g}.{k}={json.dumps(v)}" for g, vals in read_preset(name).items() for k, v in vals.items()
        )
        stdout.print(f"[bold]{name}[/]: {escape(changes or '(the defaults)')}", soft_wrap=True)


# --- data -------------------------------------------------------------------------------------------------


@command(app)
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Folder for imagesTr/, labelsTr/ and dataset_0.json.", file_okay=False)
    ],
    cases: Annotated[int, typer.Option(min=1, help="Number of phantoms.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    shape: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="Voxels per axis, e.g. --shape 128 128 64 (default 512 x 512 x slices, like BTCV)."
        ),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(min=2, help="Tag training entries with K cross-validation folds.")
    ] = None,
    validation_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of cases in the 'validation' list.")
    ] = 0.2,
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
) -> None:
    """Generate synthetic abdominal CT phantoms with the 13 BTCV organs, in the BTCV folder layout.

    Images are int16 HU volumes (BTCV-like spacings, LPS or RAS affines), labels use BTCV ids 1..13.

    Examples:
      unetr synth data/phantoms --cases 4 --seed 0
      unetr synth data/small --cases 12 --shape 128 128 64 --folds 5
    """
    from unetr_cli.phantoms import write_dataset

    datalist = out_dir / "dataset_0.json"
    if datalist.exists() and not overwrite:
        raise UsageError(f"{datalist}: already exists; pass --overwrite to regenerate the dataset")
    reporter = Reporter("quiet" if quiet else "rich")
    with reporter.progress() as bar:
        task = bar.add_task("phantoms", total=cases, status="") if bar else None
        path = write_dataset(
            out_dir,
            cases,
            seed=seed,
            shape=shape,
            validation_fraction=validation_fraction,
            folds=folds,
            progress=(lambda i: bar.update(task, completed=i)) if bar else None,
        )
    _print_dataset_table(path, reporter)


def _print_dataset_table(datalist: Path, reporter: Reporter) -> None:
    """A table of what was written, read back from the files' headers."""
    from rich.table import Table

    from unetr_cli.volumes import read_info

    listing = json.loads(datalist.read_text())
    table = Table(title=str(datalist), title_justify="left")
    for column in ("split", "image", "voxels", "spacing (mm)", "axes"):
        table.add_column(column, no_wrap=True)
    for split in ("training", "validation"):
        for entry in listing[split]:
            _, info = read_info(datalist.parent / entry["image"])
            table.add_row(
                split,
                Path(entry["image"]).name,
                "x".join(map(str, info.shape)),
                "x".join(f"{s:.2f}" for s in info.spacing),
                info.orientation,
            )
    stdout.print(table)
    reporter.info(
        f"wrote {len(listing['training'])} training and {len(listing['validation'])} validation cases"
    )


# --- training ---------------------------------------------------------------------------------------------


@command(app)
def train(
    data_dir: opt.DataDir = None,
    json_list: opt.JsonList = None,
    fold: opt.Fold = None,
    logdir: opt.Logdir = None,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    feature_size: opt.FeatureSize = None,
    img_size: opt.ImgSize = None,
    pos_embed: opt.PosEmbed = None,
    optimizer: opt.Optimizer = None,
    lr: opt.Lr = None,
    lrschedule: opt.LrSchedule = None,
    warmup_epochs: opt.WarmupEpochs = None,
    max_epochs: opt.MaxEpochs = None,
    batch_size: opt.BatchSize = None,
    val_every: opt.ValEvery = None,
    amp: opt.Amp = None,
    infer_overlap: opt.InferOverlap = None,
    sw_batch_size: opt.SwBatchSize = None,
    device: opt.Device = None,
    workers: opt.Workers = None,
    cache_rate: opt.CacheRate = None,
    seed: opt.Seed = None,
    save_checkpoint: opt.SaveCheckpoint = None,
    resume: opt.Resume = False,
    stop_after: opt.StopAfter = None,
    overwrite: opt.Overwrite = False,
    nproc_per_node: opt.NprocPerNode = None,
    distributed: opt.Distributed = False,
    nnodes: opt.Nnodes = None,
    node_rank: opt.NodeRank = None,
    rdzv_endpoint: opt.RdzvEndpoint = None,
    max_restarts: opt.MaxRestarts = None,
    scale_lr: opt.ScaleLr = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Train UNETR on a BTCV-layout dataset (datalist JSON + NIfTI volumes) with the reference recipe.

    Writes a run folder with settings.json, checkpoint_latest/best/final.pt, metrics.jsonl, TensorBoard
    events and progress.png. Every case is checked before training starts. With --nproc-per-node N (or
    --distributed) the command relaunches itself through torchrun, one process per GPU.

    Examples:
      unetr train --data-dir /dataset/dataset0 --feature-size 16 --batch-size 1 --lr 1e-4 --max-epochs 5000
      unetr train --data-dir data/phantoms --preset tiny-cpu --logdir runs/tiny
      unetr train --resume --logdir runs/tiny
      unetr train --data-dir /dataset/dataset0 --nproc-per-node 4 --scale-lr
    """
    from unetr_cli.engine import FitOptions
    from unetr_cli.launch import Launch, run_training

    flags = opt.setting_flags(locals())
    options = FitOptions(resume=resume, overwrite=overwrite, stop_after_epochs=stop_after)
    launch = Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint, max_restarts)
    run_training(
        "train", logdir, config, preset, set_, flags, options, opt.output_mode(quiet, json_output), launch
    )


@command(app)
def finetune(
    from_: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    reinit_head: Annotated[
        bool,
        typer.Option(
            help="Re-initialise the output layer (a new label set; use with --out-channels).",
            rich_help_panel="Model",
        ),
    ] = False,
    freeze_encoder: Annotated[
        bool, typer.Option(help="Keep the ViT encoder frozen (small datasets).", rich_help_panel="Model")
    ] = False,
    out_channels: opt.OutChannels = None,
    data_dir: opt.DataDir = None,
    json_list: opt.JsonList = None,
    fold: opt.Fold = None,
    logdir: opt.Logdir = None,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    feature_size: opt.FeatureSize = None,
    lr: opt.Lr = None,
    lrschedule: opt.LrSchedule = None,
    warmup_epochs: opt.WarmupEpochs = None,
    max_epochs: opt.MaxEpochs = None,
    batch_size: opt.BatchSize = None,
    val_every: opt.ValEvery = None,
    amp: opt.Amp = None,
    device: opt.Device = None,
    workers: opt.Workers = None,
    seed: opt.Seed = None,
    stop_after: opt.StopAfter = None,
    overwrite: opt.Overwrite = False,
    nproc_per_node: opt.NprocPerNode = None,
    distributed: opt.Distributed = False,
    nnodes: opt.Nnodes = None,
    node_rank: opt.NodeRank = None,
    rdzv_endpoint: opt.RdzvEndpoint = None,
    max_restarts: opt.MaxRestarts = None,
    scale_lr: opt.ScaleLr = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Fine-tune UNETR from pretrained weights: the official UNETR_model_best_acc.pth (a raw state dict), a
    reference trainer checkpoint, a unetr checkpoint, a safetensors file, or (with --trust-torchscript) a
    TorchScript file such as UNETR_model_best_acc.pt. The format is read from the file itself.

    Examples:
      unetr finetune --from pretrained_models/UNETR_model_best_acc.pth --data-dir /dataset/dataset0
      unetr finetune --pretrained-dir pretrained_models --pretrained-model-name UNETR_model_best_acc.pth -d D
      unetr finetune --from UNETR_model_best_acc.pt --trust-torchscript --data-dir D
      unetr finetune --from runs/btcv/checkpoint_best.pt --out-channels 5 --reinit-head --data-dir my_organs
    """
    from unetr_cli.checkpoint import locate_weights, read_weights
    from unetr_cli.engine import FitOptions
    from unetr_cli.launch import Launch, run_training

    weights_path = locate_weights(from_, pretrained_dir, pretrained_model_name)
    weights = read_weights(weights_path, trust_torchscript)
    flags = opt.setting_flags(locals())
    options = FitOptions(
        overwrite=overwrite,
        stop_after_epochs=stop_after,
        init_weights=weights,
        reinit_head=reinit_head,
        freeze_encoder=freeze_encoder,
    )
    launch = Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint, max_restarts)
    worker_flags = ["--from", str(weights_path)] + [
        flag
        for flag, on in (
            ("--trust-torchscript", trust_torchscript),
            ("--reinit-head", reinit_head),
            ("--freeze-encoder", freeze_encoder),
        )
        if on
    ]
    run_training(
        "finetune",
        logdir,
        config,
        preset,
        set_,
        flags,
        options,
        opt.output_mode(quiet, json_output),
        launch,
        worker_flags,
    )


# --- inference --------------------------------------------------------------------------------------------


@command(app)
def predict(
    inputs: Annotated[list[str], typer.Argument(help="NIfTI scans, folders of them, or glob patterns.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (one input) or folder.")],
    checkpoint: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    saved_checkpoint: opt.SavedCheckpoint = None,
    infer_overlap: opt.InferOverlap = None,
    sw_batch_size: opt.SwBatchSize = None,
    mode: opt.BlendMode = None,
    tta: opt.Tta = None,
    resample: opt.Resample = None,
    infer_amp: opt.InferAmp = None,
    device: opt.Device = None,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats", help="Write organ volumes (ml) and mean HU as JSON and CSV.", rich_help_panel="Run"
        ),
    ] = False,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview", help="Write a PNG with the labels over three slices.", rich_help_panel="Run"
        ),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing", help="Keep outputs that already exist (resume a batch).", rich_help_panel="Run"
        ),
    ] = False,
    overwrite: opt.Overwrite = False,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Segment CT scans; each label map (uint8, BTCV ids) has exactly its scan's shape and affine.

    Preprocessing is the validation pipeline (RAS, training spacing, HU window, body crop); sliding-window
    inference runs at model resolution and the label map is carried back to the scan's own grid. A label
    sidecar (.json) and a 3D Slicer colour table (.ctbl) travel with every output.

    Examples:
      unetr predict scan.nii.gz -o seg.nii.gz --checkpoint runs/btcv/checkpoint_best.pt
      unetr predict scans/ -o segs/ --checkpoint model.pth --stats --preview --skip-existing
      unetr predict "data/imagesTs/*.nii.gz" -o segs/ --pretrained-dir pretrained_models --tta
      unetr predict scan.nii.gz -o seg.nii.gz --checkpoint UNETR_model_best_acc.pt --trust-torchscript
    """
    from unetr_cli.inference import Segmenter, resolve_device
    from unetr_cli.model import load_model
    from unetr_cli.predict import PredictOptions, check_outputs, expand_inputs, plan_outputs, predict_batch

    sources = expand_inputs(inputs)
    targets = plan_outputs(sources, output)
    options = PredictOptions(stats=stats, preview=preview, overwrite=overwrite, skip_existing=skip_existing)
    check_outputs(targets, options)
    settings, model, weights_path = load_model(
        checkpoint,
        pretrained_dir,
        pretrained_model_name,
        trust_torchscript,
        saved_checkpoint,
        config,
        preset,
        set_,
        **opt.setting_flags(locals()),
    )
    options.provenance = {"checkpoint": str(weights_path), "settings": settings.to_dict()}
    reporter = Reporter(opt.output_mode(quiet, json_output))
    result = predict_batch(
        sources,
        targets,
        Segmenter(model, settings, resolve_device(settings.inference.device)),
        options,
        reporter,
    )
    _summarise_batch(result, reporter)


def _summarise_batch(result, reporter: Reporter) -> None:
    reporter.result(
        f"{len(result.written)} written, {len(result.skipped)} skipped (existing), "
        f"{len(result.failed)} failed"
    )
    reporter.event(
        "summary", written=len(result.written), skipped=len(result.skipped), failed=len(result.failed)
    )
    if result.failed:
        for source, problem in result.failed.items():
            error_line(problem if str(source) in problem else f"{source}: {problem}")
        raise typer.Exit(1)


@command(app)
def evaluate(
    data_dir: opt.DataDir = None,
    json_list: opt.JsonList = None,
    split: Annotated[
        str, typer.Option(help="Datalist split to score: validation or training.", rich_help_panel="Data")
    ] = "validation",
    fold: opt.Fold = None,
    pred_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of predicted label maps to score (no model).",
            rich_help_panel="Data",
            file_okay=False,
        ),
    ] = None,
    gt_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of ground-truth label maps, paired by name.", rich_help_panel="Data", file_okay=False
        ),
    ] = None,
    checkpoint: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    saved_checkpoint: opt.SavedCheckpoint = None,
    space: Annotated[
        str,
        typer.Option(
            help="original: each scan's own grid; resampled: the model's space, like the reference test.py.",
            rich_help_panel="Run",
        ),
    ] = "original",
    empty_as_zero: Annotated[
        bool,
        typer.Option(
            "--empty-as-zero",
            help="Score an organ missing from the truth "
            "as Dice 0, like the reference (default: n/a when in neither "
            "map).",
            rich_help_panel="Run",
        ),
    ] = False,
    hd95: Annotated[
        bool, typer.Option("--hd95/--no-hd95", help="Compute HD95 distances (slower).", rich_help_panel="Run")
    ] = True,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write all numbers as JSON.", rich_help_panel="Run", dir_okay=False),
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Write per-case, per-organ rows as CSV.", rich_help_panel="Run", dir_okay=False
        ),
    ] = None,
    infer_overlap: opt.InferOverlap = None,
    sw_batch_size: opt.SwBatchSize = None,
    mode: opt.BlendMode = None,
    tta: opt.Tta = None,
    resample: opt.Resample = None,
    infer_amp: opt.InferAmp = None,
    device: opt.Device = None,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Score segmentations per organ (Dice, HD95 in mm, volume difference) and per case.

    With a model, every case of a datalist split is predicted with the same code as `unetr predict`; with
    --pred-dir, existing label maps are scored against --gt-dir (paired by name) or the datalist's labels.
    The exit code is 0 whatever the scores; it is non-zero only for errors.

    Examples:
      unetr evaluate --data-dir /dataset/dataset0 --checkpoint runs/btcv/checkpoint_best.pt --output r.json
      unetr evaluate --data-dir D --pretrained-dir pretrained_models --space resampled --empty-as-zero
      unetr evaluate --pred-dir segs/ --gt-dir labelsTs/ --csv scores.csv
    """
    from unetr_cli import evaluate as ev
    from unetr_cli.settings import settings_from_cli

    if space not in ("original", "resampled"):
        raise UsageError(f"--space {space}: expected original or resampled")
    if split not in ("validation", "training"):
        raise UsageError(f"--split {split}: expected validation or training")
    with_model = checkpoint is not None or pretrained_dir is not None or pretrained_model_name is not None
    reporter = Reporter(opt.output_mode(quiet, json_output))
    flags = opt.setting_flags(locals())
    unpaired: dict[str, list[str]] = {}
    if with_model:
        if pred_dir is not None or gt_dir is not None:
            raise UsageError("give either a model (--checkpoint) or --pred-dir, not both")
        from unetr_cli.inference import Segmenter, resolve_device
        from unetr_cli.model import load_model

        settings, model, weights_path = load_model(
            checkpoint,
            pretrained_dir,
            pretrained_model_name,
            trust_torchscript,
            saved_checkpoint,
            config,
            preset,
            set_,
            **flags,
        )
        segmenter = Segmenter(model, settings, resolve_device(settings.inference.device))
        cases = ev.datalist_cases(ev.split_entries(settings, split), None)
        score = lambda case: ev.score_model(case, segmenter, space, empty_as_zero, hd95)  # noqa: E731
    else:
        if space == "resampled":
            raise UsageError(
                "--space resampled needs a model (--checkpoint): label folders have no model space"
            )
        settings, weights_path = settings_from_cli(config, preset, set_, **flags), None
        cases, unpaired = ev.label_map_cases(settings, pred_dir, gt_dir, split, data_dir is not None)
        for kind, names in unpaired.items():
            if names:
                reporter.warn(f"{len(names)} unpaired {kind}: {', '.join(Path(n).name for n in names[:5])}")
        classes = settings.model.out_channels
        score = lambda case: ev.score_files(case, classes, empty_as_zero, hd95)  # noqa: E731
    evaluation = ev.run_cases(cases, score, reporter)
    evaluation.unpaired = unpaired
    summary = ev.summarise(evaluation)
    context = {
        "space": space,
        "empty_as_zero": empty_as_zero,
        "checkpoint": str(weights_path) if weights_path else None,
        "settings": settings.to_dict(),
    }
    ev.write_results(evaluation, summary, context, output, csv_path)
    if reporter.mode != "json":
        stdout.print(ev.results_table(summary, f"unetr evaluate ({space} space)"))
    reporter.event("summary", **summary)
    for name, problem in evaluation.failed.items():
        error_line(f"case {name} failed: {problem}")
    if evaluation.failed:
        raise typer.Exit(1)


# --- sharing ----------------------------------------------------------------------------------------------


@command(app)
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
    overwrite: opt.Overwrite = False,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
) -> None:
    """Export a model as TorchScript, ONNX or safetensors; settings and label names travel inside the file.

    The exported file is reloaded and compared with the eager model on a random window; the largest absolute
    difference is printed and the export fails above 1e-3. A file without stored settings (like the official
    UNETR_model_best_acc.pth) needs its architecture named: --preset btcv or the model flags.

    Examples:
      unetr export --checkpoint runs/btcv/checkpoint_best.pt --torchscript -o unetr_btcv.pt
      unetr export --checkpoint runs/btcv/checkpoint_best.pt --onnx -o unetr_btcv.onnx
      unetr export --checkpoint UNETR_model_best_acc.pth --preset btcv --safetensors -o unetr.safetensors
    """
    from unetr_cli import export as exporting
    from unetr_cli.checkpoint import locate_weights, read_weights
    from unetr_cli.model import load_model

    kind = exporting.export_path_kind(torchscript, onnx, safetensors)
    if output.exists() and not overwrite:
        raise OutputExistsError(output)
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: the folder {output.parent} does not exist")
    path = locate_weights(checkpoint, pretrained_dir, pretrained_model_name)
    named = any(v is not None for v in (feature_size, img_size, out_channels, config, preset, set_))
    if not read_weights(path, trust_torchscript).settings and not named:
        raise UsageError(
            f"{path}: holds no model settings; name the architecture with --preset btcv (the official "
            "BTCV weights) or --feature-size/--img-size/--out-channels"
        )
    settings, model, _ = load_model(
        checkpoint,
        pretrained_dir,
        pretrained_model_name,
        trust_torchscript,
        None,
        config,
        preset,
        set_,
        **opt.setting_flags(locals()),
    )
    exporter = {
        "torchscript": exporting.export_torchscript,
        "onnx": exporting.export_onnx,
        "safetensors": exporting.export_safetensors,
    }[kind]
    report = exporter(model, settings, output)
    parity = "n/a" if report.max_abs_diff is None else f"{report.max_abs_diff:.3g}"
    stdout.print(
        f"wrote {report.path} ({report.kind}); max |eager - exported| on a random "
        f"{settings.model.img_size}^3 window: {parity}",
        markup=False,
        soft_wrap=True,
    )
    if report.note:
        stdout.print(f"[yellow]note:[/] {escape(report.note)}")


@command(app)
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
    path = hub.download(repo_id, filename, revision, to)
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


# --- quick start ------------------------------------------------------------------------------------------

NEXT_STEPS = """next, on real data:
  unetr train --data-dir /dataset/dataset0 --preset btcv            # the BTCV recipe (GPU)
  unetr finetune --from pretrained_models/UNETR_model_best_acc.pth --data-dir /dataset/dataset0
  unetr predict scan.nii.gz -o seg.nii.gz --checkpoint runs/<run>/checkpoint_best.pt --stats --preview
  unetr evaluate --data-dir /dataset/dataset0 --checkpoint runs/<run>/checkpoint_best.pt"""


@command(app)
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything the demo writes.", file_okay=False)
    ] = Path("unetr-demo"),
    minutes: Annotated[float, typer.Option(min=0.5, help="Upper bound on the training time.")] = 7.5,
    cases: Annotated[int, typer.Option(min=4, help="Phantoms to generate (1 in 6 held out).")] = 12,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Run the whole job on generated phantoms: synthesise a BTCV-layout dataset, train a small UNETR (the
    demo preset), score the held-out phantoms per organ, and segment a held-out scan in its own space with
    organ statistics and a preview picture. About 8 minutes on a 2-core CPU, about one on a GPU.

    Examples:
      unetr demo
      unetr demo --out /tmp/unetr-demo --minutes 3 --overwrite
    """
    from unetr_cli.demo import run_demo

    reporter = Reporter(opt.output_mode(quiet, json_output))
    result = run_demo(out, minutes, cases, seed or 0, device or "auto", overwrite, reporter)
    reporter.event(
        "demo",
        mean_dice=result.mean_dice,
        held_out_dice=result.held_out_dice,
        epochs=result.epochs,
        minutes=result.minutes,
        artefacts={k: str(v) for k, v in result.artefacts.items()},
    )
    reporter.result(
        f"mean organ Dice on the held-out phantoms: {result.mean_dice:.3f} (held-out scan "
        f"{result.held_out_dice:.3f}) after {result.epochs} epochs, {result.minutes:.1f} minutes in all"
    )
    for name, path in result.artefacts.items():
        reporter.result(f"  {name:17s} {path}")
    reporter.result(NEXT_STEPS)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="unetr")
