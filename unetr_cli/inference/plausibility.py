"""Which organs a reader should double-check, and whether the scan's orientation can be right.

Per organ, besides voxels, volume and mean HU (`assess`), the flags:
- `lateral`: a lateral organ mostly on the wrong side of the body's midline in patient coordinates (usually
  a wrong header or a flipped scan);
- `cut`: the organ touches the scan's field of view, so its volume is a lower bound;
- `volume`: outside the plausible adult range (`organ_norms`); an organ at the scan's edge only when it is
  too large, since what is in view is a lower bound;
- `fragments`: more than one sizeable piece of an organ that is one piece; pieces joined through another
  organ's label close by (a pancreas crossed by the splenic vein) are one piece;
- `uncertain`: with test-time augmentation, low agreement between the flipped predictions;
- `hu`: mean HU of the organ's interior (partial volume at its surface left out) outside the organ's plausible
  range for the scan's contrast phase; judged only when enough of the organ is in view;
- `missing`: none of the liver, spleen, kidneys or aorta labelled where a neighbour shows that the scan
  covers its level.
The whole scan is checked for orientation twice (`orientation`): front/back from the body and spine before
inference, left/right and up/down from the predicted liver, spleen and kidneys after it.
What cannot be judged (no body, unknown label ids, an empty map, no organ to judge the orientation by) is
said in a note, never a crash.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unetr_cli.files import write_text
from unetr_cli.inference.orientation import (
    AORTA,
    LEFT_KIDNEY,
    LIVER,
    RIGHT_KIDNEY,
    SPLEEN,
    find_body,
    organ_orientation,
    organ_voxels,
    orientation_before_inference,
    side_share,
    to_world,
    vessel_midline,
)
from unetr_cli.inference.postprocess import organ_components
from unetr_cli.labels import label_names
from unetr_cli.organ_norms import CONTRAST_AORTA_HU, NORMS, hu_range

FRAGMENT_SHARE = 0.05  # a component counts as a fragment from 5% of the organ's volume...
FRAGMENT_MIN_ML = 0.5  # ... and at least this size
BRIDGE_MM = 10.0  # pieces of an organ split by another organ's label at most twice this wide are one
MIN_AGREEMENT = 0.8  # Dice between a flipped prediction and the averaged one, mean over flips
INTERIOR_MIN_ML = 1.0  # mean HU is judged on an interior of at least this size
ANCHOR_MIN_ML = 5.0  # a neighbour this large shows the scan covers its level
GALLBLADDER, PANCREAS = 4, 11
# Organs whose absence a neighbour makes implausible: "whole" when the neighbour must lie wholly in view
# (its whole height covered, which overlaps the organ's in every adult), "present" when any of it will do.
EXPECTED_BESIDE: dict[int, tuple[tuple[int, str], ...]] = {
    LIVER: ((SPLEEN, "whole"), (RIGHT_KIDNEY, "whole"), (GALLBLADDER, "present")),
    SPLEEN: ((LIVER, "whole"), (LEFT_KIDNEY, "whole")),
    RIGHT_KIDNEY: ((LEFT_KIDNEY, "whole"),),
    LEFT_KIDNEY: ((RIGHT_KIDNEY, "whole"),),
    AORTA: tuple((label, "present") for label in (LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, PANCREAS)),
}

FLAG_MEANINGS = {
    "lateral": "mostly on the wrong side of the midline",
    "cut": "touches the scan's edge (volume is a lower bound)",
    "volume": "volume outside the plausible adult range",
    "fragments": "in several sizeable pieces",
    "uncertain": "flipped predictions disagree",
    "hu": "mean HU of its interior outside the plausible range",
    "missing": "not labelled where the scan covers its level",
}


@dataclass
class OrganReport:
    """One organ's numbers and flags; fields are None where they do not apply or could not be judged."""

    label: int
    organ: str
    voxels: int
    volume_ml: float
    mean_hu: float | None
    flags: list[str] = field(default_factory=list)
    expected_side_share: float | None = None
    edge_voxels: int | None = None
    fragments: int | None = None
    largest_fragment_share: float | None = None
    agreement: float | None = None
    volume_range_ml: tuple[float, float] | None = None
    interior_hu: float | None = None
    hu_range: tuple[float, float] | None = None
    expected_from: str | None = None  # with `missing`: the neighbour that shows the scan covers its level

    def describe_flags(self) -> str:
        """`right kidney (lateral: 0% on its side; cut)`."""
        details = {
            "lateral": f"{self.expected_side_share:.0%} on its side"
            if self.expected_side_share is not None
            else "",
            "cut": f"volume >= {self.volume_ml:g} ml",
            "volume": f"{self.volume_ml:g} ml, plausible {_span(self.volume_range_ml)} ml",
            "fragments": f"{self.fragments} pieces",
            "uncertain": f"agreement {self.agreement:.2f}" if self.agreement is not None else "",
            "hu": f"interior {self.interior_hu:g} HU, plausible {_span(self.hu_range)}"
            if self.interior_hu is not None
            else "",
            "missing": f"none labelled, though the {self.expected_from} shows the scan covers its level",
        }
        return f"{self.organ} ({'; '.join(f'{f}: {details[f]}' for f in self.flags)})"


@dataclass
class ScanReport:
    """The organs of one label map, the scan-level problems (orientation, an empty map) and what could not
    be judged."""

    organs: list[OrganReport]
    contrast_phase: str
    orientation: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    empty: bool = False

    @property
    def flagged(self) -> list[OrganReport]:
        return [organ for organ in self.organs if organ.flags]

    @property
    def has_flags(self) -> bool:
        return bool(self.flagged or self.orientation or self.empty)

    def summary(self, name: str) -> str:
        """One line for the terminal naming the organs to check."""
        if self.empty:
            return f"{name}: no organ labelled: nothing to judge"
        orientation = "orientation looks wrong; " if self.orientation else ""
        if not self.flagged:
            present = sum(1 for organ in self.organs if organ.voxels)
            return f"{name}: {orientation}no organ flagged ({present} present)"
        return f"{name}: {orientation}check " + ", ".join(organ.describe_flags() for organ in self.flagged)

    def to_dict(self) -> dict:
        return {
            "contrast_phase": self.contrast_phase,
            "flagged": [organ.organ for organ in self.flagged],
            "orientation": self.orientation,
            "empty": self.empty,
            "notes": self.notes,
            "flag_meanings": FLAG_MEANINGS,
            "organs": [asdict(organ) for organ in self.organs],
        }


def assess(
    labels: np.ndarray,
    affine: np.ndarray,
    num_classes: int,
    image: np.ndarray | None = None,
    agreement: dict[int, float] | None = None,
    edge_axes: tuple[int, ...] = (0, 1, 2),
) -> ScanReport:
    """The report of one label map on its scan's grid. Without `image`, mean HU and the body's midline are
    not available (the midline then comes from the aorta and vena cava). `edge_axes`: the grid axes whose
    ends are the scan's edges (not those of a label map that covers only the labelled slices)."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    notes = []
    if labels.min() < 0:
        notes.append("negative label ids are not organs: not judged")
        labels = np.where(labels < 0, 0, labels)
    flat = labels.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes)
    unknown = [int(i) for i in np.flatnonzero(counts) if i not in NORMS and i != 0]
    sums = (
        np.bincount(flat, weights=image.ravel().astype(np.float64), minlength=len(counts))
        if image is not None
        else None
    )
    if unknown:
        notes.append(f"label ids {unknown[:8]} are not BTCV organs: not judged")
    if image is None:
        notes.append("no scan given: mean HU and the body's midline not judged")
    mean_hu = {
        label: float(sums[label] / counts[label])
        for label in range(len(counts))
        if sums is not None and counts[label]
    }
    phase = _contrast_phase(mean_hu.get(AORTA))
    body = find_body(image, affine) if image is not None else None
    if image is not None and body is None:
        notes.append(
            "no body found (no voxels above -500 HU): the midline comes from the aorta and vena cava"
        )
    positions = organ_voxels(labels, affine)
    midline = body.midline_x if body is not None else vessel_midline(positions)
    if midline is None and any(counts[label] for label in NORMS if NORMS[label].side and label < len(counts)):
        notes.append("no midline (no body, aorta or vena cava): left/right not judged")
    organs = []
    for label, name in label_names(num_classes).items():
        if label == 0:
            continue
        count = int(counts[label]) if label < len(counts) else 0
        report = OrganReport(
            label,
            name,
            count,
            round(count * voxel_ml, 3),
            round(mean_hu[label], 1) if label in mean_hu else None,
        )
        if count and label in NORMS:
            scene = _Scene(labels, affine, voxel_ml, image, edge_axes)
            _judge(report, scene, midline, phase, agreement)
        organs.append(report)
    _flag_missing(organs, edges_known=len(edge_axes) == 3)
    empty = not any(o.voxels for o in organs) and not unknown
    problems, cannot = organ_orientation(positions, midline)
    notes += [] if empty else cannot
    return ScanReport(organs, phase, orientation_before_inference(body) + problems, notes, empty=empty)


@dataclass(frozen=True)
class _Scene:
    """What every organ is judged on: the label map, its grid, the scan's voxels (if given) and which grid
    axes end at the scan's edges."""

    labels: np.ndarray
    affine: np.ndarray
    voxel_ml: float
    image: np.ndarray | None
    edge_axes: tuple[int, ...]


def _judge(report: OrganReport, scene: _Scene, midline, phase, agreement) -> None:
    norm = NORMS[report.label]
    labels = scene.labels
    if norm.side and midline is not None:
        share = _share_on_side(labels == report.label, scene.affine, midline, norm.side)
        report.expected_side_share = round(share, 3)
        if share < 0.5:
            report.flags.append("lateral")
    region, ranked = organ_components(labels, report.label)  # judged organs are present
    sizes = np.bincount(ranked.ravel())[1:]
    # a speck is neither a fragment nor evidence that the organ is cut by the field of view
    sizeable_count = _sizeable_count(sizes, scene.voxel_ml)
    sizeable = (ranked >= 1) & (ranked <= sizeable_count)
    report.edge_voxels = _edge_voxels(sizeable, region, labels.shape, scene.edge_axes)
    if report.edge_voxels and not norm.crosses_scan:
        report.flags.append("cut")
    report.volume_range_ml = norm.volume_ml
    low, high = norm.volume_ml
    if report.volume_ml > high or (report.volume_ml < low and not report.edge_voxels):
        report.flags.append("volume")  # at the edge, what is in view is a lower bound: never too small
    if norm.one_piece:
        report.fragments = _pieces(scene, report.label, region, ranked, sizeable_count)
        report.largest_fragment_share = round(float(sizes[0] / sizes.sum()), 3)
        if report.fragments > 1:
            report.flags.append("fragments")
    if agreement is not None and report.label in agreement:
        report.agreement = round(agreement[report.label], 3)
        if report.agreement < MIN_AGREEMENT:
            report.flags.append("uncertain")
    if scene.image is not None:
        interior = _interior_hu(scene, report.label, region)
        report.interior_hu = None if interior is None else round(interior, 1)
        in_view = not report.edge_voxels or report.volume_ml >= low  # not just a tip at the edge
        if report.interior_hu is not None and in_view:
            report.hu_range = hu_range(report.label, phase)
            if not report.hu_range[0] <= report.interior_hu <= report.hu_range[1]:
                report.flags.append("hu")


def _pieces(scene: _Scene, label: int, region, ranked: np.ndarray, count: int) -> int:
    """How many pieces an organ's `count` sizeable components make once two components split by another
    organ's label count as one: the gap between them (the voxels on their shortest connections, at most
    2 x BRIDGE_MM long) is mostly other organs' labels. Background in the gap keeps them apart."""
    if count <= 1:
        return count
    from scipy import ndimage

    labels = scene.labels
    spacing = np.linalg.norm(scene.affine[:3, :3], axis=0)
    margin = np.ceil(2 * BRIDGE_MM / spacing).astype(int)
    box = tuple(
        slice(max(0, r.start - m), min(n, r.stop + m))
        for r, m, n in zip(region, margin, labels.shape, strict=True)
    )
    local = labels[box]
    inside = tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(region, box, strict=True))
    pieces, distances = [], []
    for rank in range(1, count + 1):
        piece = np.zeros(local.shape, dtype=bool)
        piece[inside] = ranked == rank
        pieces.append(piece)
        distances.append(ndimage.distance_transform_edt(~piece, sampling=spacing))
    group = list(range(count))
    for a in range(count):
        for b in range(a + 1, count):
            through = distances[a] + distances[b]
            gap = float(through.min())  # their separation: reached on the pieces' closest voxels
            if gap > 2 * BRIDGE_MM:
                continue
            between = local[(through <= gap + spacing.max()) & ~pieces[a] & ~pieces[b]]
            neighbours = (between != 0) & (between != label)
            if between.size and neighbours.mean() >= 0.5:
                group = [group[a] if g == group[b] else g for g in group]
    return len(set(group))


def _interior_hu(scene: _Scene, label: int, region) -> float | None:
    """Mean HU of an organ one voxel in from its surface (where partial volume mixes in its neighbours);
    None when that interior is smaller than INTERIOR_MIN_ML."""
    from scipy import ndimage

    interior = ndimage.binary_erosion(scene.labels[region] == label)
    if interior.sum() * scene.voxel_ml < INTERIOR_MIN_ML:
        return None
    return float(scene.image[region][interior].mean())


def _flag_missing(organs: list[OrganReport], edges_known: bool) -> None:
    """Flag `missing` each organ of EXPECTED_BESIDE that has no voxel while a neighbour shows that the scan
    covers its level: a sizeable neighbour, wholly in view where that is what it takes (which cannot be told
    unless every edge of the grid is the scan's, `edges_known`)."""
    by_label = {organ.label: organ for organ in organs}
    for label, neighbours in EXPECTED_BESIDE.items():
        organ = by_label.get(label)
        if organ is None or organ.voxels:
            continue
        for neighbour, how in neighbours:
            other = by_label.get(neighbour)
            if other is None or other.volume_ml < ANCHOR_MIN_ML:
                continue
            whole = edges_known and not other.edge_voxels and other.volume_ml >= NORMS[neighbour].volume_ml[0]
            if how == "present" or whole:
                organ.flags.append("missing")
                organ.expected_from = other.organ + (" (wholly in view)" if how == "whole" else "")
                break


def _contrast_phase(aorta_hu: float | None) -> str:
    if aorta_hu is None:
        return "unknown"
    return "contrast" if aorta_hu >= CONTRAST_AORTA_HU else "unenhanced"


def _share_on_side(mask: np.ndarray, affine: np.ndarray, midline: float, side: str) -> float:
    """The share of an organ's voxels on `side` of the midline."""
    return side_share(to_world(np.argwhere(mask), affine)[:, 0], midline, side)


def _sizeable_count(sizes: np.ndarray, voxel_ml: float) -> int:
    """How many of an organ's components (sizes largest first) are sizeable: at least FRAGMENT_SHARE of the
    organ and FRAGMENT_MIN_ML; the largest always counts."""
    threshold = max(FRAGMENT_SHARE * sizes.sum(), FRAGMENT_MIN_ML / voxel_ml)
    return max(1, int((sizes >= threshold).sum()))


def _edge_voxels(inside: np.ndarray, region: tuple[slice, ...], shape: tuple[int, ...], axes) -> int:
    """Voxels of `inside` (a mask over the box `region` of a grid of `shape`) on the grid's faces at the ends
    of `axes`."""
    on_face = np.zeros(inside.shape, dtype=bool)
    for axis, (span, size) in enumerate(zip(region, shape, strict=True)):
        if axis not in axes:
            continue
        face = [slice(None)] * inside.ndim
        if span.start == 0:
            face[axis] = 0
            on_face[tuple(face)] = True
        if span.stop == size:
            face[axis] = -1
            on_face[tuple(face)] = True
    return int((inside & on_face).sum())


def _span(bounds) -> str:
    return f"{bounds[0]:g}-{bounds[1]:g}" if bounds else "?"


def judge_label_map(label_path: Path, scan_path: Path | None, num_classes: int) -> ScanReport:
    """The report of a label map file (from unetr or any tool using BTCV ids; a DICOM-SEG too) and,
    optionally, the scan it labels, which must share its grid (a DICOM-SEG, which covers only the slices it
    labels, is placed on its scan's grid)."""
    from unetr_cli.errors import InputError
    from unetr_cli.grid import on_grid
    from unetr_cli.volumes import load_scan, scan_source

    labels, info, header = load_scan(scan_source(label_path), dtype=None)
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise InputError(label_path, "has non-integer values: not a label map")
    notes = list(header.notes) if info.kind == "dicom-seg" else []
    image, edge_axes = None, (0, 1, 2)
    if scan_path is not None:
        image, scan_info, _ = load_scan(scan_source(scan_path), dtype=None)
        same_grid = scan_info.shape == info.shape and np.allclose(scan_info.affine, info.affine, atol=1e-3)
        if not same_grid and info.kind == "dicom-seg":
            labels = on_grid(labels, info.affine, scan_info.shape, scan_info.affine)
            same_grid, info = labels is not None, scan_info
        if not same_grid:
            raise InputError(
                label_path, f"is not on the grid of its scan {scan_path} (shape or affine differ)"
            )
    elif info.kind == "dicom-seg":
        edge_axes = (0, 1)
        notes.append(
            "a DICOM-SEG without its scan (--scan) spans only its labelled slices: organs touching its first "
            "or last slice are not judged as cut"
        )
    report = assess(labels.astype(np.int64, copy=False), info.affine, num_classes, image, edge_axes=edge_axes)
    report.notes[:0] = notes
    return report


def report_paths(stem: Path) -> list[Path]:
    """Where `write_report` puts the report of the label map `<stem>.*`."""
    return [stem.with_name(stem.name + "_stats.json"), stem.with_name(stem.name + "_stats.csv")]


def write_report(stem: Path, report: ScanReport, scan: str) -> list[Path]:
    """`<stem>_stats.json` (everything) and `<stem>_stats.csv` (a row per organ, flags joined by ';')."""
    json_path, csv_path = report_paths(stem)
    write_text(json_path, json.dumps({"scan": scan, **report.to_dict()}, indent=2) + "\n")
    rows = [asdict(organ) for organ in report.organs]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ";".join(v) if k == "flags" else _cell(v) for k, v in row.items()})
    write_text(csv_path, buffer.getvalue())
    return [json_path, csv_path]


def _cell(value):
    return "-".join(f"{v:g}" for v in value) if isinstance(value, tuple | list) else value
