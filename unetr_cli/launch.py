"""Start a training run: resolve its folder and settings, then train in this process or relaunch the command
through torchrun, one worker per process, with the resolved settings written to a file they all read."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from unetr_cli import distributed
from unetr_cli.console import Reporter
from unetr_cli.engine import fit
from unetr_cli.errors import UsageError
from unetr_cli.rundir import LATEST, resolve_run_dir
from unetr_cli.settings import input_space, settings_from_cli


@dataclass
class Launch:
    """How many processes to start through torchrun, and where (nothing to start when all are unset)."""

    nproc_per_node: int | None = None
    distributed: bool = False
    nnodes: str | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    max_restarts: int | None = None

    def processes(self) -> int | None:
        if self.distributed and self.nproc_per_node is None:
            if not torch.cuda.device_count():
                raise UsageError("--distributed: no GPU is visible; use --nproc-per-node N for CPU processes")
            return torch.cuda.device_count()
        return self.nproc_per_node


def run_training(
    command_name, logdir, config, preset, assignments, flags, options, mode, launch, worker_flags=()
) -> None:
    """Resolve the run folder and settings (a resumed run starts from its own), then train here or relaunch
    through torchrun with the resolved settings."""
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    processes = launch.processes()
    if under_torchrun and processes:
        raise UsageError("already running under torchrun: drop --nproc-per-node/--distributed")
    if under_torchrun and logdir is None:
        logdir = Path("runs") / distributed.shared_run_name()
    if under_torchrun and distributed.restart_count() > 0:  # torchrun restarted the group after a failure
        options.resume = (Path(logdir) / LATEST).is_file()
        options.overwrite = not options.resume
    run = resolve_run_dir(logdir, options.resume)
    if options.resume:
        base = run.read_settings()
    elif options.init_weights is not None and options.init_weights.settings:
        base = input_space(options.init_weights.settings)
    else:
        base = None
    settings = settings_from_cli(config, preset, assignments, base=base, runtime__logdir=run.path, **flags)
    reporter = Reporter(mode)
    if processes:
        mode_flags = {"quiet": ["-q"], "json": ["--json"]}.get(mode, [])
        run_flags = [
            flag for flag, on in (("--resume", options.resume), ("--overwrite", options.overwrite)) if on
        ]
        if options.stop_after_epochs:
            run_flags += ["--stop-after", str(options.stop_after_epochs)]
        with tempfile.TemporaryDirectory() as folder:
            config_file = distributed.write_worker_settings(settings.to_dict(), Path(folder))
            distributed.launch(
                [
                    command_name,
                    *worker_flags,
                    "--config",
                    str(config_file),
                    "--logdir",
                    str(run.path),
                    *run_flags,
                    *mode_flags,
                ],
                processes,
                launch.nnodes or "1",
                launch.node_rank or 0,
                launch.rdzv_endpoint,
                launch.max_restarts or 0,
            )
        return  # rank 0 of the workers has reported the run
    result = fit(settings, run, reporter, options)
    reporter.result(f"run folder: {result.run_dir}  (best mean Dice {result.best_dice:.4f})")
