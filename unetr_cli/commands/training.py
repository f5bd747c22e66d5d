"""`unetr train` and `unetr finetune`: options to settings (resolved here, once) and run options, then
`training.launch.start_training`, which trains here or through torchrun."""

from __future__ import annotations

from typing import Annotated

import typer

from unetr_cli.commands import options as opt


def train(
    data_dir: opt.DataDir = None,
    json_list: opt.JsonList = None,
    fold: opt.Fold = None,
    logdir: opt.Logdir = None,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    feature_size: opt.FeatureSize = None,
    img_size: opt.ImgSize = None,
    pos_embed: opt.PosEmbed = None,
    optimizer: opt.Optimizer = None,
    lr: opt.Lr = None,
    lrschedule: opt.LrSchedule = None,
    warmup_epochs: opt.WarmupEpochs = None,
    max_epochs: opt.MaxEpochs = None,
    batch_size: opt.BatchSize = None,
    val_every: opt.ValEvery = None,
    amp: opt.Amp = None,
    infer_overlap: opt.InferOverlap = None,
    sw_batch_size: opt.SwBatchSize = None,
    device: opt.Device = None,
    workers: opt.Workers = None,
    cache_rate: opt.CacheRate = None,
    seed: opt.Seed = None,
    save_checkpoint: opt.SaveCheckpoint = None,
    resume: opt.Resume = False,
    stop_after: opt.StopAfter = None,
    overwrite: opt.Overwrite = False,
    nproc_per_node: opt.NprocPerNode = None,
    distributed: opt.Distributed = False,
    nnodes: opt.Nnodes = None,
    node_rank: opt.NodeRank = None,
    rdzv_endpoint: opt.RdzvEndpoint = None,
    max_restarts: opt.MaxRestarts = None,
    scale_lr: opt.ScaleLr = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Train UNETR on a BTCV-layout dataset (datalist JSON + NIfTI volumes) with the reference recipe.

    Writes a run folder with settings.json, checkpoint_latest/best/final.pt, metrics.jsonl, TensorBoard
    events and progress.png. Every case is checked before training starts. With --nproc-per-node N (or
    --distributed) the command relaunches itself through torchrun, one process per GPU.

    Examples:
      unetr train --data-dir /dataset/dataset0 --feature-size 16 --batch-size 1 --lr 1e-4 --max-epochs 5000
      unetr train --data-dir data/phantoms --preset tiny-cpu --logdir runs/tiny
      unetr train --resume --logdir runs/tiny
      unetr train --data-dir /dataset/dataset0 --nproc-per-node 4 --scale-lr
    """
    from unetr_cli.distributed import Launch
    from unetr_cli.training.engine import RunOptions

    _train(
        sources=opt.sources(config, preset, set_),
        flags={
            "data.data_dir": data_dir,
            "data.json_list": json_list,
            "data.fold": fold,
            "data.workers": workers,
            "data.cache_rate": cache_rate,
            "model.feature_size": feature_size,
            "model.img_size": img_size,
            "model.pos_embed": pos_embed,
            "optimisation.optimizer": optimizer,
            "optimisation.lr": lr,
            "optimisation.lrschedule": lrschedule,
            "optimisation.warmup_epochs": warmup_epochs,
            "optimisation.max_epochs": max_epochs,
            "optimisation.batch_size": batch_size,
            "optimisation.val_every": val_every,
            "optimisation.amp": amp,
            "optimisation.scale_lr": scale_lr,
            "inference.infer_overlap": infer_overlap,
            "inference.sw_batch_size": sw_batch_size,
            "inference.device": device,
            "runtime.seed": seed,
            "runtime.save_checkpoint": save_checkpoint,
        },
        logdir=logdir,
        options=RunOptions(resume=resume, overwrite=overwrite, stop_after_epochs=stop_after),
        output_mode=opt.output_mode(quiet, json_output),
        launch=Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint, max_restarts),
    )


def finetune(
    from_: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    reinit_head: Annotated[
        bool,
        typer.Option(
            help="Re-initialise the output layer (a new label set; use with --out-channels).",
            rich_help_panel="Model",
        ),
    ] = False,
    freeze_encoder: Annotated[
        bool, typer.Option(help="Keep the ViT encoder frozen (small datasets).", rich_help_panel="Model")
    ] = False,
    out_channels: opt.OutChannels = None,
    data_dir: opt.DataDir = None,
    json_list: opt.JsonList = None,
    fold: opt.Fold = None,
    logdir: opt.Logdir = None,
    resume: opt.Resume = False,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    feature_size: opt.FeatureSize = None,
    lr: opt.Lr = None,
    lrschedule: opt.LrSchedule = None,
    warmup_epochs: opt.WarmupEpochs = None,
    max_epochs: opt.MaxEpochs = None,
    batch_size: opt.BatchSize = None,
    val_every: opt.ValEvery = None,
    amp: opt.Amp = None,
    device: opt.Device = None,
    workers: opt.Workers = None,
    seed: opt.Seed = None,
    stop_after: opt.StopAfter = None,
    overwrite: opt.Overwrite = False,
    nproc_per_node: opt.NprocPerNode = None,
    distributed: opt.Distributed = False,
    nnodes: opt.Nnodes = None,
    node_rank: opt.NodeRank = None,
    rdzv_endpoint: opt.RdzvEndpoint = None,
    max_restarts: opt.MaxRestarts = None,
    scale_lr: opt.ScaleLr = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Fine-tune UNETR from pretrained weights: the official UNETR_model_best_acc.pth (a raw state dict), a
    reference trainer checkpoint, a unetr checkpoint, a safetensors file, or (with --trust-torchscript) a
    TorchScript file such as UNETR_model_best_acc.pt. The format is read from the file itself.

    Examples:
      unetr finetune --from pretrained_models/UNETR_model_best_acc.pth --data-dir /dataset/dataset0
      unetr finetune --pretrained-dir pretrained_models --pretrained-model-name UNETR_model_best_acc.pth -d D
      unetr finetune --from UNETR_model_best_acc.pt --trust-torchscript --data-dir D
      unetr finetune --from runs/btcv/checkpoint_best.pt --out-channels 5 --reinit-head --data-dir my_organs
      unetr finetune --resume --logdir runs/finetune-1 --freeze-encoder
    """
    from unetr_cli.checkpoint import locate_weights
    from unetr_cli.distributed import Launch
    from unetr_cli.training.engine import RunOptions
    from unetr_cli.training.launch import FinetuneFrom

    weights_named = any(v is not None for v in (from_, pretrained_dir, pretrained_model_name))

    _train(
        sources=opt.sources(config, preset, set_),
        flags={
            "data.data_dir": data_dir,
            "data.json_list": json_list,
            "data.fold": fold,
            "data.workers": workers,
            "model.feature_size": feature_size,
            "model.out_channels": out_channels,
            "optimisation.lr": lr,
            "optimisation.lrschedule": lrschedule,
            "optimisation.warmup_epochs": warmup_epochs,
            "optimisation.max_epochs": max_epochs,
            "optimisation.batch_size": batch_size,
            "optimisation.val_every": val_every,
            "optimisation.amp": amp,
            "optimisation.scale_lr": scale_lr,
            "inference.device": device,
            "runtime.seed": seed,
        },
        logdir=logdir,
        options=RunOptions(resume=resume, overwrite=overwrite, stop_after_epochs=stop_after),
        output_mode=opt.output_mode(quiet, json_output),
        launch=Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint, max_restarts),
        finetune=FinetuneFrom(
            None
            if resume and not weights_named
            else locate_weights(from_, pretrained_dir, pretrained_model_name),
            trust_torchscript=trust_torchscript,
            reinit_head=reinit_head,
            freeze_encoder=freeze_encoder,
        ),
    )


def _train(sources, flags: dict, logdir, options, output_mode: str, launch, finetune=None) -> None:
    """Resolve the run folder and the settings once, here in the command layer, then train."""
    from unetr_cli.training.launch import start_training

    settings, run, weights = _training_settings(sources, flags, logdir, options, finetune)
    start_training(settings, run, options, output_mode, launch, finetune, weights)


def _training_settings(sources, flags: dict, logdir, options, finetune=None) -> tuple:
    """The run folder, the settings (a resumed run starts from its own, fine-tuning from what the weights
    file says about its model, the user's sources and flags on top) and the fine-tuning weights, read once.
    A new run never replaces the weights it starts from."""
    import os
    from pathlib import Path

    from unetr_cli import distributed
    from unetr_cli.guard import refuse_inputs
    from unetr_cli.settings import input_space, resolve_settings
    from unetr_cli.training.rundir import RUN_FILES, resolve_run_dir

    if "TORCHELASTIC_RUN_ID" in os.environ and logdir is None:
        logdir = Path("runs") / distributed.shared_run_name()
    run = resolve_run_dir(logdir, options.resume)
    if not options.resume and finetune is not None and finetune.path is not None:
        # A new run replaces the folder's run files: none of them may be the weights it starts from.
        refuse_inputs("--logdir", [run.checkpoint(name) for name in RUN_FILES], [finetune.path])
    weights = finetune.read() if finetune is not None else None
    if options.resume:
        base, origin = run.read_settings(), str(run.path / "settings.json")
    elif weights is not None and weights.settings:
        base, origin = input_space(weights.settings), weights.source
    else:
        base, origin = None, None
    flags = {**flags, "runtime.logdir": run.path}
    return resolve_settings(sources, flags, base=base, base_origin=origin), run, weights
