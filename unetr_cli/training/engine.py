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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unetr_cli import distributed
from unetr_cli.checkpoint import LoadedWeights
from unetr_cli.console import Reporter
from unetr_cli.devices import (
    autocast,
    autocast_dtype,
    exact_fp32,
    grad_scaler,
    peak_gpu_memory_bytes,
    rank_device,
    resolve_device,
)
from unetr_cli.errors import Interrupted, TrainingError
from unetr_cli.files import link_or_copy
from unetr_cli.inference.segmenter import Segmenter
from unetr_cli.labels import label_names
from unetr_cli.metrics import DiceAccumulator
from unetr_cli.model import build_model, load_state
from unetr_cli.settings import Settings
from unetr_cli.training.graphs import GraphedTraining
from unetr_cli.training.pipeline import DataWait, metadata_untracked, training_data
from unetr_cli.training.progress import (
    Bars,
    announce,
    check_data,
    log_tensorboard,
    report_validation,
    tensorboard,
)
from unetr_cli.training.recipe import loss_for, optimizer_for
from unetr_cli.training.rundir import BEST, FINAL, LATEST, TB_DIR, RunDir
from unetr_cli.training.schedule import learning_rate, step_position
from unetr_cli.training.state import LoopState, check_resumable, restore_training_state, save_training_state
from unetr_cli.training.stopping import StopRequest, StopSignal, ignoring_signals, stop_on_signals

SLOW_FACTOR = 1.5  # training projected this much longer than expected is worth a warning


@dataclass
class RunOptions:
    """How this invocation runs (not hyperparameters, so not settings)."""

    resume: bool = False
    overwrite: bool = False
    stop_after_epochs: int | None = None
    time_budget_s: float | None = None
    expected_minutes: float | None = None  # the training time the caller expects; far beyond it: a warning
    slow_hint: str = ""  # ... which ends with this advice


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
    forward: Callable[[torch.Tensor], torch.Tensor]  # what a step calls: `trained`, or it through CUDA graphs
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    base_lr: float
    train_set: object
    loader: object
    val_set: object | None
    state: LoopState
    writer: object | None

    lock: contextlib.ExitStack | None = None  # releases the run folder and precision flags when fit returns
    stop: StopRequest | None = None  # while set, a second Ctrl-C waits until a checkpoint is written
    saved_step: int | None = None  # the step checkpoint_latest holds, once this invocation saved it

    def __enter__(self) -> _Training:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.lock is not None:
            self.lock.close()

    def save(self, *names: str, sync: bool = True) -> None:
        """Save the training state once, as the first name, and give that file the other names too (hard
        links: checkpoint_latest, _best and _final are often the same state)."""
        first = self.run.checkpoint(names[0])
        with self.stop.deferred() if self.stop else contextlib.nullcontext():
            save_training_state(
                first, self.model, self.optimizer, self.scaler, self.state, self.settings, sync
            )
        if distributed.is_main() and self.settings.runtime.save_checkpoint:
            for name in names[1:]:
                link_or_copy(first, self.run.checkpoint(name))
        if LATEST in names:
            self.saved_step = self.state.step


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
    with training:  # closes the TensorBoard writer and releases the run folder at the end, whatever happens
        try:
            with (
                stop_on_signals(distributed.is_main()) as training.stop,
                Bars(reporter, max_epochs, first_epoch, len(training.loader)) as bars,
            ):
                for epoch in range(first_epoch, max_epochs):
                    record = _train_one_epoch(training, epoch, bars, training.stop, started)
                    last_epoch = _last_epoch_of_run(epoch, max_epochs, first_epoch, training.options, started)
                    if training.val_set is not None and (
                        (epoch + 1) % training.settings.optimisation.val_every == 0 or last_epoch
                    ):
                        last_dice = _validate_and_checkpoint(training, record)
                    _log_epoch(training, record, bars)
                    if epoch == first_epoch and not last_epoch:
                        _report_pace(training, record, max_epochs - epoch - 1)
                    if last_epoch:
                        break
        except (KeyboardInterrupt, StopSignal) as stopped:
            _save_interrupted(training, stopped)
        return _finish(training, last_dice)


# --- setup ------------------------------------------------------------------------------------------------


def _set_up(
    settings: Settings, run: RunDir, reporter: Reporter, options: RunOptions, finetuning: Finetuning | None
) -> _Training:
    """Process group, run folder, data, model, optimiser and AMP scaler; the loop state of a resumed run."""
    from unetr_cli.data import read_datalist

    device = rank_device(resolve_device(settings.inference.device))
    env = distributed.init(device, settings.runtime.dist_timeout_s)
    if settings.runtime.seed is None:  # still reproducible on resume: the drawn seed is saved with the run
        seed = int(distributed.broadcast_object(random.SystemRandom().randrange(2**31)))
        settings = settings.model_copy(update={"runtime": settings.runtime.model_copy(update={"seed": seed})})
    datalist = read_datalist(settings.data.data_dir, settings.data.json_list, settings.data.fold)

    release = contextlib.ExitStack()  # the run folder's lock (main process), released if the set-up fails

    def prepare_run() -> None:
        release.enter_context(contextlib.closing(run.lock()))
        run.check_start(options.resume, options.overwrite)
        if options.resume:
            check_resumable(run, settings)
        check_data(datalist.training + datalist.validation, settings, reporter)
        if not options.resume:  # only now that the new run can start: the old one's files go
            run.start_fresh()
        run.write_settings(settings.to_dict())

    with release:
        distributed.on_main(prepare_run)
        torch.manual_seed(settings.runtime.seed)
        model = build_model(settings.model)
        if finetuning is not None:
            if finetuning.weights is not None:  # None when a fine-tuning run resumes
                weights = finetuning.weights
                load_state(
                    model, weights.state_dict, reinit_head=finetuning.reinit_head, origin=weights.source
                )
            if finetuning.freeze_encoder:
                for parameter in model.vit.parameters():
                    parameter.requires_grad_(False)
        model.to(device)
        opt = settings.optimisation
        amp_dtype = autocast_dtype(device, opt.amp, opt.amp_dtype)
        release.enter_context(exact_fp32(device, amp_dtype))  # until fit returns
        scaler = grad_scaler(device, amp_dtype)
        optimizer = optimizer_for(model, settings)
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
        forward = trained
        if opt.cuda_graphs and device.type == "cuda" and not env.is_distributed:
            forward = GraphedTraining(model, amp_dtype, reporter.warn)
        data = training_data(settings, datalist, env, device, reporter)
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
            forward=forward,
            optimizer=optimizer,
            scaler=scaler,
            loss_fn=loss_for(settings),
            base_lr=opt.lr * (env.world_size if opt.scale_lr else 1),
            train_set=data.train_set,
            loader=data.loader,
            val_set=data.val_set,
            state=state,
            writer=tensorboard(run.path / TB_DIR) if distributed.is_main() else None,
            lock=release.pop_all(),
        )
    announce(
        reporter,
        settings,
        volumes=(len(datalist.training), len(datalist.validation)),
        steps=len(training.loader),
        world_size=env.world_size,
        device=device,
        amp_dtype=amp_dtype,
        lr=training.base_lr,
        start_epoch=state.epoch,
        data=data.pipeline.reason,
        backend=distributed.backend(),
    )
    return training


# --- one epoch --------------------------------------------------------------------------------------------


def _train_one_epoch(training: _Training, epoch: int, bars: Bars, stop: StopRequest, started: float) -> dict:
    """Every step of `epoch`; returns the epoch's record for the metrics log (`elapsed_s`: seconds since this
    invocation started training, validations included)."""
    state, opt, device = training.state, training.settings.optimisation, training.device
    distributed.maybe_inject_fault(epoch + 1)
    _reseed(training.settings.runtime.seed, epoch, training.env.rank, training.train_set)
    training.loader.sampler.set_epoch(epoch)
    training.trained.train()
    epoch_start, losses, data = time.monotonic(), [], DataWait()
    steps_per_epoch = len(training.loader)
    bars.start_epoch(steps_per_epoch)
    with metadata_untracked(training.settings):
        for batch in data.batches(training.loader):
            lr = learning_rate(
                opt.lrschedule,
                step_position(state.step, steps_per_epoch),
                training.base_lr,
                opt.warmup_epochs,
                opt.max_epochs,
            )
            loss = _train_step(training, batch, lr)
            losses.append(loss)  # no host sync per step: the GPU never waits for the loop
            state.step += 1
            bars.step(lambda loss=loss, lr=lr: f"loss {loss.item():.4f}  lr {lr:.2e}")
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
        "data_wait_s": round(data.seconds, 3),
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def _train_step(training: _Training, batch: dict, lr: float) -> torch.Tensor:
    """One optimiser step on `batch` at learning rate `lr`; returns the loss, still on the device."""
    for group in training.optimizer.param_groups:
        group["lr"] = lr
    # Plain tensors for the model: a MetaTensor would route every op of the step through MONAI's metadata
    # handling (ten times the Python calls of the step, measured).
    image = batch["image"].as_subclass(torch.Tensor).to(training.device, non_blocking=True)
    label = batch["label"].as_subclass(torch.Tensor).to(training.device, non_blocking=True)
    with autocast(training.device, training.amp_dtype):
        logits = training.forward(image)
    loss = training.loss_fn(logits.float(), label)
    training.optimizer.zero_grad(set_to_none=True)
    training.scaler.scale(loss).backward()
    training.scaler.step(training.optimizer)
    training.scaler.update()
    return loss.detach()


def _reseed(seed: int, epoch: int, rank: int, dataset) -> None:
    """Make this epoch's randomness a function of (seed, epoch, rank): workers, augmentations, dropout."""
    from monai.data.utils import set_rnd

    epoch_seed = (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31)
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    set_rnd(dataset, epoch_seed)


def _mean_loss(losses: list[torch.Tensor], device: torch.device) -> float:
    """Mean training loss of the epoch over all ranks (the one host sync of the epoch's losses)."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    if losses:
        total[0], total[1] = torch.stack(losses).double().sum(), len(losses)
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


def _report_pace(training: _Training, record: dict, epochs_left: int) -> None:
    """After the first epoch: the measured pace and how long the remaining epochs will take; a warning up
    front when that is far beyond what the caller expected (a slower or busier machine)."""
    step_s = record["seconds"] / max(1, len(training.loader))
    minutes = epochs_left * record["seconds"] / 60.0
    waiting = record["data_wait_s"] / max(record["seconds"], 1e-9)
    training.reporter.info(
        f"pace: {step_s:.2f} s per step ({waiting:.0%} of it waiting for data); about {minutes:.1f} more "
        f"minutes for {epochs_left} epochs (validation not included)"
    )
    training.reporter.event(
        "pace", step_s=step_s, data_wait_share=waiting, minutes_left=minutes, epochs_left=epochs_left
    )
    expected, total = training.options.expected_minutes, minutes + record["seconds"] / 60.0
    if expected is not None and total > SLOW_FACTOR * expected:
        training.reporter.warn(
            f"this machine trains slower than expected: about {total:.1f} minutes of training instead of "
            f"about {expected:g} ({step_s:.2f} s per step); the result will be the same, only later"
            + (f"; {training.options.slow_hint}" if training.options.slow_hint else "")
        )


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
        training.save(BEST, LATEST)
    else:
        training.save(LATEST)
    report_validation(training.reporter, record, state)
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


def _log_epoch(training: _Training, record: dict, bars: Bars) -> None:
    if distributed.is_main():
        training.run.log_metrics(record)
        log_tensorboard(training.writer, record)
        if "mean_dice" in record:
            training.run.plot_progress()
    training.reporter.event("epoch", **record)
    bars.end_epoch(
        record["epoch"], f"loss {record['loss']:.4f}  best Dice {max(training.state.best_dice, 0):.3f}"
    )


def _save_interrupted(training: _Training, stopped: BaseException) -> None:
    """Keep what the interrupted epoch learnt in checkpoint_latest; a resumed run redoes that epoch."""
    training.state.rewind_epoch()
    with ignoring_signals():  # a further Ctrl-C must not tear the checkpoint that keeps the run
        training.save(LATEST, sync=False)
    signal_number = stopped.signal_number if isinstance(stopped, StopSignal) else signal.SIGINT
    latest = training.run.checkpoint(LATEST)
    raise Interrupted(
        f"interrupted: saved {latest} at epoch {training.state.epoch}; continue with "
        f"unetr train --resume --logdir {training.run.path}",
        int(signal_number),
    ) from None


def _finish(training: _Training, last_dice: float) -> FitResult:
    """Final checkpoints, a check that every rank holds the same weights, the closing report."""
    state, run = training.state, training.run
    settings = training.settings
    if training.saved_step != state.step:  # else the last epoch's validation saved it already
        training.save(LATEST)
    finished = state.epoch >= settings.optimisation.max_epochs
    if finished and distributed.is_main() and settings.runtime.save_checkpoint:
        link_or_copy(run.checkpoint(LATEST), run.checkpoint(FINAL))
    in_sync = distributed.check_in_sync(training.model)
    if distributed.is_main() and training.val_set is None:  # else the last validation drew it
        run.plot_progress()
    training.reporter.event(
        "finish",
        epochs=state.epoch,
        best_dice=state.best_dice,
        last_dice=last_dice,
        world_size=training.env.world_size,
        ranks_in_sync=in_sync,
        peak_gpu_memory_bytes=peak_gpu_memory_bytes(),
    )
    distributed.shutdown()
    if not in_sync:
        raise TrainingError("the ranks ended with different weights; the run is not trustworthy")
    return FitResult(
        run.path, state.epoch, state.best_dice, last_dice, run.metrics() if distributed.is_main() else []
    )


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 5)
