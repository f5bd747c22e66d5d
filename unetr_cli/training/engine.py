"""Training: one readable loop, like a torchtune recipe. Set up, then per epoch: train, validate and
checkpoint, log; finish.

The learning rate is a pure function of the optimiser step (`schedule.py`); the data order and the random
augmentations are reseeded from (seed, epoch, rank) at every epoch, so a run resumed from
`checkpoint_latest` continues exactly as if it had never stopped. Distributed concerns stay in
`distributed.py`: this module only asks `is_main()` and all-reduces sums.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unetr_cli import distributed
from unetr_cli.checkpoint import LoadedWeights
from unetr_cli.console import Reporter
from unetr_cli.devices import autocast, autocast_dtype, grad_scaler, precision_name, resolve_device
from unetr_cli.errors import Interrupted, TrainingError
from unetr_cli.inference.segmenter import Segmenter
from unetr_cli.labels import label_names
from unetr_cli.metrics import DiceAccumulator
from unetr_cli.model import build_model, load_state
from unetr_cli.settings import Settings
from unetr_cli.training.rundir import BEST, FINAL, LATEST, TB_DIR, RunDir
from unetr_cli.training.schedule import learning_rate, step_position
from unetr_cli.training.state import LoopState, check_resumable, restore_training_state, save_training_state


@dataclass
class RunOptions:
    """How this invocation runs (not hyperparameters, so not settings)."""

    resume: bool = False
    overwrite: bool = False
    stop_after_epochs: int | None = None
    time_budget_s: float | None = None


@dataclass
class Finetuning:
    """Where `unetr finetune` starts: weights read from a file, and how to use them."""

    weights: LoadedWeights
    reinit_head: bool = False
    freeze_encoder: bool = False


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    best_dice: float
    last_dice: float
    history: list[dict] = field(default_factory=list)


@dataclass
class _Training:
    """Everything the loop works with, built once by `_set_up`."""

    settings: Settings
    run: RunDir
    reporter: Reporter
    options: RunOptions
    env: distributed.DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module  # the plain model: what checkpoints hold
    trained: torch.nn.Module  # the model the steps run (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    base_lr: float
    train_set: object
    loader: object
    val_set: object | None
    state: LoopState
    writer: object | None

    def save(self, name: str, sync: bool = True) -> None:
        save_training_state(
            self.run.checkpoint(name),
            self.model,
            self.optimizer,
            self.scaler,
            self.state,
            self.settings,
            sync,
        )


def fit(
    settings: Settings,
    run: RunDir,
    reporter: Reporter,
    options: RunOptions | None = None,
    finetuning: Finetuning | None = None,
) -> FitResult:
    """Train UNETR with `settings`, writing everything into `run`."""
    training = _set_up(settings, run, reporter, options or RunOptions(), finetuning)
    state, max_epochs = training.state, training.settings.optimisation.max_epochs
    first_epoch, started, last_dice = state.epoch, time.monotonic(), math.nan
    try:
        with _stop_on_signals(distributed.is_main()) as stop, _Bars(reporter, training) as bars:
            for epoch in range(first_epoch, max_epochs):
                record = _train_one_epoch(training, epoch, bars, stop)
                last_epoch = _last_epoch_of_run(epoch, max_epochs, first_epoch, training.options, started)
                if training.val_set is not None and (
                    (epoch + 1) % training.settings.optimisation.val_every == 0 or last_epoch
                ):
                    last_dice = _validate_and_checkpoint(training, record)
                _log_epoch(training, record, bars)
                if last_epoch:
                    break
    except (KeyboardInterrupt, _Stop) as stopped:
        _save_interrupted(training, stopped)
    finally:
        if training.writer is not None:
            training.writer.close()
    return _finish(training, last_dice)


# --- setup ------------------------------------------------------------------------------------------------


def _set_up(
    settings: Settings, run: RunDir, reporter: Reporter, options: RunOptions, finetuning: Finetuning | None
) -> _Training:
    """Process group, run folder, data, model, optimiser and AMP scaler; the loop state of a resumed run."""
    from unetr_cli.data import read_datalist, shard, training_dataset, training_loader, validation_dataset

    device = resolve_device(settings.inference.device)
    env = distributed.init(device, settings.runtime.dist_timeout_s)
    if env.is_distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    if settings.runtime.seed is None:  # still reproducible on resume: the drawn seed is saved with the run
        seed = int(distributed.broadcast_object(random.SystemRandom().randrange(2**31)))
        settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(update={"seed": seed})})
    datalist = read_datalist(settings.data.data_dir, settings.data.json_list, settings.data.fold)

    def prepare_run() -> None:
        run.prepare(options.resume, options.overwrite)
        if options.resume:
            check_resumable(run, settings)
        _check_data(datalist.training + datalist.validation, settings, reporter)
        run.write_settings(settings.to_dict())

    distributed.on_main(prepare_run)
    torch.manual_seed(settings.runtime.seed)
    model = build_model(settings.model)
    if finetuning is not None:
        weights = finetuning.weights
        load_state(model, weights.state_dict, reinit_head=finetuning.reinit_head, origin=weights.source)
        if finetuning.freeze_encoder:
            for parameter in model.vit.parameters():
                parameter.requires_grad_(False)
    model.to(device)
    opt = settings.optimisation
    amp_dtype = autocast_dtype(device, opt.amp, opt.amp_dtype)
    scaler = grad_scaler(device, amp_dtype)
    optimizer = _optimizer(model, settings)
    state = LoopState()
    if options.resume:
        state = restore_training_state(run.checkpoint(LATEST), model, optimizer, scaler)
        if distributed.is_main():
            run.truncate_metrics(state.epoch)
    trained = model
    if env.is_distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    train_set = training_dataset(datalist.training, settings)
    val_cases = shard(datalist.validation, env.rank, env.world_size)
    training = _Training(
        settings=settings,
        run=run,
        reporter=reporter,
        options=options,
        env=env,
        device=device,
        amp_dtype=amp_dtype,
        model=model,
        trained=trained,
        optimizer=optimizer,
        scaler=scaler,
        loss_fn=_loss(settings),
        base_lr=opt.lr * (env.world_size if opt.scale_lr else 1),
        train_set=train_set,
        loader=training_loader(
            train_set, settings, env.rank, env.world_size, pin_memory=device.type == "cuda"
        ),
        val_set=validation_dataset(val_cases, settings) if datalist.validation else None,
        state=state,
        writer=_tensorboard(run.path / TB_DIR) if distributed.is_main() else None,
    )
    _announce(training, len(datalist.training), len(datalist.validation))
    return training


def _optimizer(model: torch.nn.Module, settings: Settings) -> torch.optim.Optimizer:
    opt = settings.optimisation
    params = [p for p in model.parameters() if p.requires_grad]
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.optimizer == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(
        params, lr=opt.lr, momentum=opt.momentum, nesterov=True, weight_decay=opt.weight_decay
    )


def _loss(settings: Settings):
    from monai.losses import DiceCELoss

    opt = settings.optimisation
    return DiceCELoss(
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        smooth_nr=opt.loss_smooth_nr,
        smooth_dr=opt.loss_smooth_dr,
    )


# --- one epoch --------------------------------------------------------------------------------------------


def _train_one_epoch(training: _Training, epoch: int, bars: _Bars, stop: _StopRequest) -> dict:
    """Every step of `epoch`; returns the epoch's record for the metrics log."""
    state, opt, device = training.state, training.settings.optimisation, training.device
    distributed.maybe_inject_fault(epoch + 1)
    _reseed(training.settings.runtime.seed, epoch, training.env.rank, training.train_set)
    training.loader.sampler.set_epoch(epoch)
    training.trained.train()
    epoch_start, losses = time.monotonic(), []
    steps_per_epoch = len(training.loader)
    bars.start_epoch(steps_per_epoch)
    for batch in training.loader:
        lr = learning_rate(
            opt.lrschedule,
            step_position(state.step, steps_per_epoch),
            training.base_lr,
            opt.warmup_epochs,
            opt.max_epochs,
        )
        for group in training.optimizer.param_groups:
            group["lr"] = lr
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        with autocast(device, training.amp_dtype):
            logits = training.trained(image)
        loss = training.loss_fn(logits.float(), label)
        training.optimizer.zero_grad(set_to_none=True)
        training.scaler.scale(loss).backward()
        training.scaler.step(training.optimizer)
        training.scaler.update()
        losses.append(loss.item())
        state.step += 1
        bars.step(f"loss {losses[-1]:.4f}  lr {lr:.2e}")
        stop.check()
    epoch_loss = _mean_loss(losses, device)
    if not math.isfinite(epoch_loss):
        raise TrainingError(
            f"training diverged: the loss is {epoch_loss} in epoch {epoch + 1}; "
            "lower --lr or train with --no-amp"
        )
    state.end_epoch()
    return {
        "epoch": epoch + 1,
        "step": state.step,
        "loss": epoch_loss,
        "lr": lr,
        "seconds": round(time.monotonic() - epoch_start, 3),
    }


def _reseed(seed: int, epoch: int, rank: int, dataset) -> None:
    """Make this epoch's randomness a function of (seed, epoch, rank): workers, augmentations, dropout."""
    from monai.data.utils import set_rnd

    epoch_seed = (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31)
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    set_rnd(dataset, epoch_seed)


def _mean_loss(losses: list[float], device: torch.device) -> float:
    """Mean training loss of the epoch over all ranks."""
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(total)
    return float(total[0] / max(total[1], 1))


def _last_epoch_of_run(
    epoch: int, max_epochs: int, first_epoch: int, options: RunOptions, started: float
) -> bool:
    if epoch + 1 >= max_epochs:
        return True
    if options.stop_after_epochs is not None and epoch + 1 - first_epoch >= options.stop_after_epochs:
        return True
    over_budget = options.time_budget_s is not None and time.monotonic() - started >= options.time_budget_s
    return bool(distributed.broadcast_object(over_budget))


# --- validation, checkpoints, logs ------------------------------------------------------------------------


def _validate_and_checkpoint(training: _Training, record: dict) -> float:
    """Score the validation cases, keep checkpoint_best on a new best, always refresh checkpoint_latest."""
    state, settings = training.state, training.settings
    distributed.broadcast_buffers(training.model)  # validate exactly the weights rank 0 saves
    # On a copy, tuned for inference exactly as `unetr evaluate` would tune it.
    segmenter = Segmenter(copy.deepcopy(training.model), settings, training.device)
    per_organ, mean_dice = validate(segmenter, training.val_set, settings)
    names = label_names(settings.model.out_channels)
    record["mean_dice"] = mean_dice
    record["dice"] = {names[i + 1]: _round(d) for i, d in enumerate(per_organ)}
    if mean_dice > state.best_dice:
        state.best_dice, state.best_epoch = mean_dice, record["epoch"]
        training.save(BEST)
    training.save(LATEST)
    _report_validation(training.reporter, record, state)
    return mean_dice


@torch.no_grad()
def validate(segmenter: Segmenter, dataset, settings: Settings) -> tuple[np.ndarray, float]:
    """Per-organ Dice over this rank's validation cases, summed over ranks; returns (per organ, mean)."""
    accumulator = DiceAccumulator(settings.model.out_channels)
    for index in range(len(dataset)):
        case = dataset[index]
        predicted = segmenter.labels(case["image"].as_tensor()[None])
        accumulator.add(predicted, case["label"].as_tensor()[0])
    accumulator.all_reduce()
    return accumulator.per_organ(), accumulator.mean()


def _log_epoch(training: _Training, record: dict, bars: _Bars) -> None:
    if distributed.is_main():
        training.run.log_metrics(record)
        _log_tensorboard(training.writer, record)
        if "mean_dice" in record:
            training.run.plot_progress()
    training.reporter.event("epoch", **record)
    bars.end_epoch(
        record["epoch"], f"loss {record['loss']:.4f}  best Dice {max(training.state.best_dice, 0):.3f}"
    )


def _save_interrupted(training: _Training, stopped: BaseException) -> None:
    """Keep what the interrupted epoch learnt in checkpoint_latest; a resumed run redoes that epoch."""
    training.state.rewind_epoch()
    training.save(LATEST, sync=False)
    signal_number = stopped.signal_number if isinstance(stopped, _Stop) else signal.SIGINT
    latest = training.run.checkpoint(LATEST)
    raise Interrupted(
        f"interrupted: saved {latest} at epoch {training.state.epoch}; continue with "
        f"unetr train --resume --logdir {training.run.path}",
        int(signal_number),
    ) from None


def _finish(training: _Training, last_dice: float) -> FitResult:
    """Final checkpoints, a check that every rank holds the same weights, the closing report."""
    state, run = training.state, training.run
    training.save(LATEST)
    if state.epoch >= training.settings.optimisation.max_epochs:
        training.save(FINAL)
    in_sync = distributed.check_in_sync(training.model)
    if distributed.is_main():
        run.plot_progress()
    training.reporter.event(
        "finish",
        epochs=state.epoch,
        best_dice=state.best_dice,
        last_dice=last_dice,
        world_size=training.env.world_size,
        ranks_in_sync=in_sync,
    )
    distributed.shutdown()
    if not in_sync:
        raise TrainingError("the ranks ended with different weights; the run is not trustworthy")
    return FitResult(
        run.path, state.epoch, state.best_dice, last_dice, run.metrics() if distributed.is_main() else []
    )


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 5)


# --- stopping on signals ----------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the loop when a stop signal arrived, so it saves before exiting."""

    def __init__(self, signal_number: int):
        self.signal_number = signal_number
        super().__init__(signal_number)


class _StopRequest:
    """Signal handler for SIGTERM and Ctrl-C: the loop stops after the current step and saves.

    Raising from the handler itself could land inside a data transform, which would wrap it; a second Ctrl-C
    still interrupts at once.
    """

    def __init__(self):
        self.signal_number: int | None = None

    def __call__(self, signum, frame) -> None:
        if self.signal_number is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signum

    def check(self) -> None:
        if self.signal_number is not None:
            raise _Stop(self.signal_number)


@contextlib.contextmanager
def _stop_on_signals(install: bool):
    """A `_StopRequest` handling SIGTERM and SIGINT (on the main process: the others follow it)."""
    request = _StopRequest()
    previous = (
        {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)} if install else {}
    )
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- reporting --------------------------------------------------------------------------------------------


class _Bars:
    """The epochs and steps progress bars (nothing where the reporter shows no progress)."""

    def __init__(self, reporter: Reporter, training: _Training):
        self.reporter, self.training = reporter, training
        self._progress = None

    def __enter__(self) -> _Bars:
        self._context = self.reporter.progress()
        self._progress = self._context.__enter__()
        if self._progress is not None:
            max_epochs = self.training.settings.optimisation.max_epochs
            self.epochs = self._progress.add_task(
                "epochs", total=max_epochs, completed=self.training.state.epoch, status=""
            )
            self.steps = self._progress.add_task("steps", total=len(self.training.loader), status="")
        return self

    def __exit__(self, *exc) -> bool:
        return bool(self._context.__exit__(*exc))

    def start_epoch(self, steps: int) -> None:
        if self._progress is not None:
            self._progress.reset(self.steps, total=steps)

    def step(self, status: str) -> None:
        if self._progress is not None:
            self._progress.update(self.steps, advance=1, status=status)

    def end_epoch(self, epochs_done: int, status: str) -> None:
        if self._progress is not None:
            self._progress.update(self.epochs, completed=epochs_done, status=status)


def _check_data(cases: list[dict], settings: Settings, reporter: Reporter) -> None:
    from unetr_cli.data import check_cases

    with reporter.progress() as bars:
        task = bars.add_task("checking data", total=len(cases), status="") if bars else None
        check_cases(
            cases,
            settings.model.out_channels,
            progress=(lambda done: bars.update(task, completed=done)) if bars else None,
        )


def _announce(training: _Training, n_train: int, n_val: int) -> None:
    settings, env, reporter = training.settings, training.env, training.reporter
    opt, lr = settings.optimisation, training.base_lr
    scaled = f" = {opt.lr:g} x {env.world_size} processes (--scale-lr)" if lr != opt.lr else ""
    crops = opt.batch_size * settings.data.num_samples
    precision = precision_name(training.amp_dtype)
    steps = len(training.loader)
    reporter.info(
        f"[bold]unetr train[/]: {n_train} training / {n_val} validation volumes, {steps} steps per epoch, "
        f"{env.world_size} process(es) on {training.device}, {precision}",
        markup=True,
    )
    reporter.info(
        f"effective batch {crops * env.world_size} crops of {settings.model.img_size}^3 "
        f"({opt.batch_size} volume(s) x {settings.data.num_samples} crops x {env.world_size} process(es)), "
        f"lr {lr:g}{scaled} ({opt.lrschedule}), epochs {training.state.epoch}..{opt.max_epochs}"
    )
    reporter.event(
        "start",
        train_volumes=n_train,
        val_volumes=n_val,
        steps_per_epoch=steps,
        world_size=env.world_size,
        device=str(training.device),
        precision=precision,
        effective_batch=crops * env.world_size,
        lr=lr,
        start_epoch=training.state.epoch,
    )


def _report_validation(reporter: Reporter, record: dict, state: LoopState) -> None:
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


def _tensorboard(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(path))


def _log_tensorboard(writer, record: dict) -> None:
    writer.add_scalar("train/loss", record["loss"], record["epoch"])
    writer.add_scalar("train/lr", record["lr"], record["epoch"])
    if "mean_dice" in record:
        writer.add_scalar("val/mean_dice", record["mean_dice"], record["epoch"])
        for organ, dice in record["dice"].items():
            if dice is not None:
                writer.add_scalar(f"val_dice/{organ}", dice, record["epoch"])
    writer.flush()
