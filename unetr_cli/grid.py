"""Grids: the one convention change between the formats (`LPS_TO_RAS`: DICOM, NRRD and MetaImage store LPS,
unetr's affines are RAS as NIfTI's), and a label map moved onto another grid whose voxels are its own (a
DICOM-SEG covers only the slices it labels, and is scored or judged on the full grid of its series, which may
store the axes in another order or direction)."""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
TOLERANCE = 1e-3  # of a voxel: what rounding in the headers may leave


def on_grid(
    labels: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
) -> np.ndarray | None:
    """`labels` (on `affine`) on the grid (`shape`, `target_affine`), background elsewhere, when each of its
    voxels is one of that grid's voxels (the same spacing and axes, up to their order and direction, shifted
    by whole voxels, and inside it); None when they are not."""
    transform = np.linalg.inv(np.asarray(target_affine, dtype=np.float64)) @ np.asarray(affine, np.float64)
    turn = np.round(transform[:3, :3])
    if not np.allclose(transform[:3, :3], turn, atol=TOLERANCE) or not _signed_permutation(turn):
        return None
    source_axes = [int(np.flatnonzero(turn[axis])[0]) for axis in range(3)]
    moved = labels.transpose(source_axes)
    starts = []
    for axis in range(3):
        offset = transform[axis, 3]
        if turn[axis, source_axes[axis]] < 0:
            moved = np.flip(moved, axis=axis)
            offset -= moved.shape[axis] - 1
        start = round(offset)
        if abs(offset - start) > 10 * TOLERANCE or start < 0 or start + moved.shape[axis] > shape[axis]:
            return None
        starts.append(start)
    placed = np.zeros(shape, dtype=labels.dtype)
    placed[tuple(slice(s, s + n) for s, n in zip(starts, moved.shape, strict=True))] = moved
    return placed


def _signed_permutation(matrix: np.ndarray) -> bool:
    magnitudes = np.abs(matrix)
    return bool(np.all(magnitudes.sum(axis=0) == 1) and np.all(magnitudes.sum(axis=1) == 1))
