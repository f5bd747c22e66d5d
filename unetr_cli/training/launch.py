"""Start a training run: resolve its folder and settings once, then train in this process or hand one job
description to torchrun workers (`python -m unetr_cli.training.worker JOB.json`), one per process."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetr_cli import distributed
from unetr_cli.checkpoint import LoadedWeights, read_weights
from unetr_cli.console import Reporter
from unetr_cli.devices import requested_device
from unetr_cli.distributed import Launch
from unetr_cli.errors import UsageError
from unetr_cli.files import write_text
from unetr_cli.settings import Settings
from unetr_cli.training.engine import Finetuning, RunOptions, fit
from unetr_cli.training.rundir import LATEST, RunDir


@dataclass(frozen=True)
class FinetuneFrom:
    """Where `unetr finetune` starts: a weights file (none when a fine-tuning run resumes from its own
    checkpoint), and how to use it."""

    path: Path | None
    trust_torchscript: bool = False
    reinit_head: bool = False
    freeze_encoder: bool = False

    def read(self) -> LoadedWeights | None:
        return read_weights(self.path, self.trust_torchscript) if self.path is not None else None


@dataclass(frozen=True)
class TrainingJob:
    """Everything a training process needs, resolved once by the command that started it."""

    settings: Settings
    run_dir: Path
    options: RunOptions
    output_mode: str = "rich"
    finetune: FinetuneFrom | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "settings": self.settings.to_dict(),
                "run_dir": str(self.run_dir),
                "options": dataclasses.asdict(self.options),
                "output_mode": self.output_mode,
                "finetune": _plain(dataclasses.asdict(self.finetune)) if self.finetune else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        values: dict[str, Any] = json.loads(text)
        finetune = values["finetune"]
        return cls(
            settings=Settings.from_dict(values["settings"]),
            run_dir=Path(values["run_dir"]),
            options=RunOptions(**values["options"]),
            output_mode=values["output_mode"],
            finetune=FinetuneFrom(**{**finetune, "path": finetune["path"] and Path(finetune["path"])})
            if finetune
            else None,
        )


def start_training(
    settings: Settings,
    run: RunDir,
    options: RunOptions,
    output_mode: str,
    launch: Launch,
    finetune: FinetuneFrom | None = None,
    weights: LoadedWeights | None = None,
) -> None:
    """Train here with `settings` (resolved by the command), or relaunch through torchrun, one process per
    GPU; `weights` are the fine-tuning weights when already read."""
    processes = launch.processes(requested_device(settings.inference.device))
    if "TORCHELASTIC_RUN_ID" in os.environ and processes:
        raise UsageError("already running under torchrun: drop --nproc-per-node/--distributed")
    job = TrainingJob(settings, run.path, options, output_mode, finetune)
    if not processes:
        run_job(job, weights)
        return
    del weights  # each worker reads the weights itself; the launcher only waits
    with tempfile.TemporaryDirectory(prefix="unetr-job-") as folder:
        job_file = write_text(Path(folder) / "job.json", job.to_json())
        launch.start("unetr_cli.training.worker", [str(job_file)], processes, job="training")


def run_job(job: TrainingJob, weights: LoadedWeights | None = None) -> None:
    """Train this process's part of `job` (all of it outside torchrun); `weights` if already read."""
    settings, options, run = job.settings, job.options, RunDir(job.run_dir)
    if distributed.restart_count() > 0:  # torchrun restarted the group after a failure: continue the run
        resume = (run.path / LATEST).is_file()
        options = dataclasses.replace(options, resume=resume, overwrite=not resume)
        if resume:
            settings = Settings.from_dict(run.read_settings())  # with the seed the first attempt drew
    finetuning = None
    if job.finetune is not None:
        finetune = job.finetune
        finetuning = Finetuning(weights or finetune.read(), finetune.reinit_head, finetune.freeze_encoder)
    reporter = Reporter(job.output_mode)
    result = fit(settings, run, reporter, options, finetuning)
    reporter.result(f"run folder: {result.run_dir}  (best mean Dice {result.best_dice:.4f})")


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
