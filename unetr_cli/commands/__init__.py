"""The commands, one module per group: each is option declarations, a docstring ending in examples, the
settings resolved once, and one call into the core. `unetr_cli.cli` registers them on the app."""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable

import typer
from typer.core import TyperCommand

WIDE_HELP = 100  # columns the option panels need; below, help takes Click's plain layout


class _Command(TyperCommand):
    """Rich option panels where they fit; on a narrower terminal, where Rich would cut long option names
    ("--pretrained-model-…"), Click's plain layout that puts each name in full."""

    def format_help(self, ctx, formatter) -> None:
        if shutil.get_terminal_size().columns < WIDE_HELP:
            self.rich_markup_mode = None
            if self.epilog:
                from rich.text import Text

                self.epilog = Text.from_markup(self.epilog).plain
        super().format_help(ctx, formatter)


def command(typer_app: typer.Typer, name: str | None = None) -> Callable:
    """Register a command whose docstring ends in an `Examples:` block, shown after the options."""

    def register(function: Callable) -> Callable:
        doc = inspect.cleandoc(function.__doc__ or "")
        text, _, examples = doc.partition("\nExamples:\n")
        lines = [line.strip() for line in examples.splitlines() if line.strip()]
        epilog = "[bold]Examples[/]\n\n" + "\n\n".join(lines) if lines else None
        return typer_app.command(name, cls=_Command, help=text, epilog=epilog)(function)

    return register
