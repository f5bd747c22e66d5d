"""A .zip of DICOM files unpacked to a temporary folder, within limits: total and per-member size, member
count and compression ratio (a zip bomb is refused before a byte is written, naming the member, the limit and
the setting that raises it), and the free space of the temporary folder. Members are read no further than
their declared size; names that climb out of the folder are skipped. The folder goes when the process ends,
and the folders of dead processes are removed when the next one unpacks."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from unetr_cli.errors import InputError, first_line

PREFIX = "unetr-dicom-"
GIB = 1 << 30
RATIO_FROM_BYTES = 1 << 20  # small members compress arbitrarily well; the ratio is judged from 1 MiB


@dataclass(frozen=True)
class ArchiveLimits:
    """The `data.archive_*` settings."""

    max_gib: float = 16.0
    max_member_gib: float = 4.0
    max_members: int = 100_000
    max_ratio: float = 200.0

    @classmethod
    def from_settings(cls) -> ArchiveLimits:
        """The limits as the environment and defaults set them (`UNETR_DATA__ARCHIVE_MAX_GIB`, ...)."""
        from unetr_cli.settings import resolve_settings

        data = resolve_settings().data
        return cls(
            data.archive_max_gib,
            data.archive_max_member_gib,
            data.archive_max_members,
            data.archive_max_ratio,
        )


def unpacked(archive: Path, limits: ArchiveLimits | None = None, into: Path | None = None) -> Path:
    """The archive's files in a temporary folder removed when the process ends (or in `into`, kept).

    Raises:
        InputError: a damaged archive, a limit passed, or too little free space to unpack it.
    """
    limits = limits or ArchiveLimits.from_settings()
    remove_dead_folders()
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir() and _contained(m.filename)]
            _check(archive, members, limits, into.parent if into is not None else Path(tempfile.gettempdir()))
            if into is None:
                folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
            else:
                folder = into
                folder.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = folder / member.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (zipfile.BadZipFile, EOFError, NotImplementedError) as err:
        raise InputError(archive, f"unreadable .zip ({first_line(err)})") from None
    return folder


def _check(archive: Path, members: list[zipfile.ZipInfo], limits: ArchiveLimits, scratch: Path) -> None:
    hint = "raise it with UNETR_DATA__{} if the archive is trusted"
    if len(members) > limits.max_members:
        raise InputError(
            archive,
            f"holds {len(members)} files, more than data.archive_max_members = {limits.max_members}; "
            + hint.format("ARCHIVE_MAX_MEMBERS"),
        )
    for member in members:
        size = member.file_size
        if size > limits.max_member_gib * GIB:
            raise InputError(
                archive,
                f"member {member.filename} unpacks to {size / GIB:.1f} GiB, more than "
                f"data.archive_max_member_gib = {limits.max_member_gib:g}; "
                + hint.format("ARCHIVE_MAX_MEMBER_GIB"),
            )
        ratio = size / max(member.compress_size, 1)
        if size >= RATIO_FROM_BYTES and ratio > limits.max_ratio:
            raise InputError(
                archive,
                f"member {member.filename} unpacks to {ratio:.0f} times its compressed size, more than "
                f"data.archive_max_ratio = {limits.max_ratio:g} (a zip bomb?); "
                + hint.format("ARCHIVE_MAX_RATIO"),
            )
    total = sum(m.file_size for m in members)
    if total > limits.max_gib * GIB:
        raise InputError(
            archive,
            f"unpacks to {total / GIB:.1f} GiB, more than data.archive_max_gib = {limits.max_gib:g}; "
            + hint.format("ARCHIVE_MAX_GIB"),
        )
    free = shutil.disk_usage(scratch).free
    if total > free - (64 << 20):
        raise InputError(
            archive,
            f"needs {total / GIB:.2f} GiB to unpack but {scratch} has {free / GIB:.2f} GiB free; point "
            "TMPDIR at a larger folder, or unpack it yourself",
        )


def _contained(name: str) -> bool:
    """A member name that stays inside the folder it is unpacked to."""
    return not (name.startswith("/") or ".." in Path(name).parts)


def remove_dead_folders() -> list[Path]:
    """The temporary folders of unetr processes that no longer run (killed while a .zip was unpacked or
    read), removed; those of live processes stay."""
    from unetr_cli.files import process_alive

    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = folder.name[len(PREFIX) :].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
