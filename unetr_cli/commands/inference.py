"""`unetr predict` and `unetr evaluate`: options to settings and a model, then the inference engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.commands import options as opt
from unetr_cli.commands.weights import WeightsOptions, model_settings, trained_model
from unetr_cli.console import Reporter, error_line, stdout
from unetr_cli.errors import DataError, UsageError


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
    from unetr_cli.inference.batch import PredictOptions
    from unetr_cli.inference.inputs import (
        check_outputs,
        choose_format,
        expand_inputs,
        plan_outputs,
        preflight,
    )

    scans, skipped, unreadable = expand_inputs(inputs, series, allow_non_ct)
    refused = unreadable | preflight(scans, allow_non_ct)
    scans = [s for s in scans if s not in refused]
    if not scans:  # every input refused: failures of the batch (exit 1), said before any model loads
        raise DataError("\n".join([*skipped, *refused.values()]))
    reporter = Reporter(opt.output_mode(quiet, json_output))
    _announce(reporter, scans, skipped, refused)
    fmt = choose_format(output, output_format, scans)
    targets = plan_outputs(scans, output, fmt)
    options = PredictOptions(
        report=report or fail_on_flags,
        preview=preview,
        strict_orientation=strict_orientation,
        fail_on_flags=fail_on_flags,
        allow_non_ct=allow_non_ct,
        overwrite=overwrite,
        skip_existing=skip_existing,
        output_format=fmt,
    )
    check_outputs(scans, targets, options)
    weights = WeightsOptions(
        checkpoint, pretrained_dir, pretrained_model_name, trust_torchscript, saved_checkpoint
    ).read()
    settings = model_settings(
        weights,
        opt.sources(config, preset, set_),
        opt.inference_flags(infer_overlap, sw_batch_size, mode, tta, resample, infer_amp, device)
        | opt.postprocessing_flags(keep_largest, min_size),
    )
    options.provenance = {"checkpoint": weights.source, "settings": settings.to_dict()}
    launch = Launch(nproc_per_node, distributed, nnodes, node_rank, rdzv_endpoint)
    processes = launch.processes(settings.inference.device)
    if processes:
        from unetr_cli.inference.worker import PredictJob, predict_on_processes

        job = PredictJob(
            scans, targets, options, settings, Path(weights.source), trust_torchscript, reporter.mode
        )
        del weights  # each process reads the weights itself
        result = predict_on_processes(job, launch, processes)
    else:
        from unetr_cli.devices import resolve_device, warming_up
        from unetr_cli.inference.batch import predict_batch
        from unetr_cli.inference.scan import warm_up_stages
        from unetr_cli.inference.segmenter import Segmenter
        from unetr_cli.model import model_with_weights

        device = resolve_device(settings.inference.device)

        def load_segmenter() -> Segmenter:
            with warming_up(device, lambda: warm_up_stages(settings, device)):
                model = model_with_weights(settings.model, weights.state_dict, weights.source)
            segmenter = Segmenter(model, settings, device)
            _report_ready(reporter, segmenter)
            return segmenter

        result = predict_batch(scans, targets, load_segmenter, device, options, reporter)
    result.failed |= refused
    _summarise_batch(result, reporter)


def _announce(reporter: Reporter, scans: list, skipped: list[str], refused: dict) -> None:
    """Before the model loads: the DICOM series found (as a folder's listing would show them), those skipped,
    and the scans refused by the checks that need no model (failures of the batch, named again at its end)."""
    for scan in scans:
        if hasattr(scan, "uid"):
            reporter.info(f"found {scan.summary()}")
    for line in skipped:
        reporter.warn(line)
    for source, problem in refused.items():
        reporter.warn(f"skipped: {problem}")
        reporter.event("failed", input=str(source), error=problem)


def _report_ready(reporter: Reporter, segmenter) -> None:
    """How long start-up took (imports, device, weights, model): the `ready` event of --json."""
    import time

    from unetr_cli import STARTED_AT

    seconds = round(time.monotonic() - STARTED_AT, 3)
    reporter.info(f"model ready on {segmenter.device} after {seconds:.1f} s")
    reporter.event("ready", startup_s=seconds, device=str(segmenter.device))


def _summarise_batch(result, reporter: Reporter) -> None:
    from unetr_cli.devices import peak_gpu_memory_bytes

    peak = peak_gpu_memory_bytes()
    gpu = f"; peak GPU memory {peak / 2**30:.2f} GB" if peak else ""
    reporter.result(
        f"{len(result.written)} written, {len(result.skipped)} skipped (existing), "
        f"{len(result.failed)} failed{gpu}"
    )
    reporter.event(
        "summary",
        written=len(result.written),
        skipped=len(result.skipped),
        failed=len(result.failed),
        flagged=len(result.flagged),
        peak_gpu_memory_bytes=peak,
    )
    if result.failed:
        for source, problem in result.failed.items():
            error_line(problem if str(source) in problem else f"{source}: {problem}")
    if result.flagged:
        error_line(
            f"{len(result.flagged)} scan(s) flagged (--fail-on-flags): {', '.join(map(str, result.flagged))}"
        )
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
    from unetr_cli.files import ensure_writable_folder
    from unetr_cli.guard import check_output
    from unetr_cli.inference import evaluate as ev
    from unetr_cli.inference.postprocess import PostProcessing
    from unetr_cli.settings import resolve_settings

    if space not in ("original", "resampled"):
        raise UsageError(f"--space {space}: expected original or resampled")
    if split not in ("validation", "training"):
        raise UsageError(f"--split {split}: expected validation or training")
    weights_options = WeightsOptions(
        checkpoint, pretrained_dir, pretrained_model_name, trust_torchscript, saved_checkpoint
    )
    outputs = {option: path for option, path in (("--output", output), ("--csv", csv_path)) if path}
    if len(set(map(Path.resolve, outputs.values()))) < len(outputs):
        raise UsageError(f"--output and --csv name the same file ({output}); give each its own")
    for option, path in outputs.items():  # before any case is scored, not after
        check_output(option, path, weights_options.files, overwrite)
        ensure_writable_folder(path.parent, option)
    reporter = Reporter(opt.output_mode(quiet, json_output))
    sources = opt.sources(config, preset, set_)
    flags = {
        "data.data_dir": data_dir,
        "data.json_list": json_list,
        "data.fold": fold,
        **opt.inference_flags(infer_overlap, sw_batch_size, mode, tta, resample, infer_amp, device),
        **opt.postprocessing_flags(keep_largest, min_size),
    }
    unpaired: dict[str, list[str]] = {}

    def scoring(settings) -> ev.Scoring:
        cleanup = PostProcessing.of(settings.inference)
        return ev.Scoring(empty_as_zero, hd95, surface_tolerance, cleanup)

    if weights_options.given:
        if pred_dir is not None or gt_dir is not None:
            raise UsageError("give either a model (--checkpoint) or --pred-dir, not both")
        from unetr_cli.inference.segmenter import Segmenter

        weights = weights_options.read()
        cases = ev.datalist_cases(ev.split_entries(model_settings(weights, sources, flags), split), None)
        _spare_cases(outputs, cases, overwrite)
        trained = trained_model(weights, sources, flags)
        settings, weights_path = trained.settings, trained.weights_path
        segmenter = Segmenter(trained.network, settings, trained.device)
        score = lambda case: ev.score_model(case, segmenter, space, scoring(settings))  # noqa: E731
    else:
        if space == "resampled":
            raise UsageError(
                "--space resampled needs a model (--checkpoint): label folders have no model space"
            )
        settings, weights_path = resolve_settings(sources, flags), None
        cases, unpaired = ev.label_map_cases(settings, pred_dir, gt_dir, split, data_dir is not None)
        _spare_cases(outputs, cases, overwrite)
        for kind, names in unpaired.items():
            if names:
                reporter.warn(f"{len(names)} unpaired {kind}: {', '.join(Path(n).name for n in names[:5])}")
        classes = settings.model.out_channels
        score = lambda case: ev.score_files(case, classes, scoring(settings))  # noqa: E731
    evaluation = ev.run_cases(cases, score, reporter)
    evaluation.unpaired = unpaired
    summary = ev.summarise(evaluation)
    context = {
        "space": space,
        "empty_as_zero": empty_as_zero,
        "surface_tolerance_mm": surface_tolerance,
        "postprocessing": PostProcessing.of(settings.inference).describe(),
        "checkpoint": str(weights_path) if weights_path else None,
        "settings": settings.to_dict(),
    }
    ev.write_results(evaluation, summary, context, output, csv_path)
    if reporter.mode != "json":
        stdout.print(ev.results_table(summary, f"unetr evaluate ({space} space)", surface_tolerance))
    reporter.event("summary", **summary)
    for name, problem in evaluation.failed.items():
        error_line(f"case {name} failed: {problem}")
    if evaluation.failed:
        raise typer.Exit(1)


def _spare_cases(outputs: dict[str, Path], cases: list, overwrite: bool) -> None:
    """evaluate's outputs are none of its cases' files (truths, predictions, images)."""
    from unetr_cli.guard import check_output, input_files

    files = input_files(f for case in cases for f in (case.truth, case.prediction, case.image) if f)
    for option, path in outputs.items():
        check_output(option, path, files, overwrite)
