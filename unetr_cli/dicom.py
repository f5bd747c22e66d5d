"""DICOM in and out: CT series found in folders (nested) or a .zip, grouped by series, checked and read onto
the patient's grid (pydicom); label maps written back as DICOM-SEG that references the series (highdicom).

Geometry is the patient's: voxel (column i, row j, slice k) lies at ImagePositionPatient of slice 0 + i x the
row direction x column spacing + j x the column direction x row spacing + k x the step between slice
positions (LPS millimetres), so oblique series and gantry tilt (the step leaves the slice normal) land
exactly where the scanner put them. Volumes use unetr's RAS affine convention (NIfTI's).
"""

from __future__ import annotations

import atexit
import dataclasses
import io
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.errors import InputError, UsageError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_HEADER_TAGS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "SOPClassUID",
)


@dataclass(eq=False)  # one object per series found: compared and hashed by identity
class DicomSeries:
    """One series: its files (in no particular order) and what the listing shows of it."""

    uid: str
    files: list[Path]
    modality: str
    description: str
    number: int | None
    folder: Path
    shares_folder: bool = False  # other series are in the same folder

    @property
    def name(self) -> str:
        """For messages and output names: the folder, and the series number when the folder holds several."""
        base = self.folder.name.removesuffix(".zip")
        if not self.shares_folder:
            return base
        return f"{base}_s{self.number if self.number is not None else self.uid[-6:]}"

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
        return f"series {self.uid}{what} ({self.modality}, {len(self.files)} files) in {self.folder}"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part-10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def find_series(root: Path) -> tuple[list[DicomSeries], list[InputError]]:
    """The DICOM series in `root` (a folder, searched recursively, or a .zip of one), in series-number order,
    and one error for each DICOM file whose header cannot be read (the others are still found).

    Raises:
        InputError: no DICOM file at all.
    """
    import pydicom

    folder = _unzipped(root) if root.is_file() and zipfile.is_zipfile(root) else root
    groups: dict[str, DicomSeries] = {}
    unreadable: list[InputError] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(path):
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
            uid = str(header.SeriesInstanceUID)  # a truncated file reads without it
        except Exception as err:  # pydicom raises several types for damaged files
            unreadable.append(InputError(path, f"unreadable DICOM file ({_short(err)})"))
            continue
        if uid not in groups:
            number = header.get("SeriesNumber")
            groups[uid] = DicomSeries(
                uid=uid,
                files=[],
                modality=str(header.get("Modality", "?")),
                description=str(header.get("SeriesDescription", "")),
                number=int(number) if number not in (None, "") else None,
                folder=root if folder is not root else path.parent,
            )
        groups[uid].files.append(path)
    if not groups and not unreadable:
        raise InputError(root, "holds no DICOM files (nor NIfTI, NRRD or MetaImage scans)")
    series = sorted(groups.values(), key=lambda s: (s.number is None, s.number or 0, s.uid))
    for item in series:
        item.shares_folder = sum(other.folder == item.folder for other in series) > 1
    return series, unreadable


def _unzipped(archive: Path) -> Path:
    """The archive's files in a temporary folder removed when the process ends."""
    folder = Path(tempfile.mkdtemp(prefix="unetr-dicom-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                if member.is_dir() or ".." in Path(member.filename).parts or member.filename.startswith("/"):
                    continue
                target = folder / member.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(archive, f"unreadable .zip ({_short(err)})") from None
    return folder


@dataclass
class SeriesVolume:
    """A series read onto its grid: voxels (x = column, y = row, z = slice), the RAS affine, and the slices'
    headers in grid order (what a DICOM-SEG references)."""

    image: np.ndarray
    affine: np.ndarray
    slices: list


def read_series(series: DicomSeries, headers_only: bool = False) -> SeriesVolume:
    """Read and check a CT series; with `headers_only`, no pixel data (the image is None).

    Raises:
        InputError: not CT, one slice, mixed orientations or sizes, duplicate positions, missing or
            unevenly spaced slices, pixel data that cannot be decoded.
    """
    import pydicom

    if series.modality != "CT":
        raise InputError(series.folder, f"{series.summary()} is not CT; skipped")
    slices = []
    for path in series.files:
        try:
            slices.append(pydicom.dcmread(path, stop_before_pixels=headers_only))
        except Exception as err:
            raise InputError(path, f"unreadable DICOM file ({_short(err)})") from None
    slices = [ds for ds in slices if "LOCALIZER" not in [str(v).upper() for v in ds.get("ImageType", [])]]
    where = series.folder
    if len(slices) < 2:
        raise InputError(
            where, f"{series.summary()} has {len(slices)} image slice(s): a 3D scan needs several"
        )
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        if any(keyword not in ds for ds in slices):
            raise InputError(where, f"{series.summary()}: a slice lacks {keyword}")
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=np.float64)
    if any(
        not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4)
        for ds in slices
    ):
        raise InputError(where, f"{series.summary()}: slices of mixed orientations; split the series")
    size = (int(slices[0].Rows), int(slices[0].Columns))
    spacing = np.array(slices[0].PixelSpacing, dtype=np.float64)
    if any(
        (int(ds.Rows), int(ds.Columns)) != size or not np.allclose(ds.PixelSpacing, spacing) for ds in slices
    ):
        raise InputError(where, f"{series.summary()}: slices of different sizes or pixel spacings")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=np.float64)
    _check_spacing(np.diff(positions @ normal), series)
    step = (positions[-1] - positions[0]) / (len(slices) - 1)  # leaves the normal under gantry tilt
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing[1]  # along a row: the next column
    affine_lps[:3, 1] = col_dir * spacing[0]  # down a column: the next row
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = positions[0]
    image = None if headers_only else _pixels(slices, where)
    return SeriesVolume(image, LPS_TO_RAS @ affine_lps, slices)


def _check_spacing(gaps: np.ndarray, series: DicomSeries) -> None:
    if np.any(gaps < 1e-3):
        raise InputError(series.folder, f"{series.summary()}: two slices at the same position")
    typical = float(np.median(gaps))
    if gaps.max() > 1.5 * typical:
        where = int(np.argmax(gaps))
        raise InputError(
            series.folder,
            f"{series.summary()}: missing slice(s): a gap of {gaps.max():.2f} mm after slice {where + 1} "
            f"where slices are {typical:.2f} mm apart",
        )
    if gaps.max() - gaps.min() > 0.01 * typical + 1e-3:
        raise InputError(
            series.folder,
            f"{series.summary()}: unevenly spaced slices ({gaps.min():.2f} to {gaps.max():.2f} mm); resample "
            "the series to one spacing first",
        )


def _pixels(slices: list, where: Path) -> np.ndarray:
    """HU values (x, y, z): the stored values through each slice's rescale slope and intercept."""
    from pydicom.pixels import apply_modality_lut

    planes = []
    for ds in slices:
        try:
            planes.append(apply_modality_lut(ds.pixel_array, ds))
        except Exception as err:  # compressed data without a decoder, truncated pixel data, ...
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
            name = getattr(syntax, "name", syntax)
            raise InputError(
                Path(ds.filename) if ds.filename else where,
                f"cannot decode its pixel data (transfer syntax {name}: {_short(err)})",
            ) from None
    volume = np.stack(planes, axis=-1)  # (rows, columns, slices)
    integral = all(
        float(ds.get("RescaleSlope", 1)) == 1 and float(ds.get("RescaleIntercept", 0)).is_integer()
        for ds in slices
    )
    if integral and volume.min() >= np.iinfo(np.int16).min and volume.max() <= np.iinfo(np.int16).max:
        volume = volume.astype(np.int16)
    else:
        volume = volume.astype(np.float32)
    return np.ascontiguousarray(volume.transpose(1, 0, 2))  # (columns, rows, slices): x, y, z


def choose_series(series: list[DicomSeries], wanted: str | None) -> list[DicomSeries]:
    """The series to segment: the one named by --series, else every CT series."""
    if wanted is not None:
        chosen = [s for s in series if s.uid == wanted]
        if not chosen:
            raise UsageError(
                f"--series {wanted}: not found; the series are:\n" + "\n".join(s.summary() for s in series)
            )
        return chosen
    return series


# --- DICOM-SEG --------------------------------------------------------------------------------------------


def write_segmentation(
    labels: np.ndarray, volume: SeriesVolume, path: Path, classes: int, provenance: dict
) -> Path:
    """A DICOM-SEG of the label map (x, y, z on the series grid): one segment per organ with its SNOMED CT
    code and BTCV name, referencing the series' study, series, frame of reference and every slice."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    from unetr_cli import __version__
    from unetr_cli.files import atomic_output
    from unetr_cli.labels import label_names

    algorithm = hd.AlgorithmIdentificationSequence(
        name="unetr UNETR (BTCV)",
        family=_code("cid7162", "ArtificialIntelligence"),
        version=__version__,
        source=Path(str(provenance.get("checkpoint", "unetr"))).name[:64],
    )
    names = label_names(classes)
    segments = [_segment(number, names[number], algorithm) for number in range(1, classes)]
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slices, rows, columns), as the sources
    segmentation = hd.seg.Segmentation(
        source_images=volume.slices,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=9000 + int(volume.slices[0].get("SeriesNumber", 0) or 0) % 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="unetr",
        manufacturer_model_name="unetr UNETR BTCV",
        software_versions=__version__,
        device_serial_number="none",
        content_description="BTCV abdominal organs (unetr)",
        series_description="unetr segmentation",
    )
    with atomic_output(path) as tmp:
        segmentation.save_as(tmp)
    return path


def read_segmentation(path: Path, volume: SeriesVolume) -> np.ndarray:
    """A DICOM-SEG read back as a label map (x, y, z) on `volume`'s grid."""
    import highdicom as hd

    segmentation = hd.seg.segread(path)
    frames = segmentation.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in volume.slices], combine_segments=True, skip_overlap_checks=True
    )
    return np.ascontiguousarray(np.asarray(frames).transpose(2, 1, 0))


# SNOMED CT codes of the BTCV organs (pydicom's code dictionary); lateral ones carry a laterality modifier.
_ORGAN_CODES = {
    "spleen": ("Spleen", None),
    "right kidney": ("Kidney", "Right"),
    "left kidney": ("Kidney", "Left"),
    "gallbladder": ("Gallbladder", None),
    "esophagus": ("Esophagus", None),
    "liver": ("Liver", None),
    "stomach": ("Stomach", None),
    "aorta": ("Aorta", None),
    "inferior vena cava": ("InferiorVenaCava", None),
    "portal and splenic veins": ("PortalVein", None),
    "pancreas": ("Pancreas", None),
    "right adrenal gland": ("AdrenalGland", "Right"),
    "left adrenal gland": ("AdrenalGland", "Left"),
}


def _segment(number: int, name: str, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    organ, side = _ORGAN_CODES.get(name, ("Organ", None))
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=getattr(codes.SCT, organ),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=name,
        tracking_uid=hd.UID(),
    )
    if side is not None:
        modifier = hd.sr.CodedConcept(**_sct(getattr(codes.SCT, side)))
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            modifier
        ]
    return description


def _sct(code) -> dict:
    return {"value": code.value, "scheme_designator": code.scheme_designator, "meaning": code.meaning}


def _code(cid: str, keyword: str):
    from pydicom.sr.codedict import codes

    return getattr(getattr(codes, cid), keyword)


# --- writing CT series (phantoms, tests) ------------------------------------------------------------------


def write_ct_series(
    image: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    description: str = "phantom",
    series_number: int = 1,
    study_uid: str | None = None,
) -> list[Path]:
    """Write an int16 HU volume (x, y, z) with its RAS affine as a CT series, one file per slice, with the
    geometry of `affine` (oblique and sheared grids included). Returns the files in slice order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from unetr_cli.files import write_bytes

    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    column_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = np.concatenate([lps[:3, 0] / column_step, lps[:3, 1] / row_step])
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(image.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Unetr", "PHANTOM", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "unetr"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.SeriesDescription, ds.ImageType = description, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = int(image.shape[1]), int(image.shape[0])
        ds.PixelSpacing = [f"{row_step:.6f}", f"{column_step:.6f}"]
        ds.SliceThickness = f"{abs(np.linalg.norm(lps[:3, 2])):.6f}"
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(image[:, :, k].T.astype(np.int16)).tobytes()
        path = folder / f"slice{k:04d}.dcm"
        ds.preamble = b"\0" * 128
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        paths.append(write_bytes(path, buffer.getvalue()))
    return paths


def reading_order(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A volume and its RAS affine in the order a series written from them is read back (slices ascending
    along the normal of their rows and columns): left-handed grids come back with their slices reversed."""
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    if np.dot(np.cross(lps[:3, 0], lps[:3, 1]), lps[:3, 2]) > 0:
        return volume, affine
    flipped = np.array(affine, dtype=np.float64)
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 2] * (volume.shape[2] - 1)
    flipped[:3, 2] = -affine[:3, 2]
    return volume[:, :, ::-1], flipped


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
