"""Synthetic abdominal CT phantoms in the BTCV layout.

Each phantom is built in patient (RAS+ world, millimetre) coordinates: an elliptic body of fat with a
muscle wall, spine, ribs, paraspinal and psoas muscles, bowel with gas, lung bases, and the 13 BTCV organs
as smoothly and randomly deformed shapes at anatomically plausible positions (patient right is +x,
anterior +y, superior +z). The voxel grid is then laid over that anatomy with a scanner-like affine (LPS as
most scanners write, some RAS or LAS, optionally oblique), so left and right are correct whatever the
storage order. HU values follow a portal-venous contrast phase; noise and partial-volume blur come last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.labels import BTCV_LABELS
from unetr_cli.volumes import save_nifti

# Portal-venous phase HU per organ label (mean); each phantom jitters them a little.
ORGAN_HU: dict[int, float] = {
    1: 120.0,  # spleen
    2: 165.0,  # right kidney (cortex)
    3: 165.0,  # left kidney
    4: 12.0,  # gallbladder (bile)
    5: 45.0,  # esophagus
    6: 105.0,  # liver
    7: 35.0,  # stomach (wall and fluid)
    8: 185.0,  # aorta
    9: 140.0,  # inferior vena cava
    10: 165.0,  # portal and splenic veins
    11: 90.0,  # pancreas
    12: 40.0,  # right adrenal
    13: 40.0,  # left adrenal
}
FAT_HU, MUSCLE_HU, BONE_HU, MARROW_HU = -100.0, 52.0, 700.0, 230.0
BOWEL_HU, GAS_HU, LUNG_HU, AIR_HU = 30.0, -850.0, -860.0, -1000.0

# Paint order: later organs win where shapes touch (vessels stay continuous).
PAINT_ORDER = (6, 1, 7, 2, 3, 11, 4, 12, 13, 5, 10, 9, 8)

# Storage orders as scanners and converters write them: mostly LPS, some RAS and LAS.
DATASET_ORIENTATIONS = ("LPS", "LPS", "RAS", "LPS", "LAS")
_AXIS_SIGN = {"L": -1.0, "R": 1.0, "P": -1.0, "A": 1.0, "I": -1.0, "S": 1.0}


@dataclass(frozen=True)
class Phantom:
    """One synthetic CT: int16 HU image, uint8 BTCV label map, and the voxel-to-RAS affine they share."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


# --- shape primitives -------------------------------------------------------------------------------------


class _Warp:
    """A smooth random displacement p -> p + a * sin(p W + phase), a few millimetres at organ scale."""

    def __init__(self, rng: np.random.Generator, amplitude: float, wavelength: float):
        self.freqs = (rng.normal(size=(3, 3)) * (2 * math.pi / wavelength)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * math.pi, size=3).astype(np.float32)
        self.amplitude = (rng.uniform(0.5, 1.0, size=3) * amplitude).astype(np.float32)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return points + self.amplitude * np.sin(points @ self.freqs + self.phase)


class _Shape:
    """Union of primitives minus other primitives, each a function world points -> inside mask."""

    def __init__(self, include: list, exclude: list | None = None):
        self.include, self.exclude = include, exclude or []
        self.low = np.min([p.low for p in include], axis=0)
        self.high = np.max([p.high for p in include], axis=0)

    def inside(self, points: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(points), dtype=bool)
        for prim in self.include:
            _apply(mask, points, prim, True)
        for prim in self.exclude:
            _apply(mask, points, prim, False)
        return mask


def _near(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """Indices of the points inside the box [low, high], or None when all of them are."""
    near = (points[:, 0] >= low[0]) & (points[:, 0] <= high[0])
    for axis in (1, 2):
        near &= (points[:, axis] >= low[axis]) & (points[:, axis] <= high[axis])
    index = np.flatnonzero(near)
    return None if len(index) == len(points) else index


def _apply(mask: np.ndarray, points: np.ndarray, prim, value: bool) -> None:
    """Set `mask` to `value` where `points` fall inside `prim`, testing only points near it."""
    index = _near(points, prim.low, prim.high)
    if index is None:
        hit = prim.inside(points)
        mask[hit] = value
    elif len(index):
        mask[index[prim.inside(points[index])]] = value


class _Blob:
    """A deformed, rotated ellipsoid."""

    def __init__(self, center, radii, warp: _Warp, rotation: np.ndarray | None = None):
        self.center = np.asarray(center, dtype=np.float64)
        self.radii = np.asarray(radii, dtype=np.float64)
        self.rotation = np.eye(3) if rotation is None else rotation
        self.warp = warp
        reach = self.radii.max() + 2 * warp.amplitude.max()
        self.low, self.high = self.center - reach, self.center + reach

    def inside(self, points: np.ndarray) -> np.ndarray:
        local = (self.warp(points) - self.center) @ self.rotation
        return np.sum((local / self.radii) ** 2, axis=1) <= 1.0


class _Tube:
    """A deformed capsule chain along a polyline, radius interpolated between vertices."""

    def __init__(self, vertices, radii, warp: _Warp):
        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.radii = np.asarray(radii, dtype=np.float64)
        self.warp = warp
        reach = self.radii.max() + 2 * warp.amplitude.max()
        self.low = self.vertices.min(axis=0) - reach
        self.high = self.vertices.max(axis=0) + reach

    def inside(self, points: np.ndarray) -> np.ndarray:
        warped = self.warp(points)
        margin = np.full(len(points), np.inf)
        for a, b, ra, rb in zip(
            self.vertices[:-1], self.vertices[1:], self.radii[:-1], self.radii[1:], strict=True
        ):
            seg = b - a
            t = np.clip((warped - a) @ seg / (seg @ seg), 0.0, 1.0)
            dist = np.linalg.norm(warped - (a + t[:, None] * seg), axis=1)
            margin = np.minimum(margin, dist - (ra + t * (rb - ra)))
        return margin <= 0.0


class _EllipticColumn:
    """An elliptic cylinder along z (body outline, abdominal wall), with a gently warped outline."""

    def __init__(self, center_xy, radii_xy, z_range, warp: _Warp):
        self.center = np.asarray(center_xy, dtype=np.float64)
        self.radii = np.asarray(radii_xy, dtype=np.float64)
        self.warp = warp
        reach = self.radii.max() + 2 * warp.amplitude.max()
        self.low = np.array([*(self.center - reach), z_range[0]])
        self.high = np.array([*(self.center + reach), z_range[1]])

    def inside(self, points: np.ndarray) -> np.ndarray:
        warped = self.warp(points)
        in_z = (points[:, 2] >= self.low[2]) & (points[:, 2] <= self.high[2])
        return in_z & (np.sum(((warped[:, :2] - self.center) / self.radii) ** 2, axis=1) <= 1.0)


def _rotation_z(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _rotation(axis: str, degrees: float) -> np.ndarray:
    """Rotation matrix about one world axis."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


# --- anatomy ----------------------------------------------------------------------------------------------


@dataclass
class _Anatomy:
    """Shapes and intensities of one patient, in RAS millimetres around the body centre."""

    body: _Shape
    cavity: _Shape
    wall_inner: _Shape
    tissues: list[tuple[_Shape, float]]  # painted in order before the organs
    organs: dict[int, _Shape]
    organ_hu: dict[int, float]


def _build_anatomy(rng: np.random.Generator, z_range: tuple[float, float]) -> _Anatomy:
    s = rng.uniform(0.88, 1.12)  # patient size
    rx, ry = 150.0 * s * rng.uniform(0.92, 1.08), 105.0 * s * rng.uniform(0.92, 1.08)
    z_lo, z_hi = z_range

    def warp(amplitude: float, wavelength: float) -> _Warp:
        return _Warp(rng, amplitude, wavelength)

    def jitter(point, sd: float = 5.0) -> np.ndarray:
        return np.asarray(point, dtype=np.float64) * [s, s, s] + rng.normal(0, sd, 3)

    def size(radii) -> np.ndarray:
        return np.asarray(radii, dtype=np.float64) * s * rng.uniform(0.85, 1.15)

    def tube(points, radii, amplitude=3.0) -> _Shape:
        verts = [jitter(p, 3.0) for p in points]
        return _Shape([_Tube(verts, np.asarray(radii) * s * rng.uniform(0.9, 1.1), warp(amplitude, 80.0))])

    def blob(center, radii, rotation=None, amplitude=None, wavelength=None) -> _Blob:
        radii = size(radii)
        return _Blob(
            jitter(center),
            radii,
            warp(amplitude or 0.12 * radii.min(), wavelength or 2.5 * radii.max()),
            rotation,
        )

    z_span = (z_lo - 50.0, z_hi + 50.0)
    body = _Shape([_EllipticColumn((0, 0), (rx, ry), z_span, warp(4.0, 250.0))])
    wall_outer = _Shape([_EllipticColumn((0, 0), (rx - 12 * s, ry - 12 * s), z_span, warp(3.0, 200.0))])
    cavity = _Shape([_EllipticColumn((0, 0), (rx - 26 * s, ry - 24 * s), z_span, warp(3.0, 200.0))])

    spine_y = -0.62 * ry
    vertebra = _Shape([_EllipticColumn((0, spine_y), (19 * s, 17 * s), z_span, warp(1.0, 100.0))])
    marrow = _Shape([_EllipticColumn((0, spine_y), (15 * s, 13 * s), z_span, warp(1.0, 100.0))])
    spinous = _Shape([_EllipticColumn((0, spine_y - 32 * s), (6 * s, 14 * s), z_span, warp(1.0, 100.0))])
    paraspinal = _Shape(
        [
            _EllipticColumn((side * 32 * s, spine_y - 30 * s), (24 * s, 20 * s), z_span, warp(2.0, 150.0))
            for side in (-1, 1)
        ]
    )
    psoas = _Shape(
        [
            _Tube(
                [(side * 28 * s, spine_y + 8 * s, 20 * s), (side * 55 * s, spine_y + 25 * s, -170 * s)],
                [5 * s, 22 * s],
                warp(2.0, 120.0),
            )
            for side in (-1, 1)
        ]
    )
    rib_levels = np.arange(-10.0 * s, z_hi + 20.0, 24.0 * s) + rng.uniform(0, 12)
    ribs = []
    for z in rib_levels:
        for side in (-1, 1):
            arc = [
                (side * rx * 0.25, spine_y - 8 * s, z + 4 * s),
                (side * (rx - 30 * s), -0.35 * ry, z),
                (side * (rx - 20 * s), 0.15 * ry, z - 8 * s),
                (side * 0.55 * rx, 0.62 * ry, z - 18 * s),
            ]
            ribs.append(_Tube(arc, [5 * s] * 4, warp(1.5, 150.0)))
    lungs = _Shape(
        [
            blob((side * 0.55 * rx / s, -0.1 * ry / s, 175), (0.38 * rx / s, 0.7 * ry / s, 70))
            for side in (-1, 1)
        ]
    )
    small_bowel = [
        blob((rng.uniform(-80, 80), rng.uniform(-10, 60), rng.uniform(-150, 0)), (30, 22, 26))
        for _ in range(12)
    ]
    colon = _Tube(  # ascending, transverse and descending colon framing the abdomen
        [
            jitter(p, 4.0)
            for p in [
                (95, 5, -150),
                (95, 10, 0),
                (70, 45, 20),
                (0, 60, 5),
                (-70, 45, 25),
                (-100, 5, 10),
                (-95, 0, -150),
            ]
        ],
        np.full(7, 22.0 * s),
        warp(4.0, 80.0),
    )
    gas = [
        blob((rng.uniform(-100, 100), rng.uniform(10, 70), rng.uniform(-150, 25)), (11, 8, 11))
        for _ in range(8)
    ]

    kidney_rot = {2: _rotation("y", -12) @ _rotation("z", 20), 3: _rotation("y", 12) @ _rotation("z", -20)}
    organs: dict[int, _Shape] = {
        6: _Shape(
            [blob((62, 0, 60), (72, 78, 70)), blob((-8, 30, 78), (58, 36, 42), rotation=_rotation_z(-10))],
            [blob((40, 30, 18), (22, 22, 30))],  # gallbladder fossa
        ),
        1: _Shape([blob((-95, -32, 62), (28, 50, 52), rotation=_rotation_z(35))]),
        7: _Shape(
            [
                _Tube(
                    [
                        jitter(p, 4.0)
                        for p in [(-35, -12, 118), (-62, 10, 82), (-55, 32, 42), (-22, 42, 18), (18, 28, 16)]
                    ],
                    np.array([17, 30, 30, 22, 14]) * s * rng.uniform(0.85, 1.15),
                    warp(4.0, 90.0),
                )
            ]
        ),
        2: _Shape(
            [blob((72, -48, -12), (25, 30, 54), rotation=kidney_rot[2])], [blob((48, -38, -12), (11, 11, 20))]
        ),  # renal hilum makes the bean
        3: _Shape(
            [blob((-72, -48, 4), (25, 30, 54), rotation=kidney_rot[3])], [blob((-48, -38, 4), (11, 11, 20))]
        ),
        11: tube([(28, 8, 2), (8, 2, 16), (-30, -8, 26), (-62, -18, 36), (-82, -22, 42)], [15, 13, 11, 9, 7]),
        4: _Shape([blob((46, 32, 14), (15, 15, 32), rotation=_rotation("x", 25))]),
        12: _Shape([blob((44, -36, 58), (5, 12, 17), rotation=_rotation_z(-30))]),
        13: _Shape([blob((-44, -34, 48), (5, 12, 17), rotation=_rotation_z(30))]),
        5: tube([(-4, -42, z_hi + 40), (-10, -38, 160), (-22, -25, 125), (-32, -15, 112)], [8, 8, 8, 9], 1.5),
        10: tube(
            [(-80, -26, 44), (-45, -18, 32), (-5, -12, 22), (22, -6, 26), (42, 2, 44)], [5, 5.5, 6, 7, 6], 1.5
        ),
        9: tube(
            [(24, -28, z_hi + 40), (24, -30, 40), (22, -32, -60), (20, -36, z_lo - 40)], [12, 12, 11, 11], 1.5
        ),
        8: tube(
            [(-14, -36, z_hi + 40), (-14, -38, 40), (-12, -40, -110), (-12, -40, z_lo - 40)],
            [12, 11, 10, 10],
            1.5,
        ),
    }
    organ_hu = {k: v + rng.normal(0, 8) for k, v in ORGAN_HU.items()}
    muscle_hu = MUSCLE_HU + rng.normal(0, 5)
    tissues = [
        (_Shape(ribs), BONE_HU * 0.7),
        (lungs, LUNG_HU),
        (_Shape([*small_bowel, colon]), BOWEL_HU + rng.normal(0, 5)),
        (_Shape(gas), GAS_HU),
        (paraspinal, muscle_hu),
        (psoas, muscle_hu),
        (vertebra, BONE_HU),
        (marrow, MARROW_HU),
        (spinous, BONE_HU),
    ]
    return _Anatomy(body, cavity, wall_outer, tissues, organs, organ_hu)


# --- voxel grid -------------------------------------------------------------------------------------------


def scanner_affine(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    orientation: str = "LPS",
    center: tuple[float, float, float] = (0.0, 0.0, 0.0),
    oblique_degrees: float = 0.0,
) -> np.ndarray:
    """Voxel-to-RAS affine of a scan stored in `orientation` order (e.g. LPS), centred on `center`.

    `oblique_degrees` tilts the grid about the left-right axis, like a gantry tilt, and rotates it slightly
    in-plane, giving a non-axis-aligned affine.
    """
    signs = np.array([_AXIS_SIGN[c] for c in orientation.upper()])
    axes = np.array(["LRPAIS".index(c) // 2 for c in orientation.upper()])
    if sorted(axes) != [0, 1, 2]:
        raise ValueError(f"orientation {orientation!r} must name one of L/R, P/A, I/S each")
    direction = np.zeros((3, 3))
    direction[axes, np.arange(3)] = signs
    if oblique_degrees:
        direction = _rotation("x", oblique_degrees) @ _rotation("z", oblique_degrees / 2) @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    middle = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = np.asarray(center) - affine[:3, :3] @ middle
    return affine


def _voxel_chunks(
    shape: tuple[int, int, int], affine: np.ndarray, slices: int
) -> Iterator[tuple[slice, np.ndarray]]:
    """World coordinates (N, 3) of the voxels, a few slices (last axis) at a time."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for start in range(0, shape[2], slices):
        stop = min(start + slices, shape[2])
        k = np.arange(start, stop)
        ijk = np.stack(
            [
                np.repeat(i[..., None], len(k), 2),
                np.repeat(j[..., None], len(k), 2),
                np.broadcast_to(k, (*shape[:2], len(k))),
            ],
            axis=-1,
        ).reshape(-1, 3)
        yield slice(start, stop), (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def _paint(values: np.ndarray, points: np.ndarray, shape: _Shape, value: float) -> None:
    """Set `values` to `value` where `points` fall inside `shape` (bounding-box culled)."""
    index = _near(points, shape.low, shape.high)
    if index is None:
        values[shape.inside(points)] = value
    elif len(index):
        values[index[shape.inside(points[index])]] = value


def _scanner_grid(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A BTCV-like acquisition: 512 x 512 pixels of 0.6-0.98 mm, 2.5-5 mm slices over 26-42 cm."""
    in_plane = rng.uniform(0.6, 0.98)
    thickness = rng.uniform(2.5, 5.0)
    slices = int(round(rng.uniform(260.0, 420.0) / thickness))
    return (512, 512, slices), (float(in_plane), float(in_plane), float(thickness))


def default_grid(seed: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The voxel grid (shape, spacing) `make_phantom(seed)` uses when no shape or spacing is given."""
    return _scanner_grid(np.random.default_rng(seed))


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    orientation: str | None = None,
    oblique_degrees: float = 0.0,
    noise_hu: float = 12.0,
) -> Phantom:
    """Generate one abdominal CT phantom, reproducible from `seed`.

    Args:
        seed: random seed; the same seed and arguments give the same phantom.
        shape: voxels (x, y, z). Default: 512 x 512 and as many slices as the sampled coverage needs, like
            BTCV. A smaller shape keeps the same anatomy on a coarser grid (spacing = field of view / shape).
        spacing: millimetres per voxel. Default: BTCV-like, in-plane 0.6-0.98 mm at 512 voxels and
            2.5-5 mm slices, scaled by the shape.
        orientation: storage order code (e.g. LPS, RAS, LAS). Default: LPS for 3 in 4 phantoms, else RAS.
        oblique_degrees: tilt the voxel grid against the patient axes.
        noise_hu: standard deviation of the Gaussian image noise.
    """
    rng = np.random.default_rng(seed)
    full_shape, full_spacing = _scanner_grid(rng)
    if shape is None:
        shape = full_shape
    if spacing is None:
        fov = np.asarray(full_shape) * np.asarray(full_spacing)
        spacing = tuple(float(v) for v in fov / np.asarray(shape))
    if orientation is None:
        orientation = str(rng.choice(["LPS", "LPS", "LPS", "RAS"]))
    if min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"shape {shape} and spacing {spacing} must be positive")
    extent = np.asarray(shape) * np.asarray(spacing)
    center = (rng.normal(0, 4), rng.normal(-5, 4), rng.uniform(-30, 10))
    affine = scanner_affine(shape, spacing, orientation, center, oblique_degrees)
    z_range = (center[2] - extent[2] / 2, center[2] + extent[2] / 2)
    anatomy = _build_anatomy(rng, z_range)

    image = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for z_slab, points in _voxel_chunks(shape, affine, slices=max(1, 2_000_000 // (shape[0] * shape[1]))):
        hu = np.full(len(points), AIR_HU, dtype=np.float32)
        organ = np.zeros(len(points), dtype=np.uint8)
        _paint(hu, points, anatomy.body, FAT_HU)
        _paint(hu, points, anatomy.wall_inner, MUSCLE_HU)
        _paint(hu, points, anatomy.cavity, FAT_HU + 10.0)
        for tissue, value in anatomy.tissues:
            _paint(hu, points, tissue, value)
        for label_id in PAINT_ORDER:
            _paint(organ, points, anatomy.organs[label_id], label_id)
        inside_body = np.zeros(len(points), dtype=bool)
        _paint(inside_body, points, anatomy.cavity, True)
        organ[~inside_body] = 0  # organs never poke through the abdominal wall
        for label_id, value in anatomy.organ_hu.items():
            hu[organ == label_id] = value
        image[:, :, z_slab] = hu.reshape(shape[0], shape[1], -1)
        label[:, :, z_slab] = organ.reshape(shape[0], shape[1], -1)

    image = _blur_and_noise(image, rng, noise_hu)
    return Phantom(np.clip(np.rint(image), -1024, 3071).astype(np.int16), label, affine)


def _blur_and_noise(image: np.ndarray, rng: np.random.Generator, noise_hu: float) -> np.ndarray:
    """Partial-volume blur of about half a voxel, then Gaussian noise inside the body."""
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(image, sigma=0.6, mode="nearest")
    body = blurred > -900
    blurred[body] += rng.normal(0.0, noise_hu, size=int(body.sum())).astype(np.float32)
    return blurred


# --- writing the BTCV layout ------------------------------------------------------------------------------


def write_dataset(
    out_dir: Path,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    validation_fraction: float = 0.2,
    folds: int | None = None,
    orientations: tuple[str, ...] = DATASET_ORIENTATIONS,
    progress=None,
) -> Path:
    """Write `cases` phantoms as imagesTr/imgNNNN.nii.gz, labelsTr/labelNNNN.nii.gz and dataset_0.json.

    The last `validation_fraction` of the cases (at least one when there are two or more) form the
    "validation" list. With `folds`, every "training" entry also carries a `fold` field (0..folds-1) for
    cross-validation with `--fold`. Storage orders cycle through `orientations`. `progress` is called after
    each case with the case number.

    Returns:
        The path of the written datalist.
    """
    if cases < 1:
        raise ValueError("cases must be at least 1")
    n_val = 0 if cases < 2 else max(1, int(round(cases * validation_fraction)))
    entries = []
    for index in range(1, cases + 1):
        orientation = orientations[(index - 1) % len(orientations)]
        phantom = make_phantom(seed * 100_003 + index, shape=shape, spacing=spacing, orientation=orientation)
        entry = {"image": f"imagesTr/img{index:04d}.nii.gz", "label": f"labelsTr/label{index:04d}.nii.gz"}
        save_nifti(phantom.image, phantom.affine, out_dir / entry["image"])
        save_nifti(phantom.label, phantom.affine, out_dir / entry["label"])
        entries.append(entry)
        if progress is not None:
            progress(index)
    training, validation = entries[: cases - n_val], entries[cases - n_val :]
    if folds:
        for position, entry in enumerate(training):
            entry["fold"] = position % folds
    datalist = {
        "name": "unetr-phantoms",
        "description": "Synthetic abdominal CT phantoms in the BTCV layout, made by `unetr synth`",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": len(training),
        "numValidation": len(validation),
        "seed": seed,
        "training": training,
        "validation": validation,
    }
    path = out_dir / "dataset_0.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path
