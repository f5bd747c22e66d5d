"""Training: one readable loop. Setup, autocast, backward with the scaler, step, log, validate, checkpoint.

The learning rate is a pure function of the optimiser step (`schedule.py`); the data order and the random
augmentations are reseeded from (seed, epoch, rank) at every epoch, so a run resumed from
`checkpoint_latest` continues exactly as if it had never stopped. Distributed concerns stay in
`distributed.py`: this module only asks `is_main()` and all-reduces sums.
"""

from __future__ import annotations

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
from unetr_cli.errors import Interrupted, TrainingError
from unetr_cli.inference import Segmenter, autocast, autocast_dtype, resolve_device
from unetr_cli.labels import label_names
from unetr_cli.metrics import DiceAccumulator
from unetr_cli.model import build_model, load_state, unwrap
from unetr_cli.rundir import BEST, FINAL, LATEST, TB_DIR, RunDir
from unetr_cli.schedule import learning_rate, step_position
from unetr_cli.settings import Settings
from unetr_cli.training_state import check_resumable, restore_training_state, save_training_state


@dataclass
class FitOptions:
    """How this invocation runs (not hyperparameters, so not settings)."""

    resume: bool = False
    overwrite: bool = False
    init_weights: LoadedWeights | None = None
    reinit_head: bool = False
    freeze_encoder: bool = False
    stop_after_epochs: int | None = None
    time_budget_s: float | None = None


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    best_dice: float
    last_dice: float
    history: list[dict] = field(default_factory=list)


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


def fit(settings: Settings, run: RunDir, reporter: Reporter, options: FitOptions | None = None) -> FitResult:
    """Train UNETR with `settings`, writing everything into `run`."""
    options = options or FitOptions()
    device = resolve_device(settings.inference.device)
    env = distributed.init(device, settings.runtime.dist_timeout_s)
    if env.is_distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    main = distributed.is_main()

    # --- setup: run folder, data, model, optimiser, scaler -------------------------------------------------
    from unetr_cli.data import read_datalist, shard, training_dataset, training_loader, validation_dataset

    if settings.runtime.seed is None:  # still reproducible on resume: the drawn seed is saved with the run
        settings.runtime.seed = int(distributed.broadcast_object(random.SystemRandom().randrange(2**31)))
    seed = settings.runtime.seed
    datalist = read_datalist(settings.data.data_dir, settings.data.json_list, settings.data.fold)

    def prepare_run() -> None:
        run.prepare(options.resume, options.overwrite)
        if options.resume:
            check_resumable(run, settings)
        _check_data(datalist.training + datalist.validation, settings, reporter)
        run.write_settings(settings.to_dict())

    distributed.on_main(prepare_run)
    torch.manual_seed(seed)
    model = build_model(settings.model)
    if options.init_weights is not None:
        weights = options.init_weights
        load_state(model, weights.state_dict, reinit_head=options.reinit_head, origin=weights.source)
    if options.freeze_encoder:
        for parameter in model.vit.parameters():
            parameter.requires_grad_(False)
    model.to(device)
    amp_dtype = autocast_dtype(device, settings.optimisation.amp)
    if device.type == "cuda" and settings.optimisation.amp and settings.optimisation.amp_dtype != "auto":
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[settings.optimisation.amp_dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    base_lr = settings.optimisation.lr * (env.world_size if settings.optimisation.scale_lr else 1)
    optimizer = _optimizer(model, settings)
    loss_fn = _loss(settings)

    train_set = training_dataset(datalist.training, settings)
    loader = training_loader(train_set, settings, env.rank, env.world_size, pin_memory=device.type == "cuda")
    val_cases = shard(datalist.validation, env.rank, env.world_size)
    val_set = validation_dataset(val_cases, settings) if datalist.validation else None

    state = {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": -1}
    if options.resume:
        state = restore_training_state(run.checkpoint(LATEST), model, optimizer, scaler)
        if main:
            run.truncate_metrics(state["epoch"])
    trained = model
    if env.is_distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    writer = _tensorboard(run.path / TB_DIR) if main else None
    steps_per_epoch = len(loader)
    opt = settings.optimisation
    names = label_names(settings.model.out_channels)
    _announce(
        reporter,
        settings,
        env,
        device,
        amp_dtype,
        base_lr,
        len(datalist.training),
        len(datalist.validation),
        steps_per_epoch,
        state["epoch"],
    )

    # --- the loop ------------------------------------------------------------------------------------------
    started = time.monotonic()
    completed_steps = state["step"]
    last_dice = math.nan
    first_epoch = state["epoch"]
    stop_request = _StopRequest()
    previous_handlers = (
        {sig: signal.signal(sig, stop_request) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    )
    try:
        with reporter.progress() as bars:
            epoch_bar = (
                bars.add_task("epochs", total=opt.max_epochs, completed=first_epoch, status="")
                if bars
                else None
            )
            step_bar = bars.add_task("steps", total=steps_per_epoch, status="") if bars else None
            for epoch in range(first_epoch, opt.max_epochs):
                distributed.maybe_inject_fault(epoch + 1)
                _reseed(seed, epoch, env.rank, train_set)
                loader.sampler.set_epoch(epoch)
                trained.train()
                epoch_start, losses = time.monotonic(), []
                if bars:
                    bars.reset(step_bar, total=steps_per_epoch)
                for batch in loader:
                    lr = learning_rate(
                        opt.lrschedule,
                        step_position(state["step"], steps_per_epoch),
                        base_lr,
                        opt.warmup_epochs,
                        opt.max_epochs,
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    image = batch["image"].to(device, non_blocking=True)
                    label = batch["label"].to(device, non_blocking=True)
                    with autocast(device, amp_dtype):
                        logits = trained(image)
                    loss = loss_fn(logits.float(), label)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(loss.item())
                    state["step"] += 1
                    if bars:
                        bars.update(step_bar, advance=1, status=f"loss {losses[-1]:.4f}  lr {lr:.2e}")
                    stop_request.check()
                epoch_loss = _mean_loss(losses, device)
                if not math.isfinite(epoch_loss):
                    raise TrainingError(
                        f"training diverged: the loss is {epoch_loss} in epoch {epoch + 1}; "
                        "lower --lr or train with --no-amp"
                    )
                state["epoch"], completed_steps = epoch + 1, state["step"]
                record = {
                    "epoch": epoch + 1,
                    "step": state["step"],
                    "loss": epoch_loss,
                    "lr": lr,
                    "seconds": round(time.monotonic() - epoch_start, 3),
                }
                last_epoch = _last_epoch_of_run(epoch, opt.max_epochs, first_epoch, options, started)
                if val_set is not None and ((epoch + 1) % opt.val_every == 0 or last_epoch):
                    distributed.broadcast_buffers(model)  # validate exactly the weights rank 0 saves
                    # On a copy, tuned for inference exactly as `unetr evaluate` would tune it.
                    per_organ, last_dice = validate(
                        Segmenter(copy.deepcopy(unwrap(trained)), settings, device), val_set, settings
                    )
                    record["mean_dice"] = last_dice
                    record["dice"] = {names[i + 1]: _round(d) for i, d in enumerate(per_organ)}
                    if last_dice > state["best_dice"]:
                        state["best_dice"], state["best_epoch"] = last_dice, epoch + 1
                        save_training_state(run.checkpoint(BEST), model, optimizer, scaler, state, settings)
                    save_training_state(run.checkpoint(LATEST), model, optimizer, scaler, state, settings)
                    _report_validation(reporter, record, state)
                if main:
                    run.log_metrics(record)
                    _log_tensorboard(writer, record)
                    if "mean_dice" in record:
                        run.plot_progress()
                reporter.event("epoch", **record)
                if bars:
                    bars.update(
                        epoch_bar,
                        completed=epoch + 1,
                        status=f"loss {epoch_loss:.4f}  best Dice {max(state['best_dice'], 0):.3f}",
                    )
                if last_epoch:
                    break
    except (KeyboardInterrupt, _Stop) as stop:
        state["step"] = completed_steps  # a resumed run redoes the unfinished epoch from its first step
        save_training_state(run.checkpoint(LATEST), model, optimizer, scaler, state, settings, sync=False)
        signal_number = stop.signal_number if isinstance(stop, _Stop) else signal.SIGINT
        raise Interrupted(
            f"interrupted: saved {run.checkpoint(LATEST)} at epoch {state['epoch']}; continue with "
            f"unetr train --resume --logdir {run.path}",
            int(signal_number),
        ) from None
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()

    save_training_state(run.checkpoint(LATEST), model, optimizer, scaler, state, settings)
    if state["epoch"] >= opt.max_epochs:
        save_training_state(run.checkpoint(FINAL), model, optimizer, scaler, state, settings)
    in_sync = distributed.check_in_sync(model)
    if main:
        run.plot_progress()
    reporter.event(
        "finish",
        epochs=state["epoch"],
        best_dice=state["best_dice"],
        last_dice=last_dice,
        world_size=env.world_size,
        ranks_in_sync=in_sync,
    )
    distributed.shutdown()
    if not in_sync:
        raise TrainingError("the ranks ended with different weights; the run is not trustworthy")
    return FitResult(run.path, state["epoch"], state["best_dice"], last_dice, run.metrics() if main else [])


# --- pieces of the loop -----------------------------------------------------------------------------------


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


def _reseed(seed: int, epoch: int, rank: int, dataset) -> None:
    """Make this epoch's randomness a function of (seed, epoch, rank): workers, augmentations, dropout."""
    from monai.data.utils import set_rnd

    epoch_seed = (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31)
    torch.manual_seed(epoch_seed)
    np.random.seed(epoch_seed)
    random.seed(epoch_seed)
    set_rnd(dataset, epoch_seed)


def _last_epoch_of_run(
    epoch: int, max_epochs: int, first_epoch: int, options: FitOptions, started: float
) -> bool:
    if epoch + 1 >= max_epochs:
        return True
    if options.stop_after_epochs is not None and epoch + 1 - first_epoch >= options.stop_after_epochs:
        return True
    over_budget = options.time_budget_s is not None and time.monotonic() - started >= options.time_budget_s
    return bool(distributed.broadcast_object(over_budget))


def _mean_loss(losses: list[float], device: torch.device) -> float:
    """Mean training loss of the epoch over all ranks."""
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(total)
    return float(total[0] / max(total[1], 1))


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 5)


# --- reporting --------------------------------------------------------------------------------------------


def _check_data(cases: list[dict], settings: Settings, reporter: Reporter) -> None:
    from unetr_cli.data import check_cases

    with reporter.progress() as bars:
        task = bars.add_task("checking data", total=len(cases), status="") if bars else None
        check_cases(
            cases,
            settings.model.out_channels,
            progress=(lambda done: bars.update(task, completed=done)) if bars else None,
        )


def _announce(reporter, settings, env, device, amp_dtype, lr, n_train, n_val, steps, start_epoch) -> None:
    opt = settings.optimisation
    scaled = f" = {opt.lr:g} x {env.world_size} processes (--scale-lr)" if lr != opt.lr else ""
    crops = opt.batch_size * settings.data.num_samples
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}.get(
        amp_dtype, "fp32"
    )
    reporter.info(
        f"[bold]unetr train[/]: {n_train} training / {n_val} validation volumes, {steps} steps per epoch, "
        f"{env.world_size} process(es) on {device}, {precision}",
        markup=True,
    )
    reporter.info(
        f"effective batch {crops * env.world_size} crops of {settings.roi_size}^3 "
        f"({opt.batch_size} volume(s) x {settings.data.num_samples} crops x {env.world_size} process(es)), "
        f"lr {lr:g}{scaled} ({opt.lrschedule}), epochs {start_epoch}..{opt.max_epochs}"
    )
    reporter.event(
        "start",
        train_volumes=n_train,
        val_volumes=n_val,
        steps_per_epoch=steps,
        world_size=env.world_size,
        device=str(device),
        precision=precision,
        effective_batch=crops * env.world_size,
        lr=lr,
        start_epoch=start_epoch,
    )


def _report_validation(reporter: Reporter, record: dict, state: dict) -> None:
    from rich.table import Table

    table = Table(title=f"validation after epoch {record['epoch']}", title_justify="left")
    table.add_column("organ")
    table.add_column("Dice", justify="right")
    for organ, dice in record["dice"].items():
        table.add_row(organ, "n/a" if dice is None else f"{dice:.3f}")
    table.add_row("[bold]mean[/]", f"[bold]{record['mean_dice']:.3f}[/]")
    reporter.table(table)
    reporter.info(f"best mean Dice {state['best_dice']:.4f} at epoch {state['best_epoch']}")
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
