"""The `unetr` command line: the app, its error boundary, and the commands of `unetr_cli/commands/`
registered in the order `unetr --help` lists them.

Heavy libraries (torch, monai) are imported inside command bodies so `unetr --help` and shell completion stay
instant. Every command runs behind one error boundary (`_ErrorBoundary`) that turns exceptions into one red
line on stderr and an exit code; `--debug` or `UNETR_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from unetr_cli import __version__, ending
from unetr_cli.commands import command, config, demo, inference, review, serve, sharing, synth, training
from unetr_cli.console import debugging, report_error, stdout
from unetr_cli.monai_extras import skip_unused_extras


class _ErrorBoundary(TyperGroup):
    """Maps exceptions to one line and an exit code: 1 for errors, 2 for usage errors, 130 for Ctrl-C."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort):  # usage errors and exits keep Typer's handling
            raise
        except (Exception, KeyboardInterrupt) as err:
            if debugging() and not isinstance(err, KeyboardInterrupt):
                raise
            raise typer.Exit(report_error(err)) from None


app = typer.Typer(
    cls=_ErrorBoundary,
    help="UNETR 3D CT multi-organ segmentation (BTCV): train, finetune, predict, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"unetr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if debug:  # through the environment, so torchrun workers show tracebacks too
        os.environ["UNETR_DEBUG"] = "1"


app.add_typer(config.config_app, name="config")
for _function in (
    synth.synth,
    training.train,
    training.finetune,
    inference.predict,
    inference.evaluate,
    review.report,
    sharing.export,
    sharing.download,
    serve.serve,
    demo.demo,
):
    command(app)(_function)


def main() -> None:
    """Console-script entry point: the command, its exit handlers, then the end of the process without the
    interpreter's teardown (`ending`)."""
    skip_unused_extras()
    try:
        app(prog_name="unetr")
    except SystemExit as done:  # how Typer always ends
        ending.arm(done.code)
        raise
