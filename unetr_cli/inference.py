"""Sliding-window segmentation and mapping label maps back to a scan's own voxel grid.

`Segmenter` turns a preprocessed volume into a label map at model resolution (the argmax happens once, there);
`resample_labels` carries that label map to any other grid through the two affines, which undoes the crop,
the resampling and the reorientation in one step and works for oblique scans too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetr_cli.errors import UsageError
from unetr_cli.model import for_inference
from unetr_cli.settings import Settings


def resolve_device(name: str) -> torch.device:
    """`auto` is the first GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast is ~3x faster."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for `device`: bf16 on GPUs that support it, else fp16; bf16 on capable CPUs."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """`torch.autocast` for `dtype`, or a no-op context when it is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Segmenter:
    """A model plus the sliding-window settings: preprocessed image in, label map at model resolution out."""

    def __init__(
        self, model: torch.nn.Module, settings: Settings, device: torch.device, tune_model: bool = True
    ):
        """`tune_model=False` uses the model as it is (training validation: its weights must keep their
        layout for the optimiser and DDP)."""
        inference = settings.inference
        self.settings = settings
        self.device = device
        self.dtype = autocast_dtype(device, inference.amp)
        # Defaults from benchmarks/bench_options.py: one window at a time and channels_last_3d with bf16 are
        # fastest on CPU; GPUs want batches.
        self.sw_batch_size = inference.sw_batch_size or (4 if device.type == "cuda" else 1)
        channels_last = inference.channels_last
        if channels_last is None:
            channels_last = device.type == "cpu" and self.dtype == torch.bfloat16
        self.channels_last = bool(channels_last)
        self.model = for_inference(model).to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.aggregate_on_cpu = False
        self.notes: list[str] = []

    @torch.no_grad()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Class scores (1, C, X, Y, Z) for a (1, 1, X, Y, Z) image, averaged over flips with TTA."""
        flips = _tta_flips() if self.settings.inference.tta else [()]
        total = None
        for dims in flips:
            view = torch.flip(image, dims) if dims else image
            out = self._sliding_window(view)
            out = torch.flip(out, dims) if dims else out
            total = out if total is None else total.add_(out)
        return total / len(flips) if len(flips) > 1 else total

    @torch.no_grad()
    def labels(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 label map (X, Y, Z) for a (1, 1, X, Y, Z) or (1, X, Y, Z) preprocessed image."""
        if image.ndim == 4:
            image = image[None]
        return torch.argmax(self.logits(image)[0], dim=0).to(torch.uint8).cpu()

    def _sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        """One sliding-window pass; on GPU out-of-memory retry with smaller batches, then aggregate on CPU."""
        while True:
            try:
                return self._run_windows(image)
            except torch.OutOfMemoryError:
                if self.device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                if self.sw_batch_size > 1:
                    self.sw_batch_size //= 2
                    self._note(f"GPU out of memory: retrying with --sw-batch-size {self.sw_batch_size}")
                elif not self.aggregate_on_cpu:
                    self.aggregate_on_cpu = True
                    self._note("GPU out of memory: aggregating windows in CPU memory")
                else:
                    raise

    def _run_windows(self, image: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        inference = self.settings.inference
        output_device = torch.device("cpu") if self.aggregate_on_cpu else self.device
        with autocast(self.device, self.dtype):
            return sliding_window_inference(
                inputs=image.to(self.device),
                roi_size=(self.settings.roi_size,) * 3,
                sw_batch_size=self.sw_batch_size,
                predictor=self._forward,
                overlap=inference.infer_overlap,
                mode=inference.blend_mode,
                sw_device=self.device,
                device=output_device,
            )

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        # Aggregation runs in fp32 on contiguous buffers: hand it those (saves a strided copy per window).
        return self.model(windows).float().contiguous()

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)


def _tta_flips() -> list[tuple[int, ...]]:
    """The 8 combinations of flipping the three spatial axes of a (B, C, X, Y, Z) tensor."""
    axes = (2, 3, 4)
    return [tuple(a for bit, a in enumerate(axes) if mask >> bit & 1) for mask in range(8)]


# --- back to the scan's grid ------------------------------------------------------------------------------


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


_SLAB = 16  # source slices (first axis) converted at a time
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
            for start in range(0, labels.shape[0], _SLAB):
                block = np.asarray(probabilities[:, start : start + _SLAB])
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


# --- one scan, end to end ---------------------------------------------------------------------------------


@dataclass
class ScanPrediction:
    """A label map on the scan's own grid, with the scan it belongs to."""

    labels: np.ndarray
    image: np.ndarray
    nifti: object
    path: Path


def preprocess_scan(image: np.ndarray, affine: np.ndarray, settings: Settings):
    """Validation preprocessing of an in-memory scan: returns the model-grid MetaTensor (1, X, Y, Z)."""
    from monai import transforms as T
    from monai.data import MetaTensor

    from unetr_cli.data import to_model_space

    tensor = MetaTensor(  # in its stored dtype: reorientation copies it, resampling makes it float32
        torch.from_numpy(np.ascontiguousarray(image))[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )
    return T.Compose(to_model_space(settings, keys=("image",)))({"image": tensor})["image"]


def class_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax over the class axis of (C, X, Y, Z) scores as float16, a slab at a time (no full-size fp32
    temporary besides the scores themselves)."""
    probabilities = np.empty(tuple(logits.shape), dtype=np.float16)
    for start in range(0, logits.shape[1], _SLAB):
        block = torch.softmax(logits[:, start : start + _SLAB].float(), dim=0)
        probabilities[:, start : start + _SLAB] = block.to(torch.float16).numpy()
    return probabilities


def predict_scan(path: str | Path, segmenter: Segmenter) -> ScanPrediction:
    """Segment one scan file and return the label map on the scan's own grid (shape and affine)."""
    from unetr_cli.volumes import load_volume, read_info

    nifti, _ = read_info(path)
    image, info = load_volume(path)
    model_input = preprocess_scan(image, info.affine, segmenter.settings)
    model_affine = model_input.affine.numpy().astype(np.float64)
    logits = segmenter.logits(model_input.as_tensor()[None])[0]
    del model_input
    labels = torch.argmax(logits, dim=0).to(torch.uint8).numpy()
    probabilities = None
    if segmenter.settings.inference.resample == "probabilities":
        probabilities = class_probabilities(logits)
    del logits
    native = resample_labels(labels, model_affine, info.shape, info.affine, probabilities)
    return ScanPrediction(native, image, nifti, Path(path))
