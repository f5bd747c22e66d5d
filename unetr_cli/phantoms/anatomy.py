"""The patient inside a phantom: the 13 BTCV organs and the surrounding tissues as smoothly, randomly
deformed shapes in RAS millimetres (patient right +x, anterior +y, superior +z), with portal-venous HU values.
`phantoms.py` lays a scanner's voxel grid over this anatomy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


# --- shape primitives -------------------------------------------------------------------------------------


class Warp:
    """A smooth random displacement p -> p + a * sin(p W + phase), a few millimetres at organ scale."""

    def __init__(self, rng: np.random.Generator, amplitude: float, wavelength: float):
        self.freqs = (rng.normal(size=(3, 3)) * (2 * math.pi / wavelength)).astype(np.float32)
        self.phase = rng.uniform(0, 2 * math.pi, size=3).astype(np.float32)
        self.amplitude = (rng.uniform(0.5, 1.0, size=3) * amplitude).astype(np.float32)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return points + self.amplitude * np.sin(points @ self.freqs + self.phase)


class Shape:
    """Union of primitives minus other primitives, each a function world points -> inside mask."""

    def __init__(self, include: list, exclude: list | None = None):
        self.include, self.exclude = include, exclude or []
        self.low = np.min([p.low for p in include], axis=0)
        self.high = np.max([p.high for p in include], axis=0)

    def inside(self, points: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(points), dtype=bool)
        for prim in self.include:
            paint(mask, points, prim, True)
        for prim in self.exclude:
            paint(mask, points, prim, False)
        return mask


def near(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray | None:
    """Indices of the points inside the box [low, high], or None when all of them are."""
    near = (points[:, 0] >= low[0]) & (points[:, 0] <= high[0])
    for axis in (1, 2):
        near &= (points[:, axis] >= low[axis]) & (points[:, axis] <= high[axis])
    index = np.flatnonzero(near)
    return None if len(index) == len(points) else index


def paint(values: np.ndarray, points: np.ndarray, shape, value) -> None:
    """Set `values` to `value` where `points` fall inside `shape` (a Shape or a primitive: anything with
    `low`, `high` and `inside`), testing only the points inside its bounding box."""
    index = near(points, shape.low, shape.high)
    if index is None:
        values[shape.inside(points)] = value
    elif len(index):
        values[index[shape.inside(points[index])]] = value


class Blob:
    """A deformed, rotated ellipsoid."""

    def __init__(self, center, radii, warp: Warp, rotation: np.ndarray | None = None):
        self.center = np.asarray(center, dtype=np.float64)
        self.radii = np.asarray(radii, dtype=np.float64)
        self.rotation = np.eye(3) if rotation is None else rotation
        self.warp = warp
        reach = self.radii.max() + 2 * warp.amplitude.max()
        self.low, self.high = self.center - reach, self.center + reach

    def inside(self, points: np.ndarray) -> np.ndarray:
        local = (self.warp(points) - self.center) @ self.rotation
        return np.sum((local / self.radii) ** 2, axis=1) <= 1.0


class Tube:
    """A deformed capsule chain along a polyline, radius interpolated between vertices."""

    def __init__(self, vertices, radii, warp: Warp):
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


class EllipticColumn:
    """An elliptic cylinder along z (body outline, abdominal wall), with a gently warped outline."""

    def __init__(self, center_xy, radii_xy, z_range, warp: Warp):
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


def rotation(axis: str, degrees: float) -> np.ndarray:
    """Rotation matrix about one world axis."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


# --- anatomy ----------------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """Shapes and intensities of one patient, in RAS millimetres around the body centre."""

    body: Shape  # outline of the skin
    wall: Shape  # outline of the abdominal muscle wall (inside the subcutaneous fat)
    cavity: Shape  # the abdominal cavity inside the wall
    tissues: list[tuple[Shape, float]]  # painted in order before the organs
    organs: dict[int, Shape]
    organ_hu: dict[int, float]


class _Patient:
    """Random draws for one patient, scaled by its size `s`: every shape helper draws from the same stream,
    so the order of the calls below fixes every phantom (and every dataset made from a seed)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.s = rng.uniform(0.88, 1.12)

    def warp(self, amplitude: float, wavelength: float) -> Warp:
        return Warp(self.rng, amplitude, wavelength)

    def jitter(self, point, sd: float = 5.0) -> np.ndarray:
        return np.asarray(point, dtype=np.float64) * [self.s, self.s, self.s] + self.rng.normal(0, sd, 3)

    def size(self, radii) -> np.ndarray:
        return np.asarray(radii, dtype=np.float64) * self.s * self.rng.uniform(0.85, 1.15)

    def tube(self, points, radii, amplitude: float = 3.0) -> Shape:
        verts = [self.jitter(p, 3.0) for p in points]
        radii = np.asarray(radii) * self.s * self.rng.uniform(0.9, 1.1)
        return Shape([Tube(verts, radii, self.warp(amplitude, 80.0))])

    def blob(self, center, radii, rotation=None) -> Blob:
        radii = self.size(radii)
        return Blob(self.jitter(center), radii, self.warp(0.12 * radii.min(), 2.5 * radii.max()), rotation)


def build_anatomy(rng: np.random.Generator, z_range: tuple[float, float]) -> Anatomy:
    """One random patient covering the scan's slab `z_range` (mm): trunk, skeleton and muscles, lungs and
    bowel, the 13 organs, then their HU values. Everything is drawn from `rng` in this fixed order."""
    patient = _Patient(rng)
    s = patient.s
    rx, ry = 150.0 * s * rng.uniform(0.92, 1.08), 105.0 * s * rng.uniform(0.92, 1.08)
    z_span = (z_range[0] - 50.0, z_range[1] + 50.0)
    body, wall, cavity = (
        Shape([EllipticColumn((0, 0), radii, z_span, patient.warp(amplitude, wavelength))])
        for radii, amplitude, wavelength in (
            ((rx, ry), 4.0, 250.0),
            ((rx - 12 * s, ry - 12 * s), 3.0, 200.0),
            ((rx - 26 * s, ry - 24 * s), 3.0, 200.0),
        )
    )
    skeleton, muscles = _skeleton_and_muscles(patient, rx, ry, z_span, z_range[1])
    lungs, bowel, gas = _lungs_and_bowel(patient, rx, ry)
    organs = _organs(patient, z_range)
    organ_hu = {k: v + rng.normal(0, 8) for k, v in ORGAN_HU.items()}
    muscle_hu = MUSCLE_HU + rng.normal(0, 5)
    tissues = [
        (skeleton["ribs"], BONE_HU * 0.7),
        (lungs, LUNG_HU),
        (bowel, BOWEL_HU + rng.normal(0, 5)),
        (gas, GAS_HU),
        *((muscle, muscle_hu) for muscle in muscles),
        (skeleton["vertebra"], BONE_HU),
        (skeleton["marrow"], MARROW_HU),
        (skeleton["spinous"], BONE_HU),
    ]
    return Anatomy(body, wall, cavity, tissues, organs, organ_hu)


def _skeleton_and_muscles(patient: _Patient, rx: float, ry: float, z_span, z_top: float):
    """Vertebral body with marrow and spinous process, ribs; paraspinal and psoas muscles."""
    s, warp = patient.s, patient.warp
    spine_y = -0.62 * ry
    skeleton = {
        "vertebra": Shape([EllipticColumn((0, spine_y), (19 * s, 17 * s), z_span, warp(1.0, 100.0))]),
        "marrow": Shape([EllipticColumn((0, spine_y), (15 * s, 13 * s), z_span, warp(1.0, 100.0))]),
        "spinous": Shape([EllipticColumn((0, spine_y - 32 * s), (6 * s, 14 * s), z_span, warp(1.0, 100.0))]),
    }
    paraspinal = Shape(
        [
            EllipticColumn((side * 32 * s, spine_y - 30 * s), (24 * s, 20 * s), z_span, warp(2.0, 150.0))
            for side in (-1, 1)
        ]
    )
    psoas = Shape(
        [
            Tube(
                [(side * 28 * s, spine_y + 8 * s, 20 * s), (side * 55 * s, spine_y + 25 * s, -170 * s)],
                [5 * s, 22 * s],
                warp(2.0, 120.0),
            )
            for side in (-1, 1)
        ]
    )
    ribs = []
    for z in np.arange(-10.0 * s, z_top + 20.0, 24.0 * s) + patient.rng.uniform(0, 12):
        for side in (-1, 1):
            arc = [
                (side * rx * 0.25, spine_y - 8 * s, z + 4 * s),
                (side * (rx - 30 * s), -0.35 * ry, z),
                (side * (rx - 20 * s), 0.15 * ry, z - 8 * s),
                (side * 0.55 * rx, 0.62 * ry, z - 18 * s),
            ]
            ribs.append(Tube(arc, [5 * s] * 4, warp(1.5, 150.0)))
    skeleton["ribs"] = Shape(ribs)
    return skeleton, (paraspinal, psoas)


def _lungs_and_bowel(patient: _Patient, rx: float, ry: float) -> tuple[Shape, Shape, Shape]:
    """Lung bases; small bowel loops and the colon framing the abdomen; pockets of gas."""
    s, rng, blob = patient.s, patient.rng, patient.blob
    lungs = Shape(
        [
            blob((side * 0.55 * rx / s, -0.1 * ry / s, 175), (0.38 * rx / s, 0.7 * ry / s, 70))
            for side in (-1, 1)
        ]
    )
    small_bowel = [
        blob((rng.uniform(-80, 80), rng.uniform(-10, 60), rng.uniform(-150, 0)), (30, 22, 26))
        for _ in range(12)
    ]
    colon = Tube(  # ascending, transverse and descending colon
        [
            patient.jitter(p, 4.0)
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
        patient.warp(4.0, 80.0),
    )
    gas = [
        blob((rng.uniform(-100, 100), rng.uniform(10, 70), rng.uniform(-150, 25)), (11, 8, 11))
        for _ in range(8)
    ]
    return lungs, Shape([*small_bowel, colon]), Shape(gas)


def _organs(patient: _Patient, z_range: tuple[float, float]) -> dict[int, Shape]:
    """The 13 BTCV organs at anatomically plausible places (drawn in this order: liver first)."""
    s, blob, tube = patient.s, patient.blob, patient.tube
    z_lo, z_hi = z_range
    kidney_rot = {2: rotation("y", -12) @ rotation("z", 20), 3: rotation("y", 12) @ rotation("z", -20)}
    organs = {
        6: Shape(
            [blob((62, 0, 60), (72, 78, 70)), blob((-8, 30, 78), (58, 36, 42), rotation=rotation("z", -10))],
            [blob((40, 30, 18), (22, 22, 30))],  # gallbladder fossa
        ),
        1: Shape([blob((-95, -32, 62), (28, 50, 52), rotation=rotation("z", 35))]),
        7: Shape(
            [
                Tube(
                    [
                        patient.jitter(p, 4.0)
                        for p in [(-35, -12, 118), (-62, 10, 82), (-55, 32, 42), (-22, 42, 18), (18, 28, 16)]
                    ],
                    np.array([17, 30, 30, 22, 14]) * s * patient.rng.uniform(0.85, 1.15),
                    patient.warp(4.0, 90.0),
                )
            ]
        ),
        2: Shape(  # the renal hilum makes the bean
            [blob((72, -48, -12), (25, 30, 54), rotation=kidney_rot[2])], [blob((48, -38, -12), (11, 11, 20))]
        ),
        3: Shape(
            [blob((-72, -48, 4), (25, 30, 54), rotation=kidney_rot[3])], [blob((-48, -38, 4), (11, 11, 20))]
        ),
        11: tube([(28, 8, 2), (8, 2, 16), (-30, -8, 26), (-62, -18, 36), (-82, -22, 42)], [15, 13, 11, 9, 7]),
        4: Shape([blob((46, 32, 14), (15, 15, 32), rotation=rotation("x", 25))]),
        12: Shape([blob((44, -36, 58), (5, 12, 17), rotation=rotation("z", -30))]),
        13: Shape([blob((-44, -34, 48), (5, 12, 17), rotation=rotation("z", 30))]),
        # in front of the aorta (it used to run inside it, which left only a thin crescent of esophagus)
        5: tube([(4, -20, z_hi + 40), (2, -20, 160), (-14, -14, 125), (-32, -15, 112)], [8, 8, 8, 9], 1.5),
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
    organs[6].exclude.append(_fat_pad(organs[12].include[0]))
    return organs


def _fat_pad(adrenal: Blob, margin_mm: float = 6.0) -> Blob:
    """The fat around the right adrenal gland, carved out of the liver: the gland lies in retroperitoneal fat
    behind the liver, not inside it (drawn after the liver, it used to sit in the liver as a faint spot)."""
    return Blob(adrenal.center, adrenal.radii + margin_mm, adrenal.warp, adrenal.rotation)
