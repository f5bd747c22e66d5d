"""Which organs a reader should double-check, and whether the scan's orientation can be right.

Per organ, besides voxels, volume and mean HU (`assess`), the flags:
- `lateral`: a lateral organ mostly on the wrong side of the body's midline in patient coordinates (usually
  a wrong header or a flipped scan);
- `cut`: the organ touches the scan's field of view, so its volume is a lower bound;
- `volume`: outside the plausible adult range (`organ_norms`);
- `fragments`: more than one sizeable connected component of an organ that is one piece;
- `uncertain`: with test-time augmentation, low agreement between the flipped predictions;
- `hu`: mean HU outside the organ's plausible range for the scan's contrast phase.
The whole scan is checked for orientation twice: front/back from the body and spine before inference
(`orientation_before_inference`), left/right and up/down from the predicted liver, spleen and kidneys after
it (`orientation_after_inference`).
What cannot be judged (no body, unknown label ids, an empty map) is said in a note, never a crash.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unetr_cli.files import write_text
from unetr_cli.inference.postprocess import organ_components
from unetr_cli.labels import BTCV_LABELS, label_names
from unetr_cli.organ_norms import CONTRAST_AORTA_HU, NORMS, hu_range

BODY_HU = -500.0  # soft tissue and fat, not air
BONE_HU = 250.0
SPINE_BAND_MM = 30.0  # half-width of the band around the midline searched for the spine
SUBSAMPLE = 2  # body and spine are located on every second voxel per axis
FRAGMENT_SHARE = 0.05  # a component counts as a fragment from 5% of the organ's volume...
FRAGMENT_MIN_ML = 0.5  # ... and at least this size
MIN_AGREEMENT = 0.8  # Dice between a flipped prediction and the averaged one, mean over flips
LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, STOMACH, AORTA, IVC = 6, 1, 2, 3, 7, 8, 9
ORIENTATION_ORGANS = (LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, AORTA, IVC)
ORIENTATION_VOXELS = 2**20  # the organs' positions are judged on about this many label-map voxels at most

FLAG_MEANINGS = {
    "lateral": "mostly on the wrong side of the midline",
    "cut": "touches the scan's edge (volume is a lower bound)",
    "volume": "volume outside the plausible adult range",
    "fragments": "in several sizeable pieces",
    "uncertain": "flipped predictions disagree",
    "hu": "mean HU outside the plausible range",
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
    hu_range: tuple[float, float] | None = None

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
            "hu": f"{self.mean_hu:g} HU, plausible {_span(self.hu_range)}"
            if self.mean_hu is not None
            else "",
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


@dataclass(frozen=True)
class Body:
    """Where the patient's body is, in RAS millimetres: the midline (x) and front/back centre (y)."""

    midline_x: float
    centre_y: float
    spine_y: float | None


def find_body(image: np.ndarray, affine: np.ndarray) -> Body | None:
    """The body's centre from the voxels above -500 HU, and the spine's front/back position from bone near
    the midline; None when the scan holds no body."""
    step = (slice(None, None, SUBSAMPLE),) * 3
    sample = image[step]
    body = sample > BODY_HU
    count = int(body.sum())
    if count == 0:
        return None
    centre = _to_world(_mean_index(body, count)[None] * SUBSAMPLE, affine)[0]
    midline_x, centre_y = float(centre[0]), float(centre[1])
    bone = _to_world(np.argwhere(sample > BONE_HU) * SUBSAMPLE, affine)
    bone = bone[np.abs(bone[:, 0] - midline_x) < SPINE_BAND_MM]
    return Body(midline_x, centre_y, float(bone[:, 1].mean()) if len(bone) else None)


def _mean_index(mask: np.ndarray, count: int) -> np.ndarray:
    """The mean voxel index (3,) of a mask's `count` voxels, from its sums along each axis (no list of
    millions of indices)."""
    means = []
    for axis, size in enumerate(mask.shape):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        means.append(np.dot(np.arange(size), mask.sum(axis=others, dtype=np.int64)) / count)
    return np.array(means)


def orientation_before_inference(body: Body | None) -> list[str]:
    """Problems with the header's front/back that the body and spine (`find_body`) show before any model
    runs: the spine lies behind the body's centre in every CT (nothing to say without a body or a spine)."""
    if body is not None and body.spine_y is not None and body.spine_y > body.centre_y:
        return [
            f"front/back looks reversed: the spine lies {body.spine_y - body.centre_y:.0f} mm in front of "
            "the body's centre (a wrong header or a flipped scan; the labels would be mirrored)"
        ]
    return []


def assess(
    labels: np.ndarray,
    affine: np.ndarray,
    num_classes: int,
    image: np.ndarray | None = None,
    agreement: dict[int, float] | None = None,
) -> ScanReport:
    """The report of one label map on its scan's grid. Without `image`, mean HU and the body's midline are
    not available (the midline then comes from the aorta and vena cava)."""
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
    organ_voxels = _organ_voxels(labels, affine)
    midline = body.midline_x if body is not None else _vessel_midline(organ_voxels)
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
            _judge(report, labels, affine, voxel_ml, midline, phase, agreement)
        organs.append(report)
    orientation = orientation_before_inference(body) + _organ_orientation(organ_voxels, midline)
    return ScanReport(
        organs, phase, orientation, notes, empty=not any(o.voxels for o in organs) and not unknown
    )


def _judge(report: OrganReport, labels, affine, voxel_ml, midline, phase, agreement) -> None:
    norm = NORMS[report.label]
    mask = labels == report.label
    if norm.side and midline is not None:
        share = _share_on_side(mask, affine, midline, norm.side)
        report.expected_side_share = round(share, 3)
        if share < 0.5:
            report.flags.append("lateral")
    region, ranked = organ_components(labels, report.label)  # judged organs are present
    sizes = np.bincount(ranked.ravel())[1:]
    # a speck is neither a fragment nor evidence that the organ is cut by the field of view
    sizeable = (ranked >= 1) & (ranked <= _sizeable_count(sizes, voxel_ml))
    if not norm.crosses_scan:
        report.edge_voxels = _edge_voxels(sizeable, region, labels.shape)
        if report.edge_voxels:
            report.flags.append("cut")
    report.volume_range_ml = norm.volume_ml
    low, high = norm.volume_ml
    if report.volume_ml > high or (report.volume_ml < low and "cut" not in report.flags):
        report.flags.append("volume")
    if norm.one_piece:
        report.fragments = _sizeable_count(sizes, voxel_ml)
        report.largest_fragment_share = round(float(sizes[0] / sizes.sum()), 3)
        if report.fragments > 1:
            report.flags.append("fragments")
    if agreement is not None and report.label in agreement:
        report.agreement = round(agreement[report.label], 3)
        if report.agreement < MIN_AGREEMENT:
            report.flags.append("uncertain")
    if report.mean_hu is not None:
        report.hu_range = hu_range(report.label, phase)
        if not report.hu_range[0] <= report.mean_hu <= report.hu_range[1]:
            report.flags.append("hu")


def _contrast_phase(aorta_hu: float | None) -> str:
    if aorta_hu is None:
        return "unknown"
    return "contrast" if aorta_hu >= CONTRAST_AORTA_HU else "unenhanced"


def _to_world(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def _organ_voxels(labels: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
    """The RAS positions (N, 3) of the voxels of each organ the orientation is judged by, found in one pass
    over the label map of non-negative ids through a look-up table (a pass per organ, or `np.isin`, costs
    seconds on a 512 x 512 x 200 map). A large map is looked at on every `step`-th voxel per axis (at most
    about ORIENTATION_VOXELS voxels): where an organ lies does not need all of them."""
    step = max(1, round((labels.size / ORIENTATION_VOXELS) ** (1 / 3)))
    view = labels[::step, ::step, ::step]
    wanted = np.zeros(max(int(view.max()), *ORIENTATION_ORGANS) + 1, dtype=bool)
    wanted[list(ORIENTATION_ORGANS)] = True
    index = np.argwhere(wanted[view])
    values = view[tuple(index.T)]
    index *= step
    world = _to_world(index, affine)
    return {label: world[values == label] for label in ORIENTATION_ORGANS}


def _centroid(voxels: np.ndarray) -> np.ndarray | None:
    return voxels.mean(axis=0) if len(voxels) else None


def _vessel_midline(organs: dict[int, np.ndarray]) -> float | None:
    """Halfway between the aorta (left of the spine) and the vena cava (right of it)."""
    aorta, cava = _centroid(organs[AORTA]), _centroid(organs[IVC])
    if aorta is None or cava is None:
        return None
    return float((aorta[0] + cava[0]) / 2)


def _share_on_side(mask: np.ndarray, affine: np.ndarray, midline: float, side: str) -> float:
    """The share of an organ's voxels on `side` of the midline (patient right is +x in RAS)."""
    return _side_share(_to_world(np.argwhere(mask), affine)[:, 0], midline, side)


def _side_share(x: np.ndarray, midline: float, side: str) -> float:
    """The share of the RAS x positions `x` on `side` of the midline."""
    on_right = float(np.mean(x > midline))
    return on_right if side == "right" else 1.0 - on_right


def _sizeable_count(sizes: np.ndarray, voxel_ml: float) -> int:
    """How many of an organ's components (sizes largest first) are sizeable: at least FRAGMENT_SHARE of the
    organ and FRAGMENT_MIN_ML; the largest always counts."""
    threshold = max(FRAGMENT_SHARE * sizes.sum(), FRAGMENT_MIN_ML / voxel_ml)
    return max(1, int((sizes >= threshold).sum()))


def _edge_voxels(inside: np.ndarray, region: tuple[slice, ...], shape: tuple[int, ...]) -> int:
    """Voxels of `inside` (a mask over the box `region` of a grid of `shape`) on any of the grid's six
    faces."""
    on_face = np.zeros(inside.shape, dtype=bool)
    for axis, (span, size) in enumerate(zip(region, shape, strict=True)):
        face = [slice(None)] * inside.ndim
        if span.start == 0:
            face[axis] = 0
            on_face[tuple(face)] = True
        if span.stop == size:
            face[axis] = -1
            on_face[tuple(face)] = True
    return int((inside & on_face).sum())


def orientation_after_inference(labels: np.ndarray, affine: np.ndarray, body: Body | None) -> list[str]:
    """Problems with the header's left/right and up/down that the labelled organs show; the midline is the
    body's (`find_body`) or, without one, the vessels'."""
    organs = _organ_voxels(labels, affine)
    midline = body.midline_x if body is not None else _vessel_midline(organs)
    return _organ_orientation(organs, midline)


def _organ_orientation(organs: dict[int, np.ndarray], midline: float | None) -> list[str]:
    """Left/right from the liver (right) and spleen (left), up/down from the liver above the kidneys;
    `organs` as `_organ_voxels` gives them."""
    problems = []
    judged = [label for label in (LIVER, SPLEEN) if len(organs[label])]
    if midline is not None:
        wrong = [
            BTCV_LABELS[label]
            for label in judged
            if _side_share(organs[label][:, 0], midline, NORMS[label].side) < 0.5
        ]
        if judged and len(wrong) == len(judged):
            problems.append(
                f"left/right looks reversed: the {' and '.join(wrong)} lie on the wrong side of the midline "
                "(a wrong header or a flipped scan; the labels may be mirrored)"
            )
    liver = _centroid(organs[LIVER])
    kidneys = [c for c in (_centroid(organs[k]) for k in (RIGHT_KIDNEY, LEFT_KIDNEY)) if c is not None]
    if liver is not None and kidneys and liver[2] < np.mean([k[2] for k in kidneys]):
        problems.append(
            "up/down looks reversed: the liver lies below the kidneys (a wrong header or a flipped scan)"
        )
    return problems


def _span(bounds) -> str:
    return f"{bounds[0]:g}-{bounds[1]:g}" if bounds else "?"


def judge_label_map(label_path: Path, scan_path: Path | None, num_classes: int) -> ScanReport:
    """The report of a label map file (from unetr or any tool using BTCV ids) and, optionally, the scan it
    labels, which must share its grid."""
    from unetr_cli.errors import InputError
    from unetr_cli.volumes import load_scan, load_volume, scan_source

    labels, info = load_volume(scan_source(label_path), dtype=None)
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise InputError(label_path, "has non-integer values: not a label map")
    image = None
    if scan_path is not None:
        image, scan_info, _ = load_scan(scan_source(scan_path), dtype=None)
        same_grid = scan_info.shape == info.shape and np.allclose(scan_info.affine, info.affine, atol=1e-3)
        if not same_grid:
            raise InputError(
                label_path, f"is not on the grid of its scan {scan_path} (shape or affine differ)"
            )
    return assess(labels.astype(np.int64, copy=False), info.affine, num_classes, image)


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
