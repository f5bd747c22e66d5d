"""The project's exception types: each carries a message a user can act on and an exit code."""

from __future__ import annotations

import re
from pathlib import Path


class UnetrError(Exception):
    """Base class: the CLI prints the message as one red line and exits with `exit_code`."""

    exit_code = 1


class UsageError(UnetrError):
    """A bad option, setting or combination of them (exit code 2, like a CLI usage error)."""

    exit_code = 2


class SettingsError(UsageError):
    """Settings that fail validation; the message lists one line per bad field."""


class InputError(UnetrError):
    """A file the user gave us is missing, unreadable or not what it must be."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        return (self.__class__, (self.path, self.problem))


class DataError(UnetrError):
    """The dataset as a whole is unusable (several files may be named)."""


class CheckpointError(UnetrError):
    """A checkpoint cannot be read safely or does not fit the model."""


class OutputExistsError(UnetrError):
    """We refuse to overwrite something already on disk."""

    def __init__(self, path: str | Path, hint: str = "pass --overwrite to replace it"):
        self.path = Path(path)
        self.hint = hint
        super().__init__(f"{path}: already exists; {hint}")

    def __reduce__(self):
        return (self.__class__, (self.path, self.hint))


class HubError(UnetrError):
    """A download from the Hugging Face hub failed."""


class TrainingError(UnetrError):
    """Training cannot go on (diverged, incompatible resume, ...)."""


class Interrupted(UnetrError):
    """Ctrl-C or SIGTERM stopped a run after it saved its state (exit code 130 or 143, as shells expect)."""

    def __init__(self, message: str, signal_number: int = 2):
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
        super().__init__(message)

    def __reduce__(self):
        return (self.__class__, (str(self), self.signal_number))


def root_cause(err: BaseException) -> BaseException:
    """The error behind MONAI's `applying transform ...` wrappers: the missing file, the memory or the disk
    that a user can act on, not the transform it happened in."""
    while (
        isinstance(err, RuntimeError)
        and str(err).startswith("applying transform")
        and err.__cause__ is not None
    ):
        err = err.__cause__
    return err


def failure_message(err: BaseException, path: str | Path) -> str:
    """What a batch reports for one case that failed with `err` while working on `path`: `known_failure`,
    else one "unexpected" line (`--debug` shows its traceback)."""
    err = root_cause(err)
    hint = "run `unetr --debug ...` for the traceback"
    return known_failure(err, path) or f"{path}: unexpected {type(err).__name__}: {first_line(err)} ({hint})"


def known_failure(err: BaseException, path: str | Path) -> str | None:
    """The project's own errors as they are, and the failures of the machine (disk full, no permission, out
    of host or GPU memory, a CUDA error) named in one line; None for anything else."""
    import errno

    err = root_cause(err)
    if isinstance(err, UnetrError):
        return str(err)
    if isinstance(err, OSError):
        reason = {
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system",
        }.get(err.errno, err.strerror or type(err).__name__)
        return f"{err.filename or path}: {reason}"
    if isinstance(err, MemoryError):
        return f"{path}: not enough memory"
    asked = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", str(err))
    if isinstance(err, RuntimeError) and asked:  # torch's allocator on the CPU
        return f"{path}: not enough memory ({int(asked.group(1)) / 2**30:.1f} GiB asked for)"
    if type(err).__name__ == "OutOfMemoryError":  # torch's, for a GPU
        return f"{path}: out of GPU memory ({first_line(err)})"
    if isinstance(err, RuntimeError) and "CUDA" in str(err):
        return f"{path}: {first_line(err)}"
    return None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
