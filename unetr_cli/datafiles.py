"""The data files a MetaImage header (.mhd: `ElementDataFile`) or a detached NRRD header (.nhdr: `data file`)
names: one file, a list (`LIST`), or a numbered pattern (`slice%03d.raw 1 40 1`). They are the scan's voxels,
so they are inputs like the header, and they must lie beside the header or under its folder: a header must not
make unetr read another file (`/etc/shadow`, `../../x`) as voxels."""

from __future__ import annotations

from pathlib import Path

from unetr_cli.errors import InputError

HEADER_BYTES = 1 << 16  # headers are text of a few hundred bytes; a longer one is read this far
MAX_DATA_FILES = 100_000


def detached_data_files(path: Path, strict: bool = True) -> list[Path]:
    """The data files `path` names when it is a MetaImage or NRRD header with detached voxels, else [].

    Raises:
        InputError: with `strict`, a data file outside the header's folder, or a pattern naming more than
            MAX_DATA_FILES files.
    """
    from unetr_cli.volumes import file_kind

    kind = file_kind(path)
    if kind not in ("metaimage", "nrrd"):
        return []
    with open(path, "rb") as handle:
        text = handle.read(HEADER_BYTES).decode("latin-1")
    lines = text.splitlines()
    names = _metaimage_names(lines) if kind == "metaimage" else _nrrd_names(lines)
    if len(names) > MAX_DATA_FILES:
        if strict:
            raise InputError(path, f"its header names more than {MAX_DATA_FILES} data files")
        names = names[:MAX_DATA_FILES]
    folder = path.resolve().parent
    files = []
    for name in names:
        data = path.parent / name  # an absolute name stays absolute
        if strict and not data.resolve().is_relative_to(folder):
            raise InputError(
                path,
                f"its data file {name} lies outside the header's folder ({folder}): refused; keep a header's "
                "data files beside it",
            )
        files.append(data)
    return files


def _metaimage_names(lines: list[str]) -> list[str]:
    for index, line in enumerate(lines):
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            return _names(value.strip(), lines[index + 1 :], local="LOCAL")
    return []


def _nrrd_names(lines: list[str]) -> list[str]:
    for index, line in enumerate(lines):
        if not line.strip():  # the end of the header: the data follow it in the same file
            return []
        key, _, value = line.partition(":")
        if key.strip().lower() in ("data file", "datafile"):
            return _names(value.strip(), lines[index + 1 :], local=None)
    return []


def _names(value: str, following: list[str], local: str | None) -> list[str]:
    """One data file, the lines after a `LIST`, or a numbered pattern's files."""
    if value == local or not value:
        return []
    parts = value.split()
    if parts[0] == "LIST":
        return [line.strip() for line in following if line.strip()]
    if "%" in parts[0] and len(parts) >= 4 and all(p.lstrip("-").isdigit() for p in parts[1:4]):
        pattern, first, last, step = parts[0], *(int(p) for p in parts[1:4])
        numbers = range(first, last + 1, step) if step else range(0)
        if len(numbers) > MAX_DATA_FILES:  # the caller refuses it by the count; no need to format them all
            return [pattern] * (MAX_DATA_FILES + 1)
        try:
            return [pattern % number for number in numbers]
        except (TypeError, ValueError):  # not a printf pattern after all: one file with a % in its name
            return [parts[0]]
    return [value]
