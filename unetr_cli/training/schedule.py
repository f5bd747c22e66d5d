"""Learning-rate schedules as pure functions of the training position (in epochs, fractional).

The reference steps its schedulers once per epoch; we evaluate the same curves at every optimiser step
(`epoch = step / steps_per_epoch`), which matches the reference at epoch boundaries and avoids a whole epoch
at learning rate 0 at the start of warmup.
"""

from __future__ import annotations

import math


def warmup_cosine(epoch: float, base_lr: float, warmup_epochs: int, max_epochs: int) -> float:
    """Linear warmup from 0 to `base_lr` over `warmup_epochs`, then cosine decay to 0 at `max_epochs`."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    span = max(max_epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def cosine_anneal(epoch: float, base_lr: float, max_epochs: int) -> float:
    """Cosine decay from `base_lr` to 0 at `max_epochs` (PyTorch's CosineAnnealingLR with eta_min 0)."""
    progress = min(max(epoch / max_epochs, 0.0), 1.0)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def learning_rate(schedule: str, epoch: float, base_lr: float, warmup_epochs: int, max_epochs: int) -> float:
    """The learning rate of `schedule` (warmup_cosine, cosine_anneal or constant) at `epoch`."""
    if schedule == "warmup_cosine":
        return warmup_cosine(epoch, base_lr, warmup_epochs, max_epochs)
    if schedule == "cosine_anneal":
        return cosine_anneal(epoch, base_lr, max_epochs)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown lrschedule {schedule!r}")


def step_position(step: int, steps_per_epoch: int) -> float:
    """Training position in epochs of optimiser step `step` (0-based), taken at the end of the step."""
    return (step + 1) / steps_per_epoch
