"""Atomic file output: every file unetr writes appears complete or not at all.

A writer gets a temporary path in the destination's own folder (so the final rename is atomic), named after
this process and keeping the destination's suffixes (libraries pick the format from them); the file is
fsynced, renamed over the destination, and the folder is fsynced, so a crash or kill at any moment leaves
either the old file or the new one, never a torn file. On any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".unetr-tmp-"
FULL_DISK_BYTES = 16 << 20  # a write that failed with less than this left was stopped by a full disk


def temporary_path(path: Path) -> Path:
    """`dir/.unetr-tmp-<pid>-<name>`: beside `path`, unique to this process, suffixes kept."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write `path` to; on success it becomes `path`, on error it is deleted.

    With `overwrite=False` the file is only created, never replaced: if it appeared meanwhile (another process
    wrote the same output), OutputExistsError, and the other process's file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        try:
            yield tmp
        except RuntimeError as err:  # torch's writers say "unexpected pos" where they mean a full disk
            if shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise
        except OSError as err:  # named after the file being written, not its temporary name (or none)
            if err.filename in (None, str(tmp)) and err.errno is not None:
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        _fsync(tmp, os.O_RDONLY)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails where the name exists
            except FileExistsError:
                from unetr_cli.errors import OutputExistsError

                raise OutputExistsError(path, "it was written meanwhile by another process; kept") from None
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
    with atomic_output(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)


def link_or_copy(source: str | Path, path: str | Path) -> Path:
    """Place `path` as another name of `source` (a hard link, atomically: no second copy on disk), or a copy
    where the file system has no hard links. Safe because unetr never writes a file in place: every write
    replaces the name with a new file (`atomic_output`), so the other names keep their content."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        os.link(source, tmp)
    except OSError:
        return copy_file(source, path)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    return path


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


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that unetr processes no longer running left in `folder` (a kill during a
    write); those of live processes stay. Returns what was deleted."""
    removed = []
    for path in folder.glob(f"{TEMP_PREFIX}*") if folder.is_dir() else []:
        pid = path.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def ensure_writable_folder(folder: Path, option: str) -> None:
    """Create `folder` if needed and check it can be written, before any work (a UsageError naming it)."""
    from unetr_cli.errors import UsageError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{option} {folder}: a file is in the way of this folder") from None
    except OSError as err:
        raise UsageError(f"{option} {folder}: cannot create the folder ({err.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: the folder is not writable")
