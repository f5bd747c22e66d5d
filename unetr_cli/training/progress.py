"""What training shows and logs: progress bars, the start announcement, validation tables, TensorBoard."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from unetr_cli.console import Reporter
from unetr_cli.devices import precision_name
from unetr_cli.settings import Settings
from unetr_cli.training.state import LoopState

STATUS_EVERY_S = 0.5


class Bars:
    """The epochs and steps progress bars (nothing where the reporter shows no progress)."""

    def __init__(self, reporter: Reporter, max_epochs: int, epochs_done: int, steps_per_epoch: int):
        self._context = reporter.progress()
        self._totals = (max_epochs, epochs_done, steps_per_epoch)
        self._progress = None
        self._status_at = -float("inf")

    def __enter__(self) -> Bars:
        self._progress = self._context.__enter__()
        if self._progress is not None:
            max_epochs, epochs_done, steps = self._totals
            self.epochs = self._progress.add_task(
                "epochs", total=max_epochs, completed=epochs_done, status=""
            )
            self.steps = self._progress.add_task("steps", total=steps, status="")
        return self

    def __exit__(self, *exc) -> bool:
        return bool(self._context.__exit__(*exc))

    def start_epoch(self, steps: int) -> None:
        if self._progress is not None:
            self._progress.reset(self.steps, total=steps)

    def step(self, status: Callable[[], str]) -> None:
        """Advance the steps bar; `status` (which reads the loss, a host sync) is refreshed at most twice a
        second, so showing progress does not stall the GPU at every step."""
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S:
            self._status_at = now
            self._progress.update(self.steps, advance=1, status=status())
        else:
            self._progress.update(self.steps, advance=1)

    def end_epoch(self, epochs_done: int, status: str) -> None:
        if self._progress is not None:
            self._progress.update(self.epochs, completed=epochs_done, status=status)


def check_data(cases: list[dict], settings: Settings, reporter: Reporter) -> None:
    """Every case checked before training starts, with a progress bar."""
    from unetr_cli.data import check_cases

    with reporter.progress() as bars:
        task = bars.add_task("checking data", total=len(cases), status="") if bars else None
        check_cases(
            cases,
            settings.model.out_channels,
            settings.data.spacing,
            progress=(lambda done: bars.update(task, completed=done)) if bars else None,
        )


def announce(
    reporter: Reporter,
    settings: Settings,
    *,
    volumes: tuple[int, int],
    steps: int,
    world_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    lr: float,
    start_epoch: int,
    data: str,
    backend: str | None,
) -> None:
    """What the run is about to do: data, processes, precision, effective batch, learning rate."""
    opt = settings.optimisation
    scaled = f" = {opt.lr:g} x {world_size} processes (--scale-lr)" if lr != opt.lr else ""
    crops = opt.batch_size * settings.data.num_samples
    precision = precision_name(amp_dtype)
    reporter.info(
        f"[bold]unetr train[/]: {volumes[0]} training / {volumes[1]} validation volumes, {steps} steps per "
        f"epoch, {world_size} process(es) on {device}, {precision}",
        markup=True,
    )
    reporter.info(
        f"effective batch {crops * world_size} crops of {settings.model.img_size}^3 "
        f"({opt.batch_size} volume(s) x {settings.data.num_samples} crops x {world_size} process(es)), "
        f"lr {lr:g}{scaled} ({opt.lrschedule}), epochs {start_epoch}..{opt.max_epochs}"
    )
    reporter.info(f"data: {data}")
    reporter.event(
        "start",
        train_volumes=volumes[0],
        val_volumes=volumes[1],
        steps_per_epoch=steps,
        world_size=world_size,
        device=str(device),
        precision=precision,
        effective_batch=crops * world_size,
        lr=lr,
        start_epoch=start_epoch,
        data=data,
        backend=backend,
    )


def report_validation(reporter: Reporter, record: dict, state: LoopState) -> None:
    from rich.table import Table

    table = Table(title=f"validation after epoch {record['epoch']}", title_justify="left")
    table.add_column("organ")
    table.add_column("Dice", justify="right")
    for organ, dice in record["dice"].items():
        table.add_row(organ, "n/a" if dice is None else f"{dice:.3f}")
    table.add_row("[bold]mean[/]", f"[bold]{record['mean_dice']:.3f}[/]")
    reporter.table(table)
    reporter.info(f"best mean Dice {state.best_dice:.4f} at epoch {state.best_epoch}")
    reporter.event("validation", epoch=record["epoch"], mean_dice=record["mean_dice"], dice=record["dice"])


def tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(path))


def log_tensorboard(writer, record: dict) -> None:
    writer.add_scalar("train/loss", record["loss"], record["epoch"])
    writer.add_scalar("train/lr", record["lr"], record["epoch"])
    if "mean_dice" in record:
        writer.add_scalar("val/mean_dice", record["mean_dice"], record["epoch"])
        for organ, dice in record["dice"].items():
            if dice is not None:
                writer.add_scalar(f"val_dice/{organ}", dice, record["epoch"])
    writer.flush()
