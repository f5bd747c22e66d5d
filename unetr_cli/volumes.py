"""The reading layer every command uses, for every scan format, with the same checks and one clear error per
problem, and atomic writers for label maps in each output format.

Formats are recognised from a file's content, not its name: NIfTI (nibabel), NRRD and MetaImage (SimpleITK),
DICOM series (a folder or a .zip; `dicom.py`). Every volume comes with a RAS affine (NIfTI's convention);
NRRD, MetaImage and DICOM store LPS geometry, converted on the way in and out.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.compression import write_gzip
from unetr_cli.errors import InputError, OutputExistsError, first_line
from unetr_cli.files import atomic_output
from unetr_cli.grid import LPS_TO_RAS

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SCAN_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_FORMATS = {
    "nifti": ".nii.gz",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "seg-nrrd": ".seg.nrrd",
    "dicom-seg": ".dcm",
}


@dataclass(frozen=True)
class VolumeInfo:
    """What the header says about a scan."""

    path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str
    affine: np.ndarray
    dtype: str
    kind: str = "nifti"  # nifti, nrrd, metaimage, dicom (a series) or dicom-seg

    @property
    def voxel_ml(self) -> float:
        """The volume of one voxel in millilitres."""
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def scan_suffix(path: Path) -> str | None:
    """The scan-file suffix of `path` (the longest that matches), if any."""
    return next((s for s in SCAN_SUFFIXES if path.name.lower().endswith(s)), None)


def output_format(path: Path) -> str | None:
    """The output format a file name asks for by its ending (`.seg.nrrd` before `.nrrd`), if any."""
    name = path.name.lower()
    endings = sorted(((suffix, fmt) for fmt, suffix in OUTPUT_FORMATS.items()), key=lambda x: -len(x[0]))
    found = next((fmt for suffix, fmt in endings if name.endswith(suffix)), None)
    return found or ("nifti" if name.endswith(".nii") else None)


def file_kind(path: Path) -> str:
    """nifti, nrrd, metaimage, dicom (an image), dicom-seg, zip or unknown, from the file's first bytes (a
    DICOM file's SOP class for DICOM-SEG)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(352)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                head = handle.read(352)
    except (OSError, EOFError, zlib.error):
        return "unknown"
    if (
        len(head) >= 4
        and int.from_bytes(head[:4], "little") in (348, 540)
        or int.from_bytes(head[:4], "big") in (348, 540)
    ):
        return "nifti"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if head[128:132] == b"DICM":
        from unetr_cli.dicom import is_segmentation

        return "dicom-seg" if is_segmentation(path) else "dicom"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if b"ObjectType" in head[:256] or head.lstrip().startswith(b"NDims"):
        return "metaimage"
    return "unknown"


def available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def read_info(source):
    """Read the header of a scan (a file path, or a `dicom.DicomSeries`) and check it describes a usable 3D
    scan; returns (the format's header object, VolumeInfo): a nibabel image, a `dicom.SeriesVolume` without
    pixels, a `SegmentationFile` (a DICOM-SEG, read whole: it is small), or None (NRRD, MetaImage).

    Raises:
        InputError: missing file, not a scan file, not 3D (a 4th axis of length 1 is accepted), an empty
            axis, a size that would not fit in memory, or an affine with a zero or non-finite scale.
    """
    from unetr_cli.dicom import DicomSeries, read_series

    if isinstance(source, DicomSeries):
        volume = read_series(source, headers_only=True)
        return volume, checked_header(source.folder, volume.shape, volume.affine, "int16", "dicom")
    path = Path(source)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder: name a scan file, or a folder of DICOM files")
    kind = file_kind(path)
    if kind == "nifti":
        return _nifti_info(path)
    if kind in ("nrrd", "metaimage"):
        from unetr_cli.datafiles import detached_data_files

        detached_data_files(path)  # refused here if a data file lies outside the header's folder
        return None, _itk_info(path, kind)
    if kind == "dicom-seg":
        segmentation = SegmentationFile.read(path)
        return segmentation, checked_header(
            path, segmentation.labels.shape, segmentation.affine, "uint8", "dicom-seg"
        )
    if kind == "dicom":
        raise InputError(path, "is one DICOM slice: name the folder (or .zip) of its series")
    if is_nifti(path):
        raise InputError(path, "not a readable NIfTI file (its header is damaged or it is not NIfTI)")
    raise InputError(
        path, "not a scan file: expected NIfTI, NRRD, MetaImage, or a DICOM series (folder or .zip)"
    )


@dataclass
class SegmentationFile:
    """A DICOM-SEG read as a label map: BTCV ids over the extent of its frames, and what to say about it."""

    labels: np.ndarray
    affine: np.ndarray
    notes: list[str]

    @classmethod
    def read(cls, path: Path) -> SegmentationFile:
        from unetr_cli.dicom import read_segmentation

        return cls(*read_segmentation(path))


def _nifti_info(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path)) if is_nifti(path) else _nifti_from_bytes(_raw_bytes(path))
    except Exception as err:  # nibabel raises several types for bad files
        raise InputError(path, f"not a readable NIfTI file ({first_line(err)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI file ({type(img).__name__})")
    return img, checked_header(
        path, tuple(int(s) for s in img.shape), img.affine, str(img.get_data_dtype()), "nifti"
    )


def _itk_info(path: Path, kind: str) -> VolumeInfo:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(path, f"not a readable {kind.upper()} file ({first_line(err)})") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            path, f"expected a scalar 3D scan, got {reader.GetNumberOfComponents()} components per voxel"
        )
    dims = reader.GetDimension()
    if dims != 3:
        raise InputError(path, f"expected a 3D scan, got a {dims}D image of shape {tuple(reader.GetSize())}")
    affine = _itk_affine(reader.GetDirection(), reader.GetSpacing(), reader.GetOrigin())
    dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return checked_header(path, tuple(int(s) for s in reader.GetSize()), affine, dtype, kind)


def _itk_affine(direction, spacing, origin) -> np.ndarray:
    """RAS affine of an ITK image (its direction, spacing and origin are LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def checked_header(path: Path, shape, affine, dtype: str, kind: str = "nifti") -> VolumeInfo:
    """The checks every format gets: 3D, no empty axis, fits in memory, a finite non-degenerate affine."""
    import nibabel as nib

    full_shape = shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        what = f"{len(shape)}D" if len(shape) != 4 else f"4D with {shape[3]} channels"
        raise InputError(path, f"expected a 3D scan, got a {what} image of shape {full_shape}")
    if min(shape) < 1:
        raise InputError(path, f"has an empty axis (shape {shape})")
    need = int(np.prod(shape, dtype=np.float64)) * 4
    if need > available_memory_bytes():
        raise InputError(
            path,
            f"header declares {shape} voxels ({need / 2**30:.1f} GiB as float32), more than the free memory",
        )
    affine = np.asarray(affine, dtype=np.float64)
    scales = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(scales < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            path, f"affine has a zero or non-finite voxel scale (spacing {scales.round(4).tolist()})"
        )
    return VolumeInfo(
        path=path,
        shape=shape,
        spacing=tuple(float(s) for s in scales),
        orientation="".join(nib.aff2axcodes(affine)),
        affine=affine,
        dtype=dtype,
        kind=kind,
    )


def load_volume(source, dtype=np.float32) -> tuple[np.ndarray, VolumeInfo]:
    """Read a whole 3D scan (a file path or a `dicom.DicomSeries`) and check it is finite; `dtype=None`
    keeps the stored type."""
    data, info, _ = load_scan(source, dtype)
    return data, info


def load_scan(source, dtype=np.float32):
    """`load_volume`, plus the format's header object (a nibabel image, a `dicom.SeriesVolume` with the
    slices' headers, a `SegmentationFile`, or None): what an output in the input's own format is written
    from.

    A `.nii.gz` file is decompressed in one pass to its end, so a truncated or corrupted stream fails its
    length or CRC check here instead of yielding silently wrong voxels.
    """
    from unetr_cli.dicom import DicomSeries, read_series

    if isinstance(source, DicomSeries):
        header = read_series(source)
        data = header.image
        info = checked_header(source.folder, data.shape, header.affine, str(data.dtype), "dicom")
        header.image = None  # the voxels travel once, as `data`
    else:
        header, info = read_info(source)
        if info.kind == "nifti":
            data = _nifti_voxels(header, info)
        elif info.kind == "dicom-seg":
            data = header.labels
        else:
            data = _itk_voxels(info)
    data = data.astype(dtype, copy=False) if dtype is not None else data
    data = data.reshape(info.shape)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(info.path, f"contains {bad} NaN or infinite voxels")
    return data, info, header


def scan_source(path: str | Path):
    """What a path names as one scan: the file itself, or the one CT series of a DICOM folder or .zip (a
    datalist entry; with several series the caller must pick one)."""
    from unetr_cli.dicom import find_series

    path = Path(path)
    if path.is_dir() or (path.is_file() and file_kind(path) == "zip"):
        found, unreadable = find_series(path)
        if unreadable:
            raise unreadable[0]
        series = [s for s in found if s.is_ct]
        if len(series) != 1:
            listing = "; ".join(s.summary() for s in found)
            raise InputError(path, f"holds {len(series)} CT series, expected one ({listing})")
        return series[0]
    return path


def _nifti_voxels(img, info: VolumeInfo) -> np.ndarray:

    try:
        if _is_gzip(info.path):  # decompressed in one pass: a truncated or damaged stream fails here
            img = _nifti_from_bytes(_raw_bytes(info.path))
        return np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise InputError(info.path, f"truncated or corrupted data ({first_line(err)})") from None


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _raw_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _nifti_from_bytes(data: bytes):
    """A NIfTI-1 or NIfTI-2 image from its bytes (whatever the file was called)."""
    import nibabel as nib

    two = int.from_bytes(data[:4], "little") == 540 or int.from_bytes(data[:4], "big") == 540
    return (nib.Nifti2Image if two else nib.Nifti1Image).from_bytes(data)


def _itk_voxels(info: VolumeInfo) -> np.ndarray:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(info.path))
    except RuntimeError as err:
        raise InputError(info.path, f"truncated or corrupted data ({first_line(err)})") from None
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))  # ITK is (z, y, x)


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    like=None,
    overwrite: bool = True,
) -> Path:
    """Write a NIfTI atomically (temporary file in the same folder, fsync, rename).

    With `like` (a nibabel image), the header's qform/sform codes are copied so the output sits in exactly the
    input's space; otherwise both are set to 1 (scanner), as DICOM converters write them.
    """
    import nibabel as nib

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    img = nib.Nifti1Image(fortran_ordered(array), affine)
    if like is not None:
        _, qcode = like.get_qform(coded=True)
        _, scode = like.get_sform(coded=True)
        img.set_qform(affine, code=int(like.header["qform_code"]) if qcode is not None else 0)
        img.set_sform(affine, code=int(like.header["sform_code"]) if scode is not None else 2)
    else:
        img.set_qform(affine, code=1 if _orthogonal(affine) else 0)  # a qform cannot hold gantry tilt's shear
        img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_output(path, overwrite=overwrite) as tmp:
        if path.name.endswith(".gz"):  # compressed on every core, not in one zlib call
            write_gzip(tmp, img.to_bytes())
        else:
            nib.save(img, str(tmp))
    return path


def fortran_ordered(array: np.ndarray) -> np.ndarray:
    """`array` laid out in Fortran order, as NIfTI stores voxels (itself when it already is). A volume is
    copied in blocks of whole columns along z: numpy's own copy crosses the cache at every voxel and took
    0.38 s for a 512 x 512 x 200 uint8 label map, the blocks 0.08 s."""
    if array.flags.f_contiguous or array.ndim != 3:
        return array
    ordered = np.empty(array.shape, dtype=array.dtype, order="F")
    for i in range(0, array.shape[0], ORDER_BLOCK):
        for j in range(0, array.shape[1], ORDER_BLOCK):
            block = (slice(i, i + ORDER_BLOCK), slice(j, j + ORDER_BLOCK))
            ordered[block] = array[block]
    return ordered


ORDER_BLOCK = 64  # voxels along x and y per block (measured fastest for uint8 maps of 200 slices)


def _orthogonal(affine: np.ndarray) -> bool:
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(axes.T @ axes, np.eye(3), atol=1e-4))


def save_itk(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    metadata: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a volume (x, y, z) with its RAS affine as NRRD or MetaImage (by the name's ending), compressed,
    atomically; `metadata` become header fields (what 3D Slicer reads segment names and colours from)."""
    import SimpleITK as sitk

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    with atomic_output(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def save_segmentation_nrrd(
    labels: np.ndarray, affine: np.ndarray, path: str | Path, classes: int, overwrite: bool = True
) -> Path:
    """A 3D Slicer segmentation (`.seg.nrrd`): the label map with each organ's name, colour and label value in
    the header, as Slicer's segmentation reader expects them."""
    from unetr_cli.labels import label_colour, label_names

    metadata = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extent = " ".join(f"0 {n - 1}" for n in labels.shape)
    for index, (label, name) in enumerate((k, v) for k, v in label_names(classes).items() if k):
        red, green, blue = (channel / 255.0 for channel in label_colour(label))
        metadata |= {
            f"Segment{index}_ID": f"Segment_{label}",
            f"Segment{index}_Name": name,
            f"Segment{index}_NameAutoGenerated": "0",
            f"Segment{index}_Color": f"{red:.4f} {green:.4f} {blue:.4f}",
            f"Segment{index}_ColorAutoGenerated": "0",
            f"Segment{index}_LabelValue": str(label),
            f"Segment{index}_Layer": "0",
            f"Segment{index}_Extent": extent,
            f"Segment{index}_Tags": "",
        }
    return save_itk(labels.astype(np.uint8), affine, path, metadata, overwrite)


def check_resampled_size(info: VolumeInfo, spacing, channels: int) -> None:
    """Refuse a scan whose resampling to `spacing` (mm) could not fit in memory, before any work: a voxel size
    of 600 mm in a header (or a model spacing of 0.05 mm) would otherwise ask for terabytes deep inside a
    transform. `channels` float32 values per resampled voxel is what prediction holds (class scores)."""
    extent = np.asarray(info.shape) * np.asarray(info.spacing) / np.asarray(spacing, dtype=np.float64)
    voxels = float(np.prod(np.ceil(extent)))
    need = voxels * 4 * channels
    if need > available_memory_bytes():
        raise InputError(
            info.path,
            f"resampled to {'x'.join(f'{s:g}' for s in spacing)} mm it would have {voxels:.3g} voxels "
            f"({need / 2**30:.0f} GiB for {channels} values each, more than the free memory); check its "
            f"voxel size ({'x'.join(f'{s:.3g}' for s in info.spacing)} mm) and the model's spacing",
        )
