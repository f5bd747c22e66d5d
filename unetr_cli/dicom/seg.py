"""DICOM-SEG out and in (highdicom): a label map written as a segmentation that references its series, one
segment per organ with its SNOMED CT code, BTCV name and display colour; and any DICOM-SEG (unetr's or
another tool's) read back as a label map in BTCV ids on the grid of its frames."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

from unetr_cli.dicom.identity import completed_headers
from unetr_cli.dicom.volume import LPS_TO_RAS, SeriesVolume
from unetr_cli.errors import InputError, first_line

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
ORIENTATION, MEASURES = "PlaneOrientationSequence", "PixelMeasuresSequence"

# SNOMED CT codes of the BTCV organs (pydicom's code dictionary); lateral ones carry a laterality modifier.
ORGAN_CODES = {
    1: ("Spleen", None),
    2: ("Kidney", "Right"),
    3: ("Kidney", "Left"),
    4: ("Gallbladder", None),
    5: ("Esophagus", None),
    6: ("Liver", None),
    7: ("Stomach", None),
    8: ("Aorta", None),
    9: ("InferiorVenaCava", None),
    10: ("PortalVein", None),
    11: ("Pancreas", None),
    12: ("AdrenalGland", "Right"),
    13: ("AdrenalGland", "Left"),
}


def write_segmentation(
    labels: np.ndarray, volume: SeriesVolume, path: Path, classes: int, provenance: dict
) -> list[str]:
    """A DICOM-SEG of the label map (x, y, z on the series grid) referencing the series' study, series,
    frame of reference and every image. Returns what the series lacked (UIDs generated, Type 2 attributes
    left empty in the SEG); empty when nothing."""
    import highdicom as hd

    from unetr_cli import __version__
    from unetr_cli.files import atomic_output
    from unetr_cli.labels import label_names

    sources, missing = completed_headers(volume.slices, volume.series_uid)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="unetr UNETR (BTCV)",
        family=_codes().cid7162.ArtificialIntelligence,
        version=__version__,
        source=Path(str(provenance.get("checkpoint", "unetr"))).name[:64],
    )
    names = label_names(classes)
    segments = [_segment(number, names[number], algorithm) for number in range(1, classes)]
    frames = labels.transpose(2, 1, 0)  # (slices, rows, columns), as the sources
    if volume.frames is not None:  # one multi-frame image: its frames in their stored order
        frames = frames[np.argsort(volume.frames)]
    with _quiet_highdicom():  # its remarks on the source's data (a one-part patient name, an empty map)
        segmentation = _segmentation(sources, frames, segments)
    with atomic_output(path) as tmp:
        segmentation.save_as(tmp)
    return missing


def _segmentation(sources: list, frames: np.ndarray, segments: list):
    """The highdicom Segmentation object: BINARY, one frame per labelled source plane and segment."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    from unetr_cli import __version__

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(frames),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=9000 + int(sources[0].get("SeriesNumber", 0) or 0) % 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="unetr",
        manufacturer_model_name="unetr UNETR BTCV",
        software_versions=__version__,
        device_serial_number="none",
        content_description="BTCV abdominal organs (unetr)",
        series_description="unetr segmentation",
    )


@contextlib.contextmanager
def _quiet_highdicom():
    """highdicom's warnings and log lines while a SEG is built: about the source series' own values, which
    unetr neither wrote nor can mend, they would only crowd the terminal."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def is_segmentation(path: Path) -> bool:
    """A DICOM file whose SOP class is Segmentation Storage."""
    from unetr_cli.dicom.reading import read_dicom

    try:
        header = read_dicom(path, headers_only=True, specific_tags=["SOPClassUID"])
    except Exception:  # not readable as DICOM: not a segmentation either
        return False
    return str(header.get("SOPClassUID", "")) == SEGMENTATION_STORAGE


def read_segmentation(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A DICOM-SEG as a label map: (x, y, z) uint8 voxels over the extent of its frames, the RAS affine, and
    notes. Segments whose codes are all BTCV organs get the BTCV ids; otherwise the label ids are the segment
    numbers (and a note says so). Frames are placed by their plane positions on the grid they step along
    (gantry tilt kept; slices without any segment, which a SEG may omit, are background); where segments
    overlap, the higher label id wins.

    Raises:
        InputError: not a readable segmentation, or frames that make no regular grid.
    """
    import pydicom
    from pydicom.pixels import iter_pixels

    try:
        ds = pydicom.dcmread(path)
        count = int(ds.get("NumberOfFrames", 1) or 1)
        frames = [_frame_place(ds, k) for k in range(count)]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"not a DICOM-SEG unetr can place on a grid ({first_line(err)})") from None
    except Exception as err:  # pydicom raises several types for damaged files
        raise InputError(path, f"unreadable DICOM-SEG ({first_line(err)})") from None
    ids, notes = _label_ids(ds)
    affine, slice_of = _frame_grid(path, ds, [position for position, _ in frames])
    shape = (int(ds.Columns), int(ds.Rows), max(slice_of) + 1)
    labels = np.zeros(shape, dtype=np.uint8)
    threshold = 0 if ds.SegmentationType == "BINARY" else int(ds.MaximumFractionalValue) / 2
    try:
        for k, pixels in enumerate(iter_pixels(ds)):
            label = ids[frames[k][1]]
            plane = labels[:, :, slice_of[k]]
            inside = np.greater(pixels, threshold).transpose()
            plane[inside & (plane < label)] = label
    except Exception as err:  # truncated or undecodable pixel data
        raise InputError(path, f"cannot decode its frames ({first_line(err)})") from None
    return labels, affine, notes


def _frame_place(ds, frame: int) -> tuple[np.ndarray, int]:
    """A frame's position (LPS) and segment number, from its functional groups."""
    from unetr_cli.dicom.volume import frame_attribute

    position = frame_attribute(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
    segment = ds.PerFrameFunctionalGroupsSequence[frame].SegmentIdentificationSequence[0]
    return np.array(position, dtype=np.float64), int(segment.ReferencedSegmentNumber)


def _frame_grid(path: Path, ds, positions: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """The RAS affine of the grid the frames lie on and each frame's slice on it. The slice step is the
    smallest distance between two planes that hold frames (planes without any may be left out), and every
    plane must lie a whole number of steps from the first."""
    from unetr_cli.dicom.volume import frame_attribute

    orientation = np.array(frame_attribute(ds, 0, ORIENTATION, "ImageOrientationPatient"), dtype=np.float64)
    spacing = np.array(frame_attribute(ds, 0, MEASURES, "PixelSpacing"), dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    heights = [float(p @ normal) for p in positions]
    planes: list[tuple[float, np.ndarray]] = []  # one (height, position) per distinct plane, ascending
    for k in np.argsort(heights):
        if not planes or heights[k] - planes[-1][0] > 1e-3:
            planes.append((heights[k], positions[k]))
    first = planes[0][1]
    if len(planes) > 1:
        closest = int(np.argmin([b[0] - a[0] for a, b in zip(planes, planes[1:], strict=False)]))
        step = planes[closest + 1][1] - planes[closest][1]
    else:
        between = frame_attribute(ds, 0, MEASURES, "SpacingBetweenSlices")
        thickness = float(between or frame_attribute(ds, 0, MEASURES, "SliceThickness") or 1)
        step = normal * thickness
    slice_of = []
    for position in positions:
        steps = float((position - first) @ normal) / float(step @ normal)
        if abs(steps - round(steps)) > 0.01 or np.linalg.norm(first + round(steps) * step - position) > 0.01:
            raise InputError(path, "its frames do not lie on one regular grid of slices")
        slice_of.append(round(steps))
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing[1]
    affine_lps[:3, 1] = col_dir * spacing[0]
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = first
    return LPS_TO_RAS @ affine_lps, slice_of


def _label_ids(segmentation) -> tuple[dict[int, int], list[str]]:
    """Segment number -> label id: the BTCV id of each segment's organ code when every segment has one,
    else the segment number itself."""
    by_code = {
        (getattr(_codes().SCT, organ).value, getattr(_codes().SCT, side).value if side else None): label
        for label, (organ, side) in ORGAN_CODES.items()
    }
    numbers: dict[int, int | None] = {}
    for item in segmentation.SegmentSequence:
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        side = str(modifier[0].CodeValue) if modifier else None
        numbers[int(item.SegmentNumber)] = by_code.get((str(kind.CodeValue), side))
    if all(label is not None for label in numbers.values()):
        return {number: int(label) for number, label in numbers.items()}, []
    if max(numbers) > 255:
        raise InputError(segmentation.filename, "has segment numbers above 255: not a label map")
    return {number: number for number in numbers}, [
        "its segments are not all BTCV organs (by their codes): label ids are the segment numbers"
    ]


def _segment(number: int, name: str, algorithm):
    import highdicom as hd

    from unetr_cli.labels import label_colour

    organ, side = ORGAN_CODES.get(number, ("Organ", None))
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=_codes().SCT.AnatomicalStructure,
        segmented_property_type=getattr(_codes().SCT, organ),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=name,
        tracking_uid=hd.UID(),
        display_color=hd.color.CIELabColor.from_rgb(*label_colour(number)),
    )
    if side is not None:
        modifier = getattr(_codes().SCT, side)
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)
        ]
    return description


def _codes():
    from pydicom.sr.codedict import codes

    return codes
