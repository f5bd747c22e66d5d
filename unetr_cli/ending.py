"""How the unetr programs end: their exit handlers run (temporary folders, multiprocessing children, loggers),
the output is flushed, and the process ends with the command's exit code without the interpreter's teardown,
freeing every object torch and MONAI made. That teardown took 0.45 s of each `unetr predict` with the standard
model on a 2-core CPU (0.49 s against 0.045 s from the summary to the process's end) and 0.13 s on an H200.
Every file unetr writes is closed and synced before then (`files.atomic_output`).

The last handler (`_end`) is registered when `unetr_cli` is first imported, so it runs after every handler
registered later (they run in reverse order). It does nothing until `arm` is called, so code that imports
unetr as a library ends as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys

_exit_code: list[int] = []  # the command's exit code once `arm` is called


def arm(code: object) -> None:
    """End the process quickly at exit, with SystemExit's `code` as its exit code."""
    _exit_code[:] = [code if isinstance(code, int) else 0 if code is None else 1]


def _end() -> None:
    if not _exit_code:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not turn success into a traceback
            stream.flush()
    os._exit(_exit_code[0])


atexit.register(_end)
