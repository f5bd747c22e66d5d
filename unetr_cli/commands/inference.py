"""`unetr predict` and `unetr evaluate`: options to settings and a model, then the inference engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.commands import options as opt
from unetr_cli.commands.weights import WeightsOptions, model_settings
from unetr_cli.console import Reporter


def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Scans: NIfTI, NRRD or MetaImage files, DICOM series (a folder, nested folders or a .zip), "
            "folders of them, or glob patterns."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file (one input) or folder.")],
    checkpoint: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    saved_checkpoint: opt.SavedCheckpoint = None,
    infer_overlap: opt.InferOverlap = None,
    sw_batch_size: opt.SwBatchSize = None,
    mode: opt.BlendMode = None,
    tta: opt.Tta = None,
    resample: opt.Resample = None,
    infer_amp: opt.InferAmp = None,
    device: opt.Device = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            "--stats",
            help="Per organ: volume (ml), mean HU and the flags to double-check (lateral, cut, volume, "
            "fragments, uncertain with --tta, hu, missing), as <name>_stats.json and .csv, and a line per "
            "scan.",
            rich_help_panel="Checks",
        ),
    ] = False,
    fail_on_flags: Annotated[
        bool,
        typer.Option(
            help="Exit 1 when a scan is flagged (its outputs are still written); implies --report.",
            rich_help_panel="Checks",
        ),
    ] = False,
    strict_orientation: Annotated[
        bool,
        typer.Option(
            help="Refuse a scan whose orientation looks wrong (spine in front, liver left or below the "
            "kidneys) instead of warning.",
            rich_help_panel="Checks",
        ),
    ] = False,
    allow_non_ct: Annotated[
        bool,
        typer.Option(
            "--allow-non-ct",
            help="Segment scans that are not CT in Hounsfield units (another modality, no air near -1000) "
            "instead of refusing them.",
            rich_help_panel="Checks",
        ),
    ] = False,
    keep_largest: opt.KeepLargest = None,
    min_size: opt.MinSize = None,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview", help="Write a PNG with the labels over three slices.", rich_help_panel="Run"
        ),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing", help="Keep outputs that already exist (resume a batch).", rich_help_panel="Run"
        ),
    ] = False,
    output_format: Annotated[
        str | None,
        typer.Option(
            help="nifti, dicom-seg (DICOM input only), seg-nrrd (3D Slicer), nrrd or mha; default: what -o's "
            "ending names, else nifti.",
            rich_help_panel="Run",
        ),
    ] = None,
    series: Annotated[
        str | None,
        typer.Option(help="Segment only this DICOM series (SeriesInstanceUID).", rich_help_panel="Data"),
    ] = None,
    overwrite: opt.Overwrite = False,
    nproc_per_node: opt.NprocPerNode = None,
    distributed: opt.Distributed = False,
    nnodes: opt.Nnodes = None,
    node_rank: opt.NodeRank = None,
    rdzv_endpoint: opt.RdzvEndpoint = None,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Segment CT scans; each label map (uint8, BTCV ids) has exactly its scan's shape and affine.

    Preprocessing is the validation pipeline (RAS, training spacing, HU window, body crop); sliding-window
    inference runs at model resolution and the label map is carried back to the scan's own grid. A label
    sidecar (.json) and a 3D Slicer colour table (.ctbl) travel with every output. With --nproc-per-node N
    the scans are shared among N processes, one per GPU.

    Examples:
      unetr predict scan.nii.gz -o seg.nii.gz --checkpoint runs/btcv/checkpoint_best.pt
      unetr predict scans/ -o segs/ --checkpoint model.pth --report --preview --skip-existing
      unetr predict scans/ -o segs/ --checkpoint model.pth --fail-on-flags --keep-largest --min-size 0.5
      unetr predict "data/imagesTs/*.nii.gz" -o segs/ --pretrained-dir pretrained_models --tta
      unetr predict scan.nii.gz -o seg.nii.gz --checkpoint UNETR_model_best_acc.pt --trust-torchscript
      unetr predict scans/ -o segs/ --checkpoint model.pth --nproc-per-node 4 --skip-existing
      unetr predict dicom/patient1/ -o segs/ --checkpoint model.pth --output-format dicom-seg
      unetr predict scan.nrrd -o scan_seg.seg.nrrd --checkpoint model.pth
    """
    from unetr_cli.distributed import Launch
    from unetr_cli.inference import predict as predicting
    from unetr_cli.inference.batch import PredictOptions

    reporter = Reporter(opt.output_mode(quiet, json_output))
    options = PredictOptions(
        report=report or fail_on_flags,
        preview=preview,
        strict_orientation=strict_orientation,
        fail_on_flags=fail_on_flags,
        allow_non_ct=allow_non_ct,
        overwrite=overwrite,
        skip_existing=skip_existing,
    )
    plan = predicting.plan(inputs, output, series, output_format, options, reporter)  # refusals: no model
    weights_options = WeightsOptions(
        checkpoint, pretrained_dir, pretrained_model_name, trust_torchscript, saved_checkpoint
    )
    weights = weights_options.read()
    flags = opt.InferenceFlags(
        infer_overlap, sw_batch_size, mode, tta, resample, infer_amp, device, keep_largest, min_size
    )
    settings = model_settings(weights, opt.sources(config, preset, set_), flags.settings())
    launch = Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint)
    result = predicting.run(plan, weights, settings, trust_torchscript, launch, reporter)
    if result.failed or result.flagged:
        raise typer.Exit(1)


def evaluate(
    data_dir: opt.DataDir = None,
    json_list: opt.JsonList = None,
    split: Annotated[
        str, typer.Option(help="Datalist split to score: validation or training.", rich_help_panel="Data")
    ] = "validation",
    fold: opt.Fold = None,
    pred_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of predicted label maps to score (no model).",
            rich_help_panel="Data",
            file_okay=False,
        ),
    ] = None,
    gt_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of ground-truth label maps, paired by name.", rich_help_panel="Data", file_okay=False
        ),
    ] = None,
    checkpoint: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    saved_checkpoint: opt.SavedCheckpoint = None,
    space: Annotated[
        str,
        typer.Option(
            help="original: each scan's own grid; resampled: the model's space, like the reference test.py.",
            rich_help_panel="Run",
        ),
    ] = "original",
    empty_as_zero: Annotated[
        bool,
        typer.Option(
            "--empty-as-zero",
            help="Score an organ missing from the truth "
            "as Dice 0, like the reference (default: n/a when in neither "
            "map).",
            rich_help_panel="Run",
        ),
    ] = False,
    hd95: Annotated[
        bool,
        typer.Option(
            "--hd95/--no-hd95", help="Compute HD95 and surface Dice (slower).", rich_help_panel="Run"
        ),
    ] = True,
    surface_tolerance: Annotated[
        float,
        typer.Option(
            help="Tolerance (mm) of the normalised surface Dice (NSD).", min=0.0, rich_help_panel="Run"
        ),
    ] = 2.0,
    keep_largest: opt.KeepLargest = None,
    min_size: opt.MinSize = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write all numbers as JSON.", rich_help_panel="Run", dir_okay=False),
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv", help="Write per-case, per-organ rows as CSV.", rich_help_panel="Run", dir_okay=False
        ),
    ] = None,
    infer_overlap: opt.InferOverlap = None,
    sw_batch_size: opt.SwBatchSize = None,
    mode: opt.BlendMode = None,
    tta: opt.Tta = None,
    resample: opt.Resample = None,
    infer_amp: opt.InferAmp = None,
    device: opt.Device = None,
    overwrite: opt.Overwrite = False,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Score segmentations per organ (Dice, HD95 in mm, surface Dice, volume difference) and per case.

    With a model, every case of a datalist split is predicted with the same code as `unetr predict`; with
    --pred-dir, existing label maps are scored against --gt-dir (paired by name) or the datalist's labels.
    With --keep-largest or --min-size, every case is scored with and without that post-processing. The
    exit code is 0 whatever the scores; it is non-zero only for errors.

    Examples:
      unetr evaluate --data-dir /dataset/dataset0 --checkpoint runs/btcv/checkpoint_best.pt --output r.json
      unetr evaluate --data-dir D --pretrained-dir pretrained_models --space resampled --empty-as-zero
      unetr evaluate --pred-dir segs/ --gt-dir labelsTs/ --csv scores.csv
      unetr evaluate --pred-dir segs/ --gt-dir labelsTs/ --keep-largest --surface-tolerance 1
    """
    from unetr_cli.inference import evaluate as ev
    from unetr_cli.settings import resolve_settings

    request = ev.EvaluationRequest(
        split,
        space,
        pred_dir,
        gt_dir,
        data_dir is not None,
        empty_as_zero,
        hd95,
        surface_tolerance,
        output,
        csv_path,
        overwrite,
    )
    weights_options = WeightsOptions(
        checkpoint, pretrained_dir, pretrained_model_name, trust_torchscript, saved_checkpoint
    )
    request.check(weights_options.files, weights_options.given)
    sources = opt.sources(config, preset, set_)
    flags = {
        "data.data_dir": data_dir,
        "data.json_list": json_list,
        "data.fold": fold,
        **opt.InferenceFlags(
            infer_overlap, sw_batch_size, mode, tta, resample, infer_amp, device, keep_largest, min_size
        ).settings(),
    }
    weights = weights_options.read() if weights_options.given else None
    settings = model_settings(weights, sources, flags) if weights else resolve_settings(sources, flags)
    evaluation = ev.evaluate(request, settings, weights, Reporter(opt.output_mode(quiet, json_output)))
    if evaluation.failed:
        raise typer.Exit(1)
