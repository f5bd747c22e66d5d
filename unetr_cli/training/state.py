"""What a training checkpoint holds (weights, optimiser, AMP scaler, loop state, every RNG, settings,
versions) and how it is saved and restored, so a resumed run continues exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from unetr_cli import distributed
from unetr_cli.checkpoint import CHECKPOINT_FORMAT, atomic_save, safe_load
from unetr_cli.errors import UsageError
from unetr_cli.labels import label_names
from unetr_cli.model import unwrap
from unetr_cli.settings import Settings
from unetr_cli.training.rundir import RunDir

SAVED_FIELDS = ("epoch", "step", "best_dice", "best_epoch")


@dataclass
class LoopState:
    """Where training stands: completed epochs, optimiser steps, the best validation so far."""

    epoch: int = 0
    step: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    epoch_start_step: int = field(default=0, repr=False)  # not saved: a resumed run starts at an epoch

    def __post_init__(self) -> None:
        self.epoch_start_step = self.step

    def end_epoch(self) -> None:
        self.epoch += 1
        self.epoch_start_step = self.step

    def rewind_epoch(self) -> None:
        """Forget the steps of an unfinished epoch (its weights stay; a resumed run redoes the epoch)."""
        self.step = self.epoch_start_step

    def saved(self) -> dict:
        return {name: getattr(self, name) for name in SAVED_FIELDS}


def save_training_state(
    path: Path, model, optimizer, scaler, state: LoopState, settings: Settings, sync: bool = True
) -> None:
    """Main process only, between barriers (`sync`): a plain dict `torch.load(weights_only=True)` accepts."""
    if not settings.runtime.save_checkpoint:
        return
    if sync:
        distributed.barrier()
    if distributed.is_main():
        from unetr_cli import __version__

        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                **state.saved(),
                "settings": settings.to_dict(),
                "labels": label_names(settings.model.out_channels),
                "versions": {
                    "unetr": __version__,
                    "torch": str(torch.__version__),
                    "monai": _monai_version(),
                },
            },
            path,
        )
    if sync:
        distributed.barrier()


def check_resumable(run: RunDir, settings: Settings) -> None:
    """Refuse to resume a run with another architecture, naming every differing field."""
    stored = Settings.from_dict(run.read_settings()).model
    differing = [
        f"{k} {getattr(settings.model, k)} (run: {v})"
        for k, v in stored.model_dump().items()
        if getattr(settings.model, k) != v
    ]
    if differing:
        raise UsageError(f"{run.path}: cannot resume with different model settings: {', '.join(differing)}")


def restore_training_state(path: Path, model, optimizer, scaler) -> LoopState:
    """Load checkpoint_latest into the model, optimiser and scaler; returns the loop state."""
    checkpoint = safe_load(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])  # no random state: every epoch reseeds from (seed, epoch)
    return LoopState(**{name: checkpoint[name] for name in SAVED_FIELDS})


def _monai_version() -> str:
    import monai

    return monai.__version__
