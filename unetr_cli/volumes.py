"""Reading, checking and atomically writing NIfTI volumes, with one clear error per problem."""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.errors import InputError, OutputExistsError
from unetr_cli.files import atomic_output

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class VolumeInfo:
    """What the header says about a scan."""

    path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str
    affine: np.ndarray
    dtype: str


def is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def read_info(path: str | Path):
    """Open a NIfTI header and check it describes a usable 3D scan; returns (nibabel image, VolumeInfo).

    Raises:
        InputError: missing file, not NIfTI, not 3D (a 4th axis of length 1 is accepted), an empty axis, a
            size that would not fit in memory, or an affine with a zero or non-finite scale.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for bad files
        raise InputError(path, f"not a readable NIfTI file ({_short(err)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI file ({type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        what = f"{len(shape)}D" if len(shape) != 4 else f"4D with {shape[3]} channels"
        raise InputError(path, f"expected a 3D scan, got a {what} image of shape {tuple(img.shape)}")
    if min(shape) < 1:
        raise InputError(path, f"has an empty axis (shape {shape})")
    need = int(np.prod(shape, dtype=np.float64)) * 4
    if need > available_memory_bytes():
        raise InputError(
            path,
            f"header declares {shape} voxels ({need / 2**30:.1f} GiB as float32), more than the free memory",
        )
    affine = img.affine
    scales = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(scales < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            path, f"affine has a zero or non-finite voxel scale (spacing {scales.round(4).tolist()})"
        )
    info = VolumeInfo(
        path=path,
        shape=shape,
        spacing=tuple(float(s) for s in scales),
        orientation="".join(nib.aff2axcodes(affine)),
        affine=affine,
        dtype=str(img.get_data_dtype()),
    )
    return img, info


def load_volume(path: str | Path, dtype=np.float32) -> tuple[np.ndarray, VolumeInfo]:
    """Read a whole 3D scan and check it is finite.

    A `.nii.gz` file is decompressed in one pass to its end, so a truncated or corrupted stream fails its
    length or CRC check here instead of yielding silently wrong voxels.
    """
    import nibabel as nib

    img, info = read_info(path)
    try:
        if info.path.name.endswith(".gz"):
            img = nib.Nifti1Image.from_bytes(gzip.decompress(info.path.read_bytes()))
        data = np.asanyarray(img.dataobj)
        data = data.astype(dtype, copy=False) if dtype is not None else data
    except (EOFError, OSError, zlib.error, ValueError) as err:
        raise InputError(info.path, f"truncated or corrupted data ({_short(err)})") from None
    data = data.reshape(info.shape)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(info.path, f"contains {bad} NaN or infinite voxels")
    return data, info


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
    img = nib.Nifti1Image(array, affine)
    if like is not None:
        _, qcode = like.get_qform(coded=True)
        _, scode = like.get_sform(coded=True)
        img.set_qform(affine, code=int(like.header["qform_code"]) if qcode is not None else 0)
        img.set_sform(affine, code=int(like.header["sform_code"]) if scode is not None else 2)
    else:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
