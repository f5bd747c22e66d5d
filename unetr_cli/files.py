"""Atomic file output: every file unetr writes appears complete or not at all.

A writer gets a temporary path in the destination's own folder (so the final rename is atomic), named after
this process and keeping the destination's suffixes (libraries pick the format from them); the file is
fsynced, renamed over the destination, and the folder is fsynced, so a crash or kill at any moment leaves
either the old file or the new one, never a torn file. On any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".unetr-tmp-"


def temporary_path(path: Path) -> Path:
    """`dir/.unetr-tmp-<pid>-<name>`: beside `path`, unique to this process, suffixes kept."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` to; on success it replaces `path`, on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copy `source` to `path` atomically."""
    import shutil

    with atomic_output(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode())


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
