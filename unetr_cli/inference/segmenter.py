"""Sliding-window segmentation at model resolution: a preprocessed volume in, class scores or labels out."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from unetr_cli.devices import autocast, autocast_dtype, exact_fp32
from unetr_cli.errors import UnetrError
from unetr_cli.model import for_inference
from unetr_cli.settings import Settings


class Segmenter:
    """A model plus the sliding-window settings: preprocessed image in, label map at model resolution out."""

    def __init__(self, model: torch.nn.Module, settings: Settings, device: torch.device):
        """Tunes `model` for inference in place (`model.for_inference`, channels_last_3d where fastest)."""
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
        self.agreement: dict[int, float] | None = None  # of the last TTA prediction, per class present
        self._beside: threading.Thread | None = None  # work the next windows wait for (`run_beside`)

    def run_beside(self, task: Callable[[], None]) -> None:
        """Run `task` in a helper thread; the next windows wait until it has finished."""
        self._beside = threading.Thread(target=task, name="unetr-beside", daemon=True)
        self._beside.start()

    @torch.no_grad()
    def blank_windows(self) -> None:
        """One batch of blank windows through the model, as the real windows go (a warm-up)."""
        size, channels = self.settings.model.img_size, self.settings.model.in_channels
        with exact_fp32(self.device, self.dtype), autocast(self.device, self.dtype):
            self._forward(torch.zeros(self.sw_batch_size, channels, size, size, size, device=self.device))

    def take_agreement(self) -> dict[int, float] | None:
        """The last TTA prediction's per-class agreement (`flip_agreement`), cleared for the next scan."""
        agreement, self.agreement = self.agreement, None
        return agreement

    @torch.no_grad()
    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Class scores (1, C, X, Y, Z) for a (1, 1, X, Y, Z) image, averaged over flips with TTA."""
        flips = _tta_flips() if self.settings.inference.tta else [()]
        total, flip_labels = None, []
        for dims in flips:
            view = torch.flip(image, dims) if dims else image
            out = self._sliding_window(view)
            out = torch.flip(out, dims) if dims else out
            if len(flips) > 1:
                flip_labels.append(torch.argmax(out[0], dim=0).to(torch.uint8))
            total = out if total is None else total.add_(out)
        if not bool(torch.isfinite(total).all()):  # never a background map made of NaN scores
            raise UnetrError(
                "the model's output holds NaN or infinite values: its weights or this input are broken "
                "(with AMP, try --no-amp)"
            )
        if flip_labels:
            self.agreement = flip_agreement(flip_labels, torch.argmax(total[0], dim=0), total.shape[1])
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
                    self.note(f"GPU out of memory: retrying with --sw-batch-size {self.sw_batch_size}")
                elif not self.aggregate_on_cpu:
                    self.aggregate_on_cpu = True
                    self.note("GPU out of memory: aggregating windows in CPU memory")
                else:
                    raise

    def _run_windows(self, image: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        if self._beside is not None:
            self._beside.join()
        inference = self.settings.inference
        output_device = torch.device("cpu") if self.aggregate_on_cpu else self.device
        with exact_fp32(self.device, self.dtype), autocast(self.device, self.dtype):
            return sliding_window_inference(
                inputs=image.to(self.device),
                roi_size=(self.settings.model.img_size,) * 3,
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

    def note(self, message: str) -> None:
        """Remember a fallback to report once (the batch prints and clears the notes after each scan)."""
        if message not in self.notes:
            self.notes.append(message)


def flip_agreement(
    flip_labels: list[torch.Tensor], labels: torch.Tensor, num_classes: int
) -> dict[int, float]:
    """Per class present in `labels`: the mean over flips of the Dice between that flip's own label map and
    the averaged one (1.0: every flip agrees)."""
    scores = torch.zeros(num_classes, dtype=torch.float64)
    reference = labels.to(torch.int64).ravel() * num_classes
    for flipped in flip_labels:
        joint = torch.bincount(reference + flipped.ravel(), minlength=num_classes * num_classes)
        confusion = joint.reshape(num_classes, num_classes).cpu().to(torch.float64)
        scores += 2 * confusion.diag() / (confusion.sum(0) + confusion.sum(1)).clamp(min=1)
    present = torch.bincount(labels.ravel().to(torch.int64), minlength=num_classes).cpu() > 0
    return {k: float(scores[k] / len(flip_labels)) for k in range(1, num_classes) if present[k]}


def _tta_flips() -> list[tuple[int, ...]]:
    """The 8 combinations of flipping the three spatial axes of a (B, C, X, Y, Z) tensor."""
    axes = (2, 3, 4)
    return [tuple(a for bit, a in enumerate(axes) if mask >> bit & 1) for mask in range(8)]
