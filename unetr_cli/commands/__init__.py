"""The commands, one module per group: each is option declarations, a docstring ending in examples, the
settings resolved once, and one call into the core. `unetr_cli.cli` registers them on the app."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import typer


def command(typer_app: typer.Typer, name: str | None = None) -> Callable:
    """Register a command whose docstring ends in an `Examples:` block, shown after the options."""

    def register(function: Callable) -> Callable:
        doc = inspect.cleandoc(function.__doc__ or "")
        text, _, examples = doc.partition("\nExamples:\n")
        lines = [line.strip() for line in examples.splitlines() if line.strip()]
        epilog = "[bold]Examples[/]\n\n" + "\n\n".join(lines) if lines else None
        return typer_app.command(name, help=text, epilog=epilog)(function)

    return register
