"""A DICOM series read onto the patient's grid: one file per slice (CT Image Storage) or one multi-frame file
(Enhanced CT, its geometry in the functional groups), checked for what would make a wrong volume.

Geometry is the patient's: voxel (column i, row j, slice k) lies at the position of slice 0 + i x the row
direction x column spacing + j x the column direction x row spacing + k x the step between slice positions
(LPS millimetres), so oblique series and gantry tilt (the step leaves the slice normal) land exactly where
the scanner put them. Volumes use unetr's RAS affine convention (NIfTI's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.dicom.series import DicomSeries
from unetr_cli.errors import InputError, first_line
from unetr_cli.grid import LPS_TO_RAS


@dataclass
class SeriesVolume:
    """A series read onto its grid: voxels (x = column, y = row, z = slice), the RAS affine, and the images'
    headers (what a DICOM-SEG references): one per slice in grid order, or the one multi-frame image with
    `frames`, the source frame (from 0) of each grid slice. `series_uid` is the series' (derived from its
    content where the files have none)."""

    image: np.ndarray | None
    affine: np.ndarray
    slices: list
    series_uid: str
    frames: list[int] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.slices[0]
        depth = len(self.frames) if self.frames is not None else len(self.slices)
        return int(first.Columns), int(first.Rows), depth

    def rescale_type(self) -> str | None:
        """What the stored values are in after rescaling (HU for CT; US: unspecified), where it is said."""
        first = self.slices[0]
        value = first.get("RescaleType")
        if value is None and self.frames is not None:
            value = frame_attribute(first, 0, "PixelValueTransformationSequence", "RescaleType")
        return str(value).strip().upper() if value not in (None, "") else None


def read_series(series: DicomSeries, headers_only: bool = False) -> SeriesVolume:
    """Read and check a series' images (localizers left out); with `headers_only`, no pixel data (the image
    is None).

    Raises:
        InputError: one slice, mixed orientations or sizes, duplicate positions, missing or unevenly spaced
            slices, multi-frame images mixed with others, pixel data that cannot be decoded.
    """
    from unetr_cli.dicom.reading import read_dicom

    slices = []
    for path in series.files:
        try:
            slices.append(read_dicom(path, headers_only=headers_only, force=True))
        except InputError:
            raise
        except Exception as err:
            raise InputError(path, f"unreadable DICOM file ({first_line(err)})") from None
    slices = [ds for ds in slices if "LOCALIZER" not in [str(v).upper() for v in ds.get("ImageType", [])]]
    multi_frame = [ds for ds in slices if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi_frame:
        if len(slices) > 1:
            raise InputError(
                series.folder,
                f"{series.summary()}: {len(multi_frame)} multi-frame image(s) among {len(slices)} images "
                "(copies of one image, or stacks to join); unetr reads a series of one multi-frame image: "
                "name a folder holding one",
            )
        return _multi_frame(slices[0], series, headers_only)
    if len(slices) < 2:
        raise InputError(
            series.folder, f"{series.summary()} has {len(slices)} image slice(s): a 3D scan needs several"
        )
    for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        if any(keyword not in ds for ds in slices):
            raise InputError(series.folder, f"{series.summary()}: a slice lacks {keyword}")
    size = (int(slices[0].Rows), int(slices[0].Columns))
    spacing = np.array(slices[0].PixelSpacing, dtype=np.float64)
    if any(
        (int(ds.Rows), int(ds.Columns)) != size or not np.allclose(ds.PixelSpacing, spacing) for ds in slices
    ):
        raise InputError(series.folder, f"{series.summary()}: slices of different sizes or pixel spacings")
    order, affine = _grid(
        [ds.ImageOrientationPatient for ds in slices],
        [ds.ImagePositionPatient for ds in slices],
        spacing,
        series,
    )
    slices = [slices[k] for k in order]
    image = None if headers_only else _pixels(slices, series.folder)
    return SeriesVolume(image, affine, slices, series.uid)


def _grid(orientations, positions, spacing: np.ndarray, series: DicomSeries) -> tuple[list[int], np.ndarray]:
    """The slices' order along their normal and the grid's RAS affine, from each slice's orientation and
    position and the pixel spacing (rows, columns)."""
    orientation = np.array(orientations[0], dtype=np.float64)
    if any(not np.allclose(np.array(o, dtype=np.float64), orientation, atol=1e-4) for o in orientations):
        raise InputError(series.folder, f"{series.summary()}: slices of mixed orientations; split the series")
    row_dir, col_dir = orientation[:3], orientation[3:]
    unit = np.allclose([np.linalg.norm(row_dir), np.linalg.norm(col_dir)], 1.0, atol=1e-2)
    if not unit or abs(float(row_dir @ col_dir)) > 1e-2:
        raise InputError(
            series.folder,
            f"{series.summary()}: ImageOrientationPatient {orientation.round(4).tolist()} is not two "
            "perpendicular unit vectors: the slices' geometry is unknown",
        )
    if np.any(np.asarray(spacing) <= 0):
        raise InputError(series.folder, f"{series.summary()}: PixelSpacing {list(spacing)} is not positive")
    normal = np.cross(row_dir, col_dir)
    points = np.array(positions, dtype=np.float64)
    order = sorted(range(len(points)), key=lambda k: float(points[k] @ normal))
    points = points[order]
    _check_spacing(np.diff(points @ normal), series)
    step = (points[-1] - points[0]) / (len(points) - 1)  # leaves the normal under gantry tilt
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing[1]  # along a row: the next column
    affine_lps[:3, 1] = col_dir * spacing[0]  # down a column: the next row
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = points[0]
    return order, LPS_TO_RAS @ affine_lps


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


def _multi_frame(ds, series: DicomSeries, headers_only: bool) -> SeriesVolume:
    """An enhanced (multi-frame) image: per-frame positions, shared or per-frame orientation and spacing
    (its functional groups), frames decoded and rescaled by highdicom."""
    count = int(ds.NumberOfFrames)
    try:
        frames = range(count)
        orientations = [
            frame_attribute(ds, k, "PlaneOrientationSequence", "ImageOrientationPatient") for k in frames
        ]
        positions = [frame_attribute(ds, k, "PlanePositionSequence", "ImagePositionPatient") for k in frames]
        spacing = np.array(frame_attribute(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), dtype=np.float64)
    except (AttributeError, IndexError, KeyError, TypeError):
        raise InputError(
            series.folder, f"{series.summary()}: a multi-frame image without plane positions per frame"
        ) from None
    if any(p is None for p in positions) or any(o is None for o in orientations):
        raise InputError(
            series.folder, f"{series.summary()}: a multi-frame image without plane positions per frame"
        )
    order, affine = _grid(orientations, positions, spacing, series)
    image = None
    if not headers_only:
        image = _frame_pixels(ds, order, series.files[0])
        del ds.PixelData  # decoded: the header alone travels on
    return SeriesVolume(image, affine, [ds], series.uid, frames=order)


def frame_attribute(ds, frame: int, sequence: str, keyword: str):
    """An attribute of a frame's functional groups: its own (per-frame) or else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in [*per_frame[frame : frame + 1], *shared[:1]]:
        inner = item.get(sequence)
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    return None


def _frame_pixels(ds, order: list[int], path: Path) -> np.ndarray:
    import highdicom as hd

    try:
        image = hd.Image.from_dataset(ds, copy=False)
        frames = image.get_frames([k + 1 for k in order], apply_modality_transform=True, dtype=np.float32)
    except Exception as err:  # compressed data without a decoder, truncated pixel data, ...
        raise InputError(path, f"cannot decode its frames ({_syntax(ds)}: {first_line(err)})") from None
    frames = np.asarray(frames)
    return _as_volume(frames.transpose(2, 1, 0), whole=bool(np.all(np.mod(frames, 1) == 0)))


def _pixels(slices: list, where: Path) -> np.ndarray:
    """HU values (x, y, z): the stored values through each slice's rescale slope and intercept. Each slice's
    pixel data is dropped once decoded (the headers stay)."""
    from pydicom.pixels import apply_modality_lut

    planes = []
    for ds in slices:
        try:
            planes.append(apply_modality_lut(ds.pixel_array, ds))
        except Exception as err:  # compressed data without a decoder, truncated pixel data, ...
            raise InputError(
                Path(ds.filename) if ds.filename else where,
                f"cannot decode its pixel data ({_syntax(ds)}: {first_line(err)})",
            ) from None
        del ds.PixelData
    whole = all(
        float(ds.get("RescaleSlope", 1)) == 1 and float(ds.get("RescaleIntercept", 0)).is_integer()
        for ds in slices
    )
    return _as_volume(np.stack(planes, axis=-1).transpose(1, 0, 2), whole)  # (columns, rows, slices)


def _as_volume(volume: np.ndarray, whole: bool) -> np.ndarray:
    """int16 where every value is a whole number (`whole`) in its range (most CTs), else float32; C order."""
    if whole and volume.min() >= np.iinfo(np.int16).min and volume.max() <= np.iinfo(np.int16).max:
        return np.ascontiguousarray(volume, dtype=np.int16)
    return np.ascontiguousarray(volume, dtype=np.float32)


def _syntax(ds) -> str:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
    return f"transfer syntax {getattr(syntax, 'name', syntax)}"
