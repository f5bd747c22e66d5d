"""The `unetr` command line: thin Typer commands that build settings and call the engine.

This module holds the app, its error boundary, the settings, data and demo commands, and registers the
training, inference and sharing commands of `unetr_cli/commands/` in the order `unetr --help` lists them.
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
from unetr_cli.commands import inference, sharing, training
from unetr_cli.console import Reporter, error_line, stdout
from unetr_cli.errors import UnetrError, UsageError


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


# --- quick start ------------------------------------------------------------------------------------------

NEXT_STEPS = """next, on real data:
  unetr train --data-dir /dataset/dataset0 --preset btcv            # the BTCV recipe (GPU)
  unetr finetune --from pretrained_models/UNETR_model_best_acc.pth --data-dir /dataset/dataset0
  unetr predict scan.nii.gz -o seg.nii.gz --checkpoint runs/<run>/checkpoint_best.pt --stats --preview
  unetr evaluate --data-dir /dataset/dataset0 --checkpoint runs/<run>/checkpoint_best.pt"""


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


for _function in (
    synth,
    training.train,
    training.finetune,
    inference.predict,
    inference.evaluate,
    sharing.export,
    sharing.download,
    demo,
):
    command(app)(_function)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="unetr")
