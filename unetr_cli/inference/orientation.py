"""Whether a scan's header puts the patient the right way round, judged twice: front/back from the body and
spine before inference (the image alone: a wrong header or a flipped scan), left/right and up/down from the
labelled liver, spleen and kidneys after it (where a wrong header and a failed model look alike, so the
message names both).

A warning needs strong evidence and states it: shares of voxels and distances in millimetres, each past a
margin that real anatomy keeps and a merely poor segmentation (or a head, whose skull surrounds the centre)
does not reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unetr_cli.labels import BTCV_LABELS
from unetr_cli.organ_norms import NORMS

BODY_HU = -500.0  # soft tissue and fat, not air
BONE_HU = 250.0
SPINE_BAND_MM = 30.0  # half-width of the band around the midline searched for the spine
SUBSAMPLE = 2  # body and spine are located on every second voxel per axis
LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, AORTA, IVC = 6, 1, 2, 3, 8, 9
ORIENTATION_ORGANS = (LIVER, SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, AORTA, IVC)
ORIENTATION_VOXELS = 2**20  # the organs' positions are judged on about this many label-map voxels at most
# Evidence a warning needs. In an abdomen the spine lies 60-100 mm behind the body's centre and the liver's
# centre 50-80 mm above the kidneys'; the liver keeps 80-95% of its volume right of the midline, the spleen
# nearly all of it left.
REVERSED_MM = 30.0  # front/back and up/down: this far the wrong way
WRONG_SIDE_SHARE = 0.7  # left/right: this share of each judged organ on the wrong side...
WRONG_SIDE_MM = 20.0  # ... and its centre this far across the midline
# From the labels alone a mirrored header and a model that failed look alike.
EITHER = "the labels or the header are wrong (a mirrored header or scan, or a failed segmentation)"


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
    centre = to_world(_mean_index(body, count)[None] * SUBSAMPLE, affine)[0]
    midline_x, centre_y = float(centre[0]), float(centre[1])
    bone = to_world(np.argwhere(sample > BONE_HU) * SUBSAMPLE, affine)
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


def to_world(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS millimetres of voxel indices (N, 3)."""
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def orientation_before_inference(body: Body | None) -> list[str]:
    """Problems with the header's front/back that the body and spine (`find_body`) show before any model
    runs: the spine lies well behind the body's centre in every abdominal CT (nothing to say without a body
    or a spine)."""
    if body is not None and body.spine_y is not None and body.spine_y - body.centre_y > REVERSED_MM:
        return [
            f"front/back looks reversed: the spine lies {body.spine_y - body.centre_y:.0f} mm in front of "
            "the body's centre (a wrong header or a flipped scan; the labels would be mirrored)"
        ]
    return []


def organ_voxels(labels: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
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
    world = to_world(index, affine)
    return {label: world[values == label] for label in ORIENTATION_ORGANS}


def centroid(voxels: np.ndarray) -> np.ndarray | None:
    return voxels.mean(axis=0) if len(voxels) else None


def vessel_midline(organs: dict[int, np.ndarray]) -> float | None:
    """Halfway between the aorta (left of the spine) and the vena cava (right of it)."""
    aorta, cava = centroid(organs[AORTA]), centroid(organs[IVC])
    if aorta is None or cava is None:
        return None
    return float((aorta[0] + cava[0]) / 2)


def side_share(x: np.ndarray, midline: float, side: str) -> float:
    """The share of the RAS x positions `x` on `side` of the midline (patient right is +x in RAS)."""
    on_right = float(np.mean(x > midline))
    return on_right if side == "right" else 1.0 - on_right


def orientation_after_inference(labels: np.ndarray, affine: np.ndarray, body: Body | None) -> list[str]:
    """Problems with the header's left/right and up/down that the labelled organs show; the midline is the
    body's (`find_body`) or, without one, the vessels'."""
    organs = organ_voxels(labels, affine)
    midline = body.midline_x if body is not None else vessel_midline(organs)
    problems, _ = organ_orientation(organs, midline)
    return problems


def organ_orientation(organs: dict[int, np.ndarray], midline: float | None) -> tuple[list[str], list[str]]:
    """Left/right from the liver (right) and spleen (left), up/down from the liver above the kidneys;
    `organs` as `organ_voxels` gives them. Returns the problems, and notes on what could not be judged."""
    problems, notes = [], []
    judged = [label for label in (LIVER, SPLEEN) if len(organs[label])]
    if not judged:
        notes.append("neither liver nor spleen labelled: left/right not judged from the organs")
    elif midline is not None:
        evidence = [_wrong_side(label, organs[label][:, 0], midline) for label in judged]
        if all(evidence):
            problems.append(f"left/right looks reversed: {' and '.join(evidence)}: {EITHER}")
    liver = centroid(organs[LIVER])
    kidneys = [c for c in (centroid(organs[k]) for k in (RIGHT_KIDNEY, LEFT_KIDNEY)) if c is not None]
    if liver is None or not kidneys:
        notes.append("no liver or no kidney labelled: up/down not judged from the organs")
    elif np.mean([k[2] for k in kidneys]) - liver[2] > REVERSED_MM:
        below = np.mean([k[2] for k in kidneys]) - liver[2]
        problems.append(
            f"up/down looks reversed: the liver's centre lies {below:.0f} mm below the kidneys': {EITHER}"
        )
    return problems, notes


def _wrong_side(label: int, x: np.ndarray, midline: float) -> str | None:
    """`92% of the liver lies left of the midline (its centre 48 mm left)` when an organ is clearly on the
    wrong side, else None."""
    side = NORMS[label].side
    wrong = 1.0 - side_share(x, midline, side)
    across = (midline - float(x.mean())) * (1 if side == "right" else -1)
    if wrong < WRONG_SIDE_SHARE or across < WRONG_SIDE_MM:
        return None
    other = "left" if side == "right" else "right"
    organ = BTCV_LABELS[label]
    return f"{wrong:.0%} of the {organ} lies {other} of the midline (its centre {across:.0f} mm {other})"
