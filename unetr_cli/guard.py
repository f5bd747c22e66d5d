"""The rule every command that writes follows, checked before any work:

- no output is one of the command's inputs, however it is spelled (resolved paths and inodes are compared, so
  symbolic and hard links count, and a MetaImage or NRRD header's detached data file is an input too), with or
  without --overwrite;
- an output that exists, which unetr did not write for this purpose, is replaced only with --overwrite;
- while a process writes an output, no other unetr process writes it (`claimed`): the second one waits, then
  finds the output written and fails with one line, unless it was told to replace it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from unetr_cli.errors import OutputExistsError, UsageError

LOCK_PREFIX = ".unetr-lock-"


def input_files(sources: Iterable) -> list[Path]:
    """Every file the inputs read: a file itself and, for a MetaImage or NRRD header, its detached data
    files; a DICOM series' files."""
    from unetr_cli.datafiles import detached_data_files

    files: list[Path] = []
    for source in sources:
        if hasattr(source, "files"):  # a DICOM series
            files += list(source.files)
            continue
        path = Path(source)
        files.append(path)
        if path.is_file():
            files += detached_data_files(path, strict=False)
    return files


def refuse_inputs(option: str, outputs: Iterable[Path], inputs: Iterable[Path]) -> None:
    """UsageError when one of `outputs` is one of `inputs`, whatever --overwrite says."""
    inputs = [Path(p) for p in inputs]
    resolved = {p.resolve(): p for p in inputs}
    inodes = {}
    for source in inputs:
        with contextlib.suppress(OSError):
            status = os.stat(source)
            inodes.setdefault((status.st_dev, status.st_ino), source)
    for output in map(Path, outputs):
        source = resolved.get(output.resolve())
        if source is None and output.exists():
            status = os.stat(output)
            source = inodes.get((status.st_dev, status.st_ino))
        if source is not None:
            spelled = "" if source == output else f" ({source})"
            raise UsageError(
                f"{option} {output}: is an input{spelled}; inputs are never overwritten, choose another "
                "output"
            )


def check_output(option: str, output: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """Before any work: `output` is no input, and if it exists, --overwrite was given."""
    refuse_inputs(option, [output], inputs)
    if output.exists() and not overwrite:
        raise OutputExistsError(output)


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[None]:
    """Hold the output `path` for this process while it is written: an exclusive lock (fcntl) on a hidden
    file beside it, removed afterwards. A second unetr process writing the same output waits here; the lock
    goes with a killed process."""
    import fcntl

    lock = path.with_name(f"{LOCK_PREFIX}{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(lock).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            current = False
        if current:  # not a lock file its previous holder removed while this process waited for it
            break
        os.close(handle)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(handle)
