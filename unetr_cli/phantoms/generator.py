"""Synthetic abdominal CT phantoms in the BTCV layout.

Each phantom is built in patient (RAS+ world, millimetre) coordinates (`anatomy`): an elliptic body of
fat with a muscle wall, spine, ribs, paraspinal and psoas muscles, bowel with gas, lung bases, and the 13 BTCV
organs as smoothly and randomly deformed shapes at anatomically plausible positions (patient right is +x,
anterior +y, superior +z). The voxel grid is then laid over that anatomy with a scanner-like affine (LPS as
most scanners write, some RAS or LAS, optionally oblique), so left and right are correct whatever the
storage order. HU values follow a portal-venous contrast phase; noise and partial-volume blur come last.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.files import write_text
from unetr_cli.labels import BTCV_LABELS
from unetr_cli.phantoms.anatomy import AIR_HU, FAT_HU, MUSCLE_HU, build_anatomy, paint, rotation
from unetr_cli.volumes import save_itk, save_nifti

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
        direction = rotation("x", oblique_degrees) @ rotation("z", oblique_degrees / 2) @ direction
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
    anatomy = build_anatomy(rng, z_range)

    image = np.full(shape, AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for z_slab, points in _voxel_chunks(shape, affine, slices=max(1, 2_000_000 // (shape[0] * shape[1]))):
        hu = np.full(len(points), AIR_HU, dtype=np.float32)
        organ = np.zeros(len(points), dtype=np.uint8)
        paint(hu, points, anatomy.body, FAT_HU)
        paint(hu, points, anatomy.wall, MUSCLE_HU)
        paint(hu, points, anatomy.cavity, FAT_HU + 10.0)
        for tissue, value in anatomy.tissues:
            paint(hu, points, tissue, value)
        for label_id in PAINT_ORDER:
            paint(organ, points, anatomy.organs[label_id], label_id)
        inside_body = np.zeros(len(points), dtype=bool)
        paint(inside_body, points, anatomy.cavity, True)
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
    out_dir: str | Path,
    cases: int,
    seed: int = 0,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    validation_fraction: float = 0.2,
    folds: int | None = None,
    orientations: tuple[str, ...] = DATASET_ORIENTATIONS,
    progress=None,
    workers: int = 1,
    image_format: str = "nifti",
) -> Path:
    """Write `cases` phantoms as imagesTr/imgNNNN.nii.gz, labelsTr/labelNNNN.nii.gz and dataset_0.json.

    The last `validation_fraction` of the cases (at least one when there are two or more) form the
    "validation" list. With `folds`, every "training" entry also carries a `fold` field (0..folds-1) for
    cross-validation with `--fold`. Storage orders cycle through `orientations`. `progress` is called after
    each case with the number of cases done. `workers` processes generate cases side by side (each case
    depends only on its seed, so the dataset is the same). `image_format` writes the images as NIfTI, as DICOM
    series (a folder per case), NRRD or MetaImage; labels are NIfTI on the image's grid.

    Returns:
        The path of the written datalist.
    """
    out_dir = Path(out_dir)
    if cases < 1:
        raise ValueError("cases must be at least 1")
    n_val = 0 if cases < 2 else max(1, int(round(cases * validation_fraction)))
    jobs = [
        (
            out_dir,
            index,
            seed * 100_003 + index,
            shape,
            spacing,
            orientations[(index - 1) % len(orientations)],
            image_format,
        )
        for index in range(1, cases + 1)
    ]
    entries = []
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for entry in (pool.map if pool else map)(_write_case, jobs):
            entries.append(entry)
            if progress is not None:
                progress(len(entries))
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
    return write_text(out_dir / "dataset_0.json", json.dumps(datalist, indent=2) + "\n")


IMAGE_FORMATS = {"nifti": ".nii.gz", "dicom": "", "nrrd": ".nrrd", "mha": ".mha"}


def dataset_files(out_dir: Path, cases: int, image_format: str) -> list[Path]:
    """What `write_dataset` writes: each case's image (a folder for DICOM) and label, and the datalist."""
    suffix = IMAGE_FORMATS[image_format]
    files = [out_dir / "dataset_0.json"]
    for index in range(1, cases + 1):
        files += [out_dir / f"imagesTr/img{index:04d}{suffix}", out_dir / f"labelsTr/label{index:04d}.nii.gz"]
    return files


def _write_case(job) -> dict:
    """Generate and save one case of `write_dataset`; returns its datalist entry."""
    out_dir, index, case_seed, shape, spacing, orientation, image_format = job
    phantom = make_phantom(case_seed, shape=shape, spacing=spacing, orientation=orientation)
    image = f"imagesTr/img{index:04d}{IMAGE_FORMATS[image_format]}"
    entry = {"image": image, "label": f"labelsTr/label{index:04d}.nii.gz"}
    label, affine = phantom.label, phantom.affine
    if image_format == "dicom":
        from unetr_cli.phantoms.dicom_series import reading_order, write_ct_series

        write_ct_series(phantom.image, phantom.affine, out_dir / image, description=f"phantom {index}")
        label, affine = reading_order(phantom.label, phantom.affine)  # the grid DICOM readers rebuild
    elif image_format == "nifti":
        save_nifti(phantom.image, phantom.affine, out_dir / image)
    else:
        save_itk(phantom.image, phantom.affine, out_dir / image)
    save_nifti(label, affine, out_dir / entry["label"])
    return entry
