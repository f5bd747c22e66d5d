"""The run directory: resolved settings, metrics log, TensorBoard events, progress plot, checkpoints."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from unetr_cli.errors import OutputExistsError, UnetrError, UsageError
from unetr_cli.files import atomic_output, remove_stale_temporaries, write_text

LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"
SETTINGS_FILE, METRICS_FILE, PLOT_FILE, TB_DIR = (
    "settings.json",
    "metrics.jsonl",
    "progress.png",
    "tensorboard",
)
RUN_FILES = (LATEST, BEST, FINAL, SETTINGS_FILE, METRICS_FILE, PLOT_FILE)
LOCK_FILE = ".lock"


def default_logdir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def holds_run(path: Path) -> bool:
    """A run worth keeping: a checkpoint, or metrics of trained epochs (a run without checkpoints). A
    settings.json alone is what a start that failed left behind: not a run."""
    if not path.is_dir():
        return False
    metrics = path / METRICS_FILE
    return any((path / name).exists() for name in (LATEST, BEST, FINAL)) or (
        metrics.is_file() and metrics.stat().st_size > 0
    )


class RunDir:
    """One training run's folder. Only the main process creates or writes anything in it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def checkpoint(self, name: str) -> Path:
        return self.path / name

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Refuse to train into a folder that holds a run unless resuming it or told to overwrite it; nothing
        is deleted here (that waits until the new run's data have passed their checks: `start_fresh`)."""
        if resume:
            if not (self.path / LATEST).is_file():
                raise UsageError(f"{self.path}: no {LATEST} to resume from; start the run without --resume")
            return
        if holds_run(self.path) and not overwrite:
            raise OutputExistsError(
                self.path, "it holds a run; pass --resume to continue it or --overwrite to start over"
            )

    def start_fresh(self) -> None:
        """Remove what an earlier run (or a failed start) left, for a new run in this folder."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TB_DIR, ignore_errors=True)
        remove_stale_temporaries(self.path)

    def lock(self):
        """Hold the run folder for this process (an open file with an exclusive lock, released when it is
        closed or the process ends): two processes training into one folder would interleave epochs."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UnetrError(
                f"{self.path}: is in use by another unetr process; wait for it to finish"
            ) from None
        return handle

    def write_settings(self, settings: dict[str, Any]) -> None:
        write_text(self.path / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")

    def read_settings(self) -> dict[str, Any]:
        """The run's settings: settings.json, or the copy inside checkpoint_latest if that file is damaged."""
        try:
            return json.loads((self.path / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            from unetr_cli.checkpoint import safe_load

            if not (self.path / LATEST).is_file():
                raise UsageError(
                    f"{self.path / SETTINGS_FILE}: missing or damaged, and no {LATEST}"
                ) from None
            return safe_load(self.path / LATEST)["settings"]

    def log_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line torn by a kill; resume rewrites the log without it
                continue
        return records

    def truncate_metrics(self, after_epoch: int) -> None:
        """Drop records past `after_epoch` (a resumed run redoes those epochs)."""
        kept = [r for r in self.metrics() if r["epoch"] <= after_epoch]
        write_text(self.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))

    def plot_progress(self) -> Path:
        """Redraw progress.png: training loss, learning rate and validation Dice per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.metrics()
        epochs = [r["epoch"] for r in records]
        validated = [r for r in records if r.get("mean_dice") is not None and not math.isnan(r["mean_dice"])]
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(epochs, [r["loss"] for r in records], color="tab:blue")
        axes[0].set(title="training loss", xlabel="epoch")
        axes[1].plot(epochs, [r["lr"] for r in records], color="tab:orange")
        axes[1].set(title="learning rate", xlabel="epoch")
        axes[2].plot(
            [r["epoch"] for r in validated], [r["mean_dice"] for r in validated], "o-", color="tab:green"
        )
        axes[2].set(title="validation mean organ Dice", xlabel="epoch", ylim=(0, 1))
        for axis in axes:
            axis.grid(alpha=0.3)
        figure.tight_layout()
        with atomic_output(self.path / PLOT_FILE) as tmp:
            figure.savefig(tmp, dpi=90)
        plt.close(figure)
        return self.path / PLOT_FILE


def resolve_run_dir(logdir: Path | None, resume: bool) -> RunDir:
    """The run folder: `logdir`, else for --resume the run under runs/ saved most recently (by the time of its
    checkpoint_latest, not its name: `torchrun-*` and timestamped names do not sort by age), else a new
    runs/<timestamp>."""
    if logdir is not None:
        return RunDir(logdir)
    if not resume:
        return RunDir(default_logdir())
    latest = (
        [p / LATEST for p in Path("runs").glob("*") if (p / LATEST).is_file()]
        if Path("runs").is_dir()
        else []
    )
    if not latest:
        raise UsageError("--resume: no run with a checkpoint under runs/; name one with --logdir")
    return RunDir(max(latest, key=lambda path: path.stat().st_mtime_ns).parent)
