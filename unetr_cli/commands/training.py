"""`unetr train` and `unetr finetune`: options to settings, then `launch.run_training`."""

from __future__ import annotations

from typing import Annotated

import typer

from unetr_cli import options as opt


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
    from unetr_cli.engine import FitOptions
    from unetr_cli.launch import Launch, run_training

    flags = opt.setting_flags(locals())
    options = FitOptions(resume=resume, overwrite=overwrite, stop_after_epochs=stop_after)
    launch = Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint, max_restarts)
    run_training(
        "train", logdir, config, preset, set_, flags, options, opt.output_mode(quiet, json_output), launch
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
    """
    from unetr_cli.checkpoint import locate_weights, read_weights
    from unetr_cli.engine import FitOptions
    from unetr_cli.launch import Launch, run_training

    weights_path = locate_weights(from_, pretrained_dir, pretrained_model_name)
    weights = read_weights(weights_path, trust_torchscript)
    flags = opt.setting_flags(locals())
    options = FitOptions(
        overwrite=overwrite,
        stop_after_epochs=stop_after,
        init_weights=weights,
        reinit_head=reinit_head,
        freeze_encoder=freeze_encoder,
    )
    launch = Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint, max_restarts)
    worker_flags = ["--from", str(weights_path)] + [
        flag
        for flag, on in (
            ("--trust-torchscript", trust_torchscript),
            ("--reinit-head", reinit_head),
            ("--freeze-encoder", freeze_encoder),
        )
        if on
    ]
    run_training(
        "finetune",
        logdir,
        config,
        preset,
        set_,
        flags,
        options,
        opt.output_mode(quiet, json_output),
        launch,
        worker_flags,
    )
