"""Finding DICOM series as clinics and archives export them: folders (nested, CD/DVD layouts with DICOMDIR
or DIRFILE index files, names without extensions), a .zip, files without the Part-10 preamble; grouped by
series, with what is no CT volume (other modalities, localizers, secondary captures, reports, presentation
states, segmentations) marked so the caller can skip it with one line.

Anonymised series are found too: where de-identification emptied SeriesInstanceUID, files are grouped by
folder, series number and modality, and the series gets a UID derived from its content (the same on every
run, so outputs reference it consistently).
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path

from unetr_cli.archives import unpacked
from unetr_cli.errors import InputError, UsageError, first_line

DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory: DICOMDIR, Philips' DIRFILE
CT_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
# Volumes of other modalities: segmented only with --allow-non-ct.
VOLUME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
}
# What the skip line calls the SOP classes that are never a volume to segment, by UID prefix.
NOT_VOLUMES = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.88.67": "radiation dose report",
    "1.2.840.10008.5.1.4.1.1.88": "structured report",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
    "1.2.840.10008.5.1.4.1.1.66": "raw data or registration",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.481": "radiotherapy object",
}
_HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "NumberOfFrames",
)


@dataclass(eq=False)  # one object per series found: compared and hashed by identity
class DicomSeries:
    """One series: its files (in no particular order) and what the listing shows of it.

    `skip` says why it is no volume to segment (a localizer, a secondary capture, a report...); a volume of
    another modality has no `skip` but its `modality` is not CT. `uid_generated`: the files carry no
    SeriesInstanceUID and `uid` was derived from their content. `duplicates`: files left out because another
    file holds the same SOP instance (one image exported twice)."""

    uid: str
    files: list[Path]
    modality: str
    description: str
    number: int | None
    folder: Path
    shares_folder: bool = False  # other series are in the same folder
    skip: str | None = None
    uid_generated: bool = False
    duplicates: int = 0
    number_shared: bool = False  # another series in the same folder has the same series number

    @property
    def name(self) -> str:
        """For messages and output names: the folder, and the series number when the folder holds several."""
        base = self.folder.name.removesuffix(".zip")
        if not self.shares_folder:
            return base
        if self.number is None or self.number_shared:
            return f"{base}_s{'' if self.number is None else f'{self.number}_'}{self.uid[-6:]}"
        return f"{base}_s{self.number}"

    @property
    def is_ct(self) -> bool:
        return self.skip is None and self.modality == "CT"

    def __str__(self) -> str:
        """Where the series is, as messages name it."""
        return str(self.folder) + (f" (series {self.number})" if self.shares_folder else "")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "files": [str(f) for f in self.files], "folder": str(self.folder)}

    @classmethod
    def from_dict(cls, values: dict) -> DicomSeries:
        return cls(
            **{**values, "files": [Path(f) for f in values["files"]], "folder": Path(values["folder"])}
        )

    def summary(self) -> str:
        what = f" {self.description!r}" if self.description else ""
        number = f"series {self.number}" if self.uid_generated and self.number is not None else "series"
        uid = "(no SeriesInstanceUID)" if self.uid_generated else self.uid
        return f"{number} {uid}{what} ({self.modality}, {len(self.files)} files) in {self.folder}"

    def skip_line(self, allow_non_ct: bool = False) -> str | None:
        """The one line saying why this series is not segmented, or None when it is."""
        if self.skip is not None:
            return f"skipped {self.summary()}: {self.skip}"
        if self.modality != "CT" and not allow_non_ct:
            return f"skipped {self.summary()}: not CT (--allow-non-ct segments it anyway)"
        return None


def is_dicom_file(path: Path) -> bool:
    """A DICOM file: 'DICM' after the 128-byte preamble, or (older exports) a dataset that starts right away
    with a group 0x0008 element, little endian."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or _is_bare_dataset(head)


def _is_bare_dataset(head: bytes) -> bool:
    """No preamble: the first element is (0008,xxxx) with a small element number (implicit or explicit
    VR), as in files written before Part 10 or by tools that drop it."""
    return len(head) >= 8 and head[:2] == b"\x08\x00" and int.from_bytes(head[2:4], "little") < 0x0100


def find_series(root: Path) -> tuple[list[DicomSeries], list[InputError]]:
    """The DICOM series in `root` (a folder, searched recursively, or a .zip of one), in series-number order,
    and one error for each DICOM file whose header cannot be read (the others are still found). Index files
    (DICOMDIR, DIRFILE) are not series: they are passed over, whatever files they name or miss.

    Raises:
        InputError: no DICOM file at all.
    """
    folder = unpacked(root) if root.is_file() and zipfile.is_zipfile(root) else root
    groups: dict[tuple, _Group] = {}
    unreadable: list[InputError] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(path):
            continue
        try:
            header = _read_header(path)
        except InputError as err:
            unreadable.append(err)
            continue
        if header is None:  # an index file, or no dataset after all
            continue
        key = _series_key(header, path)
        if key not in groups:
            groups[key] = _Group(header, root if folder is not root else path.parent)
        groups[key].add(path, header)
    if not groups and not unreadable:
        raise InputError(root, "holds no DICOM images (nor NIfTI, NRRD or MetaImage scans)")
    series = sorted(
        (group.series() for group in groups.values()),
        key=lambda s: (s.number is None, s.number or 0, s.uid),
    )
    _mark_neighbours(series)
    return series, unreadable


def _mark_neighbours(series: list[DicomSeries]) -> None:
    """Which series share their folder, and their series number within it (their names say so)."""
    for item in series:
        beside = [other for other in series if other.folder == item.folder and other is not item]
        item.shares_folder = bool(beside)
        item.number_shared = any(other.number == item.number for other in beside)


def merge_series(copies: list[DicomSeries]) -> DicomSeries:
    """One series found under several inputs (the same SeriesInstanceUID in each folder named: a series
    split across folders, or copies of it) as one: its files together, each image once."""
    group: _Group | None = None
    for path in dict.fromkeys(f for item in copies for f in item.files):
        header = _read_header(path)
        if header is None:
            continue
        group = group or _Group(header, copies[0].folder)
        group.add(path, header)
    merged = group.series() if group is not None else copies[0]
    merged.uid, merged.uid_generated = copies[0].uid, copies[0].uid_generated
    merged.duplicates = group.duplicates if group is not None else 0
    return merged


def _read_header(path: Path):
    """The listing's attributes of one file; None for an index file or a file that is no dataset."""
    from unetr_cli.dicom.reading import read_dicom

    bare = not _has_preamble(path)
    try:
        header = read_dicom(path, headers_only=True, specific_tags=list(_HEADER_TAGS), force=bare)
        sop_class = _text(header.get("SOPClassUID")) or _text(
            getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", None)
        )
        header.SOPClassUID = sop_class  # where anonymisation emptied it, the file meta still has it
        if sop_class == DIRECTORY_SOP_CLASS:
            return None
        if "Modality" not in header:  # a truncated file reads without it; Modality is Type 1 in every IOD
            raise ValueError("no Modality: truncated, or not an image")
    except InputError:
        raise
    except Exception as err:  # pydicom raises several types for damaged files
        if bare:  # looked like a dataset without a preamble, but is not one
            return None
        raise InputError(path, f"unreadable DICOM file ({first_line(err)})") from None
    return header


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _series_key(header, path: Path) -> tuple:
    """What the files of one series share: their SeriesInstanceUID, or where anonymisation emptied it, the
    folder, series number and modality."""
    uid = _text(header.get("SeriesInstanceUID"))
    if uid:
        return ("uid", uid)
    return ("folder", str(path.parent), _text(header.get("SeriesNumber")), _text(header.get("Modality")))


class _Group:
    """The files of one series as they are found."""

    def __init__(self, header, folder: Path):
        self.first = header
        self.folder = folder
        self.files: list[Path] = []
        self.instances: set[str] = set()
        self.duplicates = 0
        self.localizers = 0

    def add(self, path: Path, header) -> None:
        instance = _text(header.get("SOPInstanceUID"))
        if instance and instance in self.instances:
            self.duplicates += 1
            return
        self.instances.add(instance)
        self.files.append(path)
        image_type = [str(v).upper() for v in header.get("ImageType", []) or []]
        self.localizers += "LOCALIZER" in image_type

    def series(self) -> DicomSeries:
        header = self.first
        number = header.get("SeriesNumber")
        uid = _text(header.get("SeriesInstanceUID"))
        return DicomSeries(
            uid=uid or self._derived_uid(),
            files=self.files,
            modality=_text(header.get("Modality")) or "?",
            description=_text(header.get("SeriesDescription")),
            number=int(number) if number not in (None, "") else None,
            folder=self.folder,
            skip=self._skip(),
            uid_generated=not uid,
            duplicates=self.duplicates,
        )

    def _skip(self) -> str | None:
        sop_class = _text(self.first.SOPClassUID)
        for prefix, what in NOT_VOLUMES.items():
            if sop_class == prefix or sop_class.startswith(prefix + "."):
                return what
        if self.localizers == len(self.files):
            return "localizer (scout) images"
        known = sop_class in CT_IMAGE_CLASSES or sop_class in VOLUME_CLASSES or not sop_class
        if not known:
            from pydicom.uid import UID

            return f"not a volume ({UID(sop_class).name})"
        return None

    def _derived_uid(self) -> str:
        from pydicom.uid import generate_uid

        header = self.first
        keys = ("StudyInstanceUID", "SeriesNumber", "Modality", "SeriesDescription")
        sources = [_text(header.get(k)) for k in keys]
        return generate_uid(entropy_srcs=["unetr series", *sources, *sorted(self.instances)])


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def choose_series(series: list[DicomSeries], wanted: str | None) -> list[DicomSeries]:
    """The series to segment: the one named by --series, else every one given."""
    if wanted is not None:
        chosen = [s for s in series if s.uid == wanted]
        if not chosen:
            raise UsageError(
                f"--series {wanted}: not found; the series are:\n" + "\n".join(s.summary() for s in series)
            )
        return chosen
    return series
