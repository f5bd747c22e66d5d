"""Rich consoles, progress bars and main-process-only output (plain, quiet or JSON lines)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

OutputMode = Literal["rich", "quiet", "json"]

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def is_main_process() -> bool:
    """True outside torchrun and on global rank 0 (read from the environment, so no torch import)."""
    return os.environ.get("RANK", "0") == "0"


def error_line(message: str) -> None:
    """The one red line a user sees for a known error."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def debugging() -> bool:
    """True under `unetr --debug` or UNETR_DEBUG=1: errors show their traceback."""
    return os.environ.get("UNETR_DEBUG", "") not in ("", "0")


def run_as_program(function) -> int:
    """Run `function()` as a program (a torchrun worker): its errors end it with the one-line message and exit
    code the CLI would give (the traceback under --debug); 0 when it returns."""
    try:
        function()
    except (Exception, KeyboardInterrupt) as err:
        if debugging():
            raise
        return report_error(err)
    return 0


def report_error(err: BaseException) -> int:
    """Print what a user sees for `err` (the project's errors as their message, anything else as one
    "unexpected" line) and return the exit code: the error's own, 130 for Ctrl-C, else 1."""
    from unetr_cli.errors import UnetrError, known_failure, root_cause

    err = root_cause(err)
    if isinstance(err, UnetrError):
        for line in str(err).splitlines() or [type(err).__name__]:
            error_line(line)
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        error_line("interrupted")
        return 130
    named = known_failure(err, "unetr")  # a full disk, no permission, out of memory
    if named is not None:
        error_line(named)
        return 1
    error_line(f"unexpected {type(err).__name__}: {err} (run `unetr --debug ...` for the traceback)")
    return 1


class Reporter:
    """Everything a command says while it works, in the chosen output mode, from the main process only."""

    def __init__(self, mode: OutputMode = "rich"):
        self.mode = mode
        self.enabled = is_main_process()

    @property
    def shows_progress(self) -> bool:
        return self.enabled and self.mode == "rich"

    def info(self, text: str, markup: bool = False) -> None:
        """A human-readable line (suppressed by --quiet and --json); `markup` only for our own styling."""
        if self.shows_progress:
            stdout.print(text, soft_wrap=True, markup=markup)

    def result(self, text: str) -> None:
        """A line the user asked for (printed with --quiet too, replaced by events with --json)."""
        if self.enabled and self.mode != "json":
            stdout.print(text, soft_wrap=True, markup=False)

    def warn(self, text: str) -> None:
        if self.enabled and self.mode != "json":
            stderr.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)
        self.event("warning", message=text)

    def event(self, kind: str, **fields: Any) -> None:
        """A machine-readable record: one JSON line on stdout in --json mode."""
        if self.enabled and self.mode == "json":
            sys.stdout.write(
                json.dumps({"event": kind, "time": round(time.time(), 3), **fields}, default=str) + "\n"
            )
            sys.stdout.flush()

    def table(self, table: Table) -> None:
        if self.shows_progress:
            stdout.print(table)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress | None]:
        """A rich progress display, or None where nothing should be drawn."""
        if not self.shows_progress:
            yield None
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=stdout, transient=False) as bar:
            yield bar
