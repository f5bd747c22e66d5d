"""What a DICOM object derived from a series (a DICOM-SEG) needs from the series' headers, completed where
de-identification emptied or removed it: UIDs are generated from the series' content (the same on every run,
and one value wherever the object names it), absent Type 2 patient and study attributes are written empty,
as the standard allows. The caller says in one line what was missing."""

from __future__ import annotations

import copy

from unetr_cli.dicom.series import CT_IMAGE_CLASSES

CT_IMAGE_STORAGE = next(iter(CT_IMAGE_CLASSES))
# Type 2 attributes of the Patient and General Study modules: a derived object copies them, empty or not.
PATIENT_AND_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
NOT_RECORDED = "not recorded in the source series"


def completed_headers(slices: list, series_uid: str) -> tuple[list, list[str]]:
    """Copies of the images' headers (no pixel data) with every UID a derived object references and the
    Type 2 patient and study attributes present; and the names of what the series lacked (empty when
    nothing). `series_uid` is the series' UID as found (derived from its content when it has none)."""
    from pydicom.uid import generate_uid

    headers = [_header_copy(ds) for ds in slices]
    missing: list[str] = []

    def fill(keyword: str, values: list[str]) -> None:
        if any(not _text(ds.get(keyword)) for ds in headers):
            missing.append(keyword)
            for ds, value in zip(headers, values, strict=True):
                if not _text(ds.get(keyword)):
                    setattr(ds, keyword, value)

    def shared(name: str) -> list[str]:
        return [generate_uid(entropy_srcs=["unetr", name, series_uid])] * len(headers)

    fill("StudyInstanceUID", shared("study"))
    fill("SeriesInstanceUID", [series_uid] * len(headers))
    fill("FrameOfReferenceUID", shared("frame of reference"))
    fill(
        "SOPInstanceUID",
        [_instance_uid(series_uid, k, ds) for k, ds in enumerate(headers)],
    )
    fill("SOPClassUID", [_stored_class(ds) for ds in headers])
    removed = [ds for ds in headers if _text(ds.get("PatientIdentityRemoved")).upper() == "YES"]
    if any(
        not _text(ds.get("DeidentificationMethod")) and "DeidentificationMethodCodeSequence" not in ds
        for ds in removed
    ):
        missing.append("DeidentificationMethod")  # Type 1C once PatientIdentityRemoved is YES
        for ds in removed:
            ds.DeidentificationMethod = _text(ds.get("DeidentificationMethod")) or NOT_RECORDED
    for keyword in PATIENT_AND_STUDY:
        if any(keyword not in ds for ds in headers):
            missing.append(keyword)
            for ds in headers:
                if keyword not in ds:
                    setattr(ds, keyword, "")
    return headers, missing


def _instance_uid(series_uid: str, index: int, ds) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(
        entropy_srcs=["unetr", "instance", series_uid, str(index), _text(ds.get("InstanceNumber"))]
    )


def _header_copy(ds):
    """A copy of a dataset without its pixel data, changed without touching the original."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in ds:
        if element.tag != PIXEL_DATA:
            header.add(copy.deepcopy(element))
    if hasattr(ds, "file_meta"):
        header.file_meta = copy.deepcopy(ds.file_meta)
    return header


PIXEL_DATA = 0x7FE00010


def _stored_class(ds) -> str:
    """The SOP class the file meta records, else CT Image Storage (what a CT slice without one is)."""
    meta = getattr(ds, "file_meta", None)
    return _text(getattr(meta, "MediaStorageSOPClassUID", None)) or CT_IMAGE_STORAGE


def _text(value) -> str:
    return "" if value is None else str(value).strip()
