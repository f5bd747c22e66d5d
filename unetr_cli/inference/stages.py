"""Seconds per stage of one scan's prediction, for the `predicted` events of `--json` and the benchmarks."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class StageTimes(dict):
    """Stage name to seconds. On a GPU a stage ends when its queued work has finished, so the seconds are the
    stage's own and not the next one's."""

    def __init__(self, device: torch.device | None = None):
        super().__init__()
        self.device = device

    @contextmanager
    def stage(self, name: str):
        """Add the seconds the block takes to `name` (a block that raises is not counted)."""
        started = time.perf_counter()
        yield
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self[name] = self.get(name, 0.0) + time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.items()}
