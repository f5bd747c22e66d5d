"""Carrying a segmentation from the model's grid back to a scan's own voxel grid, through the two affines.

That undoes the crop, the resampling and the reorientation in one step and works for oblique scans too.
"""

from __future__ import annotations

import numpy as np
import torch


def resample_labels(
    labels: np.ndarray,
    source_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    probabilities: np.ndarray | None = None,
    chunk_voxels: int = 1 << 20,
) -> np.ndarray:
    """Carry a segmentation onto another voxel grid, keeping organ boundaries where they are.

    With `probabilities` (C, X, Y, Z), each target voxel gets the argmax of the trilinearly interpolated
    class probabilities, as a classical inverse resampling of the network output would give. Without them,
    it gets the argmax of the interpolated one-hot maps of `labels` (a vote of its eight source neighbours,
    which needs no probabilities at all). Either way, only voxels whose eight source neighbours disagree are
    computed: where all eight share an argmax, any convex combination of their probabilities keeps it, so the
    shared label is exact. Memory stays at a few small arrays besides the inputs; positions outside the
    source grid get background (0). Grids that differ only by axis order, flips, scale and shift (every scan
    that is not oblique) are handled axis by axis, several times faster than the general path.

    Args:
        labels: (X, Y, Z) integer label map on the source grid (the argmax of `probabilities` if given).
        source_affine, target_affine: voxel-to-world matrices of the two grids (same world frame).
        target_shape: shape of the target grid.
        probabilities: optional (C, X, Y, Z) class probabilities on the source grid.
        chunk_voxels: target voxels processed at a time.
    """
    grid = _VotingGrid(np.asarray(labels), probabilities)
    mapping = np.linalg.inv(source_affine) @ target_affine
    out = np.zeros(target_shape, dtype=np.uint8)
    step = max(1, chunk_voxels // (target_shape[0] * target_shape[1]))
    source_axis = _axis_permutation(mapping[:3, :3])
    for start in range(0, target_shape[2], step):
        stop = min(start + step, target_shape[2])
        if source_axis is None:
            out[:, :, start:stop] = grid.sample_positions(_positions(mapping, target_shape, start, stop))
        else:
            out[:, :, start:stop] = grid.sample_separable(mapping, source_axis, target_shape, start, stop)
    return out


SLAB = 16  # source slices (first axis) converted at a time
_CORNERS = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.int64)


class _VotingGrid:
    """A label map (and optionally class probabilities) padded with background, with a map of where its
    2x2x2 neighbourhoods are uniform."""

    def __init__(self, labels: np.ndarray, probabilities: np.ndarray | None = None):
        self.shape = np.array(labels.shape, dtype=np.int64)
        padded = np.pad(labels.astype(np.uint8, copy=False), 1)
        self.probabilities = None
        if probabilities is not None:
            # One row of C values per padded voxel (each neighbour lookup reads one contiguous row), filled a
            # slab at a time so no second full-size copy exists; the border is certain background.
            rows = np.zeros((*padded.shape, len(probabilities)), dtype=np.asarray(probabilities[:, :1]).dtype)
            rows[..., 0] = 1.0
            for start in range(0, labels.shape[0], SLAB):
                block = np.asarray(probabilities[:, start : start + SLAB])
                rows[1 + start : 1 + start + block.shape[1], 1:-1, 1:-1] = np.moveaxis(block, 0, -1)
            self.probabilities = torch.from_numpy(rows.reshape(-1, rows.shape[-1]))
        uniform = np.ones(tuple(s - 1 for s in padded.shape), dtype=bool)
        for corner in _CORNERS[1:]:
            uniform &= (
                padded[:-1, :-1, :-1]
                == padded[
                    corner[0] : padded.shape[0] - 1 + corner[0],
                    corner[1] : padded.shape[1] - 1 + corner[1],
                    corner[2] : padded.shape[2] - 1 + corner[2],
                ]
            )
        self.flat, self.flat_uniform = padded.ravel(), uniform.ravel()
        self.strides = np.array(padded.strides, dtype=np.int64) // padded.itemsize
        self.uniform_strides = np.array(uniform.strides, dtype=np.int64) // uniform.itemsize

    def sample_positions(self, positions: np.ndarray) -> np.ndarray:
        """Labels at continuous source positions (..., 3); the general (oblique) path."""
        base = np.floor(positions).astype(np.int64)
        frac = (positions - base).astype(np.float32)
        inside = np.all((base >= -1) & (base <= self.shape - 1), axis=-1)
        result = np.zeros(inside.shape, dtype=np.uint8)
        index = np.nonzero(inside)
        b = base[index] + 1  # into the padded grid
        result[index] = self._labels(b, frac[index])
        return result

    def sample_separable(self, mapping, source_axis, target_shape, start: int, stop: int) -> np.ndarray:
        """Labels for target slices start..stop when each target axis maps onto one source axis."""
        ranges = [np.arange(target_shape[0]), np.arange(target_shape[1]), np.arange(start, stop)]
        bases, fracs, insides = [], [], []
        for axis, t in enumerate(ranges):
            src = source_axis[axis]
            position = mapping[src, axis] * t + mapping[src, 3]
            base = np.floor(position).astype(np.int64)
            bases.append(base + 1)
            fracs.append((position - base).astype(np.float32))
            insides.append((base >= -1) & (base <= self.shape[src] - 1))
        shape = (len(ranges[0]), len(ranges[1]), len(ranges[2]))

        def along(values, axis):
            view = [1, 1, 1]
            view[axis] = -1
            return values.reshape(view)

        inside = along(insides[0], 0) & along(insides[1], 1) & along(insides[2], 2)
        safe = [np.clip(b, 0, None) for b in bases]  # outside positions are masked; keep indices valid
        uniform_index = sum(along(safe[a] * self.uniform_strides[source_axis[a]], a) for a in range(3))
        index = sum(along(safe[a] * self.strides[source_axis[a]], a) for a in range(3))
        uniform_index = np.minimum(uniform_index, len(self.flat_uniform) - 1)
        index = np.minimum(index, len(self.flat) - 1)
        same = inside & self.flat_uniform[uniform_index]
        result = np.where(same, self.flat[index], 0).astype(np.uint8)
        vote = np.nonzero(inside & ~same)
        if len(vote[0]):
            b = np.empty((len(vote[0]), 3), dtype=np.int64)
            frac = np.empty((len(vote[0]), 3), dtype=np.float32)
            for axis in range(3):
                b[:, source_axis[axis]] = bases[axis][vote[axis]]
                frac[:, source_axis[axis]] = fracs[axis][vote[axis]]
            result[vote] = self._decide(b, frac)
        return result.reshape(shape)

    def _labels(self, b: np.ndarray, frac: np.ndarray) -> np.ndarray:
        same = self.flat_uniform[b @ self.uniform_strides]
        labels = np.empty(len(b), dtype=np.uint8)
        labels[same] = self.flat[b[same] @ self.strides]
        if (~same).any():
            labels[~same] = self._decide(b[~same], frac[~same])
        return labels

    def _decide(self, b: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Labels where the eight neighbours disagree: interpolated probabilities, else the one-hot vote."""
        if self.probabilities is None:
            return _vote(self.flat, self.strides, b, frac)
        return _interpolated_argmax(self.probabilities, self.strides, b, frac)


def _axis_permutation(rotation: np.ndarray) -> list[int] | None:
    """For each target axis, the one source axis it runs along; None when the grids are oblique."""
    magnitude = np.abs(rotation)
    source_axis = [int(np.argmax(magnitude[:, axis])) for axis in range(3)]
    if sorted(source_axis) != [0, 1, 2]:
        return None
    off_axis = magnitude.copy()
    off_axis[source_axis, [0, 1, 2]] = 0.0
    return source_axis if off_axis.max() <= 1e-6 * magnitude.max() else None


def _positions(mapping: np.ndarray, target_shape, start: int, stop: int) -> np.ndarray:
    """Source positions (nx, ny, nk, 3) of target voxels in slices start..stop."""
    grid = np.stack(
        np.meshgrid(
            np.arange(target_shape[0]), np.arange(target_shape[1]), np.arange(start, stop), indexing="ij"
        ),
        axis=-1,
    ).astype(np.float64)
    return grid @ mapping[:3, :3].T + mapping[:3, 3]


def _vote(flat: np.ndarray, strides: np.ndarray, base: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Winner of the trilinear one-hot vote among the eight neighbours of each position.

    A corner's score is the summed weight of the corners sharing its label; the 28 corner pairs are
    compared once each, on contiguous per-corner rows.
    """
    origin = base @ strides
    labels = np.stack([flat[origin + offset] for offset in _CORNERS @ strides])  # (8, n)
    upper, lower = frac.T, 1.0 - frac.T
    weights = np.stack(
        [
            (upper[0] if a else lower[0]) * (upper[1] if b else lower[1]) * (upper[2] if c else lower[2])
            for a, b, c in _CORNERS
        ]
    )
    scores = weights.copy()
    for a in range(8):
        for b in range(a + 1, 8):
            same = labels[a] == labels[b]
            scores[a] += np.where(same, weights[b], 0.0)
            scores[b] += np.where(same, weights[a], 0.0)
    return labels[np.argmax(scores, axis=0), np.arange(labels.shape[1])]


def _interpolated_argmax(
    probabilities: torch.Tensor, strides: np.ndarray, base: np.ndarray, frac: np.ndarray
):
    """Argmax of the trilinearly interpolated class probabilities (voxels, C) at each position."""
    origin = torch.from_numpy(base @ strides)
    upper, lower = torch.from_numpy(frac.T.copy()), torch.from_numpy(1.0 - frac.T)
    total = torch.zeros((len(base), probabilities.shape[1]), dtype=torch.float32)
    for (a, b, c), offset in zip(_CORNERS, _CORNERS @ strides, strict=True):
        weight = (upper[0] if a else lower[0]) * (upper[1] if b else lower[1]) * (upper[2] if c else lower[2])
        total += probabilities.index_select(0, origin + int(offset)) * weight[:, None]
    return torch.argmax(total, dim=1).to(torch.uint8).numpy()


# --- the GPU path -----------------------------------------------------------------------------------------


@torch.no_grad()
def probabilities_to_labels_on_device(
    logits: torch.Tensor,
    source_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    chunk_voxels: int = 1 << 23,
) -> np.ndarray:
    """`resample_labels` with probabilities, computed where the scores are (a GPU): softmax in place, then for
    each slab of target slices the trilinearly interpolated probabilities (`grid_sample`) and their argmax.
    Only the uint8 label map leaves the device.

    The host path pads the model grid with certain background; here the interpolation weight that falls
    outside the grid (one minus the interpolated sum of the probabilities) is added to the background class,
    which is the same thing without a padded copy.

    Args:
        logits: (C, X, Y, Z) class scores on the model grid; overwritten by the probabilities.
        source_affine, target_affine: voxel-to-world matrices of the model grid and the scan.
        target_shape: the scan's shape.
        chunk_voxels: target voxels interpolated at a time (each costs C x 4 bytes of device memory).
    """
    import torch.nn.functional as F

    for start in range(0, logits.shape[1], SLAB):
        logits[:, start : start + SLAB] = torch.softmax(logits[:, start : start + SLAB].float(), dim=0)
    probabilities = logits.float()[None]  # (1, C, X, Y, Z); X, Y, Z are grid_sample's D, H, W
    device = logits.device
    mapping = torch.as_tensor(
        np.linalg.inv(source_affine) @ target_affine, dtype=torch.float64, device=device
    )
    # Source voxel index -> grid_sample's normalised coordinate (align_corners=True), in (W, H, D) order.
    sizes = torch.tensor(logits.shape[1:], dtype=torch.float64, device=device)
    scale = 2.0 / torch.clamp(sizes - 1, min=1)
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in target_shape[:2]]
    i, j = torch.meshgrid(*axes, indexing="ij")
    out = np.empty(target_shape, dtype=np.uint8)
    step = max(1, chunk_voxels // (target_shape[0] * target_shape[1]))
    for start in range(0, target_shape[2], step):
        k = torch.arange(start, min(start + step, target_shape[2]), dtype=torch.float64, device=device)
        ijk = torch.stack(
            [
                i[..., None].expand(-1, -1, len(k)),
                j[..., None].expand(-1, -1, len(k)),
                k.expand(*i.shape, -1),
            ],
            dim=-1,
        )
        source = ijk @ mapping[:3, :3].T + mapping[:3, 3]
        grid = (source * scale - 1.0).flip(-1).to(torch.float32)[None]
        sampled = F.grid_sample(
            probabilities, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]
        sampled[0] += 1.0 - sampled.sum(dim=0)
        out[:, :, start : start + len(k)] = torch.argmax(sampled, dim=0).to(torch.uint8).cpu().numpy()
    return out
