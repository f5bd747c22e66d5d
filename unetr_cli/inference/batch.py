"""Batch prediction: segment each planned scan, write label maps and what goes with them (`inputs` finds the
scans and plans their outputs).

One failing case is reported and skipped; the summary at the end says which failed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from unetr_cli.console import Reporter, debugging
from unetr_cli.errors import InputError, OutputExistsError, failure_message
from unetr_cli.hounsfield import refusal, value_problem
from unetr_cli.inference.orientation import (
    find_body,
    orientation_after_inference,
    orientation_before_inference,
)
from unetr_cli.inference.plausibility import ScanReport, assess, report_paths, write_report
from unetr_cli.inference.postprocess import PostProcessing, postprocess
from unetr_cli.inference.reports import output_stem, write_label_sidecars, write_preview
from unetr_cli.inference.scan import Scan, read_scan, segment_scan, warm_up
from unetr_cli.inference.segmenter import Segmenter
from unetr_cli.inference.stages import StageTimes
from unetr_cli.volumes import save_itk, save_nifti, save_segmentation_nrrd


@dataclass
class PredictOptions:
    """What to write besides the label maps, what to do with existing outputs, and which doubts about a
    scan fail it: `strict_orientation` refuses a scan whose orientation looks wrong (nothing is written),
    `fail_on_flags` counts a flagged scan as failed (its outputs are written); `allow_non_ct` segments scans
    whose voxels are not Hounsfield units."""

    report: bool = False
    preview: bool = False
    strict_orientation: bool = False
    fail_on_flags: bool = False
    allow_non_ct: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    output_format: str = "nifti"
    provenance: dict = field(default_factory=dict)


@dataclass
class BatchResult:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)
    flagged: dict[Path, str] = field(default_factory=dict)  # with --fail-on-flags: the report's summary line


def unit_files(target: Path, options: PredictOptions) -> list[Path]:
    """The files of a label map's unit in the order they are written: the sidecars, the report and preview
    when asked for, the label map last."""
    stem = output_stem(target)
    files = [stem.with_suffix(".json"), stem.with_suffix(".ctbl")]
    if options.report:
        files += report_paths(stem)
    if options.preview:
        files.append(stem.with_name(stem.name + "_preview.png"))
    return [*files, target]


def is_complete(target: Path, options: PredictOptions) -> bool:
    """A label map with every file that goes with it (written before it, so a map alone is a finished one
    only if these exist too: an earlier run may have been asked for less)."""
    return all(p.is_file() for p in unit_files(target, options))


def predict_batch(
    inputs: list[Path],
    outputs: list[Path],
    load_segmenter: Callable[[], Segmenter],
    device: torch.device,
    options: PredictOptions,
    reporter: Reporter,
) -> BatchResult:
    """Segment every input into its output with the segmenter `load_segmenter` builds on `device`; a failure
    is reported and the batch goes on.

    The model is built only once a scan has been decoded and has passed the checks that need no model
    (so a batch of scans that are all refused never loads it); on a GPU the CUDA context starts meanwhile
    (`devices.warming_up`), and `load_segmenter` warms up the stages that need no model while it builds
    (`scan.warm_up_stages`). The model then runs blank windows while that scan is preprocessed
    (`scan.warm_up`). Decoding and checking the next scan and writing the last one's outputs run in the two
    helper threads on a GPU, while it works on the current scan (zlib and numpy, the bulk of them, run
    outside the interpreter lock). On the CPU those steps run one after another, as the cores are all busy
    with the model.
    """
    from unetr_cli.devices import warming_up

    result = BatchResult()
    todo = []
    for source, target in zip(inputs, outputs, strict=True):
        if options.skip_existing and is_complete(target, options):
            result.skipped.append(target)
            _recall_flags(result, source, target, options, reporter)
        else:
            # Replaced only when asked to, or when finishing a unit of its own: decided now, so an output
            # another process writes meanwhile is never replaced.
            todo.append((source, target, options.overwrite or (options.skip_existing and target.exists())))
    if not todo:
        return result
    overlap = device.type == "cuda"
    segmenter: Segmenter | None = None
    with (
        ThreadPoolExecutor(1, "unetr-read") as reader,
        ThreadPoolExecutor(1, "unetr-write") as writer,
    ):
        upcoming = reader.submit(_read, todo[0][0], options)
        read = reader.submit if overlap else _now
        write = writer.submit if overlap else _now
        with reporter.progress() as bars:
            task = (
                bars.add_task("scans", total=len(inputs), completed=len(result.skipped), status="")
                if bars
                else None
            )

            def advance(source: Path) -> None:
                if bars:
                    bars.update(task, advance=1, status=source.name)

            def finish(pending: _Writing) -> None:
                _finish_write(result, reporter, pending, options)
                advance(pending.source)

            writes: list[_Writing] = []  # at most MAX_PENDING_WRITES scans wait in memory
            for index, (source, target, replace) in enumerate(todo):
                reading, started, stages = upcoming, time.monotonic(), StageTimes(device)
                if index + 1 < len(todo):
                    upcoming = read(_read, todo[index + 1][0], options)
                try:
                    with warming_up(device) if segmenter is None else contextlib.nullcontext():
                        decoded = reading.result()
                    if segmenter is None:
                        segmenter = load_segmenter()
                        warm_up(segmenter)
                    stages.update(decoded.seconds)
                    scan = decoded.scan
                    made = _segment(decoded, segmenter, options, reporter, stages)
                except Exception as err:
                    _record_failure(result, reporter, source, err)
                    advance(source)
                else:
                    classes = segmenter.settings.model.out_channels
                    written = write(_write_outputs, scan, made, target, options, classes, replace)
                    writes.append(_Writing(source, target, started, stages, written))
                for note in segmenter.notes if segmenter is not None else []:
                    reporter.warn(note)
                if segmenter is not None:
                    segmenter.notes.clear()
                while writes and (writes[0].written.done() or len(writes) > MAX_PENDING_WRITES):
                    finish(writes.pop(0))
            for pending in writes:
                finish(pending)
    return result


MAX_PENDING_WRITES = 2


@dataclass
class _Writing:
    """A segmented scan whose outputs are being written (`written` gives the report and the seconds)."""

    source: Path
    target: Path
    started: float
    stages: StageTimes
    written: Future


def _now(function, *args) -> Future:
    """Run `function` here and now, as a finished Future (the no-overlap path)."""
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as err:
        future.set_exception(err)
    return future


@dataclass
class _Decoded:
    """A decoded scan with its body found and the doubts about its orientation that the body and spine
    raise before inference, and the seconds each took."""

    scan: Scan
    body: object
    problems: list[str]
    seconds: dict[str, float]


def _read(source, options: PredictOptions) -> _Decoded:
    """Decode a scan, check that its voxels are Hounsfield units (unless `options.allow_non_ct`) and check
    its orientation (on a GPU in the reader thread, beside the GPU's work)."""
    started = time.perf_counter()
    if isinstance(source, Path) and not source.exists():
        raise InputError(source, "file not found")
    scan = read_scan(source)
    problem = None if options.allow_non_ct else value_problem(scan.image)
    if problem is not None:
        raise InputError(scan.path, refusal(problem))
    decoded = time.perf_counter()
    body = find_body(scan.image, scan.affine)
    problems = orientation_before_inference(body)
    seconds = {"read": decoded - started, "orientation": time.perf_counter() - decoded}
    return _Decoded(scan, body, problems, seconds)


def _segment(
    decoded: _Decoded, segmenter: Segmenter, options: PredictOptions, reporter: Reporter, stages: StageTimes
) -> Made:
    """A decoded scan's post-processed label map, its orientation checked before and after inference."""
    scan, classes = decoded.scan, segmenter.settings.model.out_channels
    cleanup = PostProcessing.of(segmenter.settings.inference)
    _check_orientation(scan, decoded.problems, options, reporter)
    labels = segment_scan(scan, segmenter, stages)
    with stages.stage("postprocess"):
        labels, removed = postprocess(labels, scan.info.voxel_ml, cleanup, classes)
    with stages.stage("orientation"):
        problems = orientation_after_inference(labels, scan.affine, decoded.body)
        _check_orientation(scan, problems, options, reporter)
    return Made(labels, segmenter.take_agreement(), removed, cleanup)


@dataclass
class Made:
    """A scan's label map and how it was made: the TTA agreement per class and the voxels post-processing
    removed per class."""

    labels: object
    agreement: dict[int, float] | None
    removed: dict[int, int]
    cleanup: PostProcessing


def _check_orientation(scan: Scan, problems: list[str], options: PredictOptions, reporter: Reporter) -> None:
    """Say when the scan's orientation looks wrong (`problems`: before inference from the body and spine,
    after it from the organs). With --strict-orientation the scan is refused."""
    if problems and options.strict_orientation:
        raise InputError(scan.path, f"{problems[0]}; refused (--strict-orientation)")
    for problem in problems:
        reporter.warn(f"{scan.path}: {problem}")


def _write_outputs(
    scan: Scan, made: Made, target: Path, options: PredictOptions, classes: int, replace: bool
):
    """The sidecars first and the label map last: a label map on disk means its unit is complete. The unit
    is written holding the output (`guard.claimed`): an output that appeared meanwhile (another process) is
    replaced only when `replace` (--overwrite, or --skip-existing finishing an incomplete unit); a unit that
    fails halfway (a full disk) leaves none of the files it created. Returns the plausibility report when one
    was asked for, the seconds writing took, and what to tell the user about the label map written (what a
    DICOM-SEG's series lacked)."""
    from unetr_cli.guard import claimed

    started = time.perf_counter()
    unit = unit_files(target, options)
    with claimed(target):
        if target.exists() and not replace:
            raise OutputExistsError(target, "it was written meanwhile by another process; kept")
        existed = {p for p in unit if p.exists()}
        try:
            report, notes = _write_unit(scan, made, target, options, classes)
        except BaseException:
            for path in unit:
                if path not in existed:
                    path.unlink(missing_ok=True)
            raise
    return report, time.perf_counter() - started, notes


def _write_unit(scan: Scan, made: Made, target: Path, options: PredictOptions, classes: int):
    provenance = {"source": str(scan.path), **options.provenance}
    if made.cleanup:
        removed = {str(k): v for k, v in made.removed.items()}
        provenance["postprocessing"] = {"steps": made.cleanup.describe(), "voxels_removed": removed}
    write_label_sidecars(target, classes, provenance)
    report = None
    if options.report:
        report = assess(made.labels, scan.affine, classes, scan.image, made.agreement)
        write_report(output_stem(target), report, str(scan.path))
    if options.preview:
        write_preview(target, scan.image, made.labels, scan.affine, classes, title=scan.path.name)
    notes = save_label_map(made.labels, scan, target, options.output_format, classes, options.provenance)
    return report, notes


def _recall_flags(
    result: BatchResult, source, target: Path, options: PredictOptions, reporter: Reporter
) -> None:
    """With --fail-on-flags, a scan skipped because its unit is complete counts as flagged if its stored
    report is: a rerun with --skip-existing does not turn a flagged scan into a pass."""
    if not options.fail_on_flags:
        return
    json_path, _ = report_paths(output_stem(target))
    try:
        stored = json.loads(json_path.read_text())
    except (OSError, ValueError):
        result.failed[source] = f"{json_path}: unreadable report; rerun without --skip-existing"
        return
    if stored.get("flagged") or stored.get("orientation") or stored.get("empty"):
        what = ", ".join(stored.get("flagged") or []) or "orientation or an empty map"
        result.flagged[source] = f"{source}: flagged in its existing report {json_path.name} ({what})"
        reporter.warn(result.flagged[source])


def save_label_map(labels, scan: Scan, target: Path, fmt: str, classes: int, provenance: dict) -> list[str]:
    """Write the label map in `fmt` on the scan's grid (NIfTI keeps a NIfTI input's qform/sform codes).
    Returns what to tell the user about it: for DICOM-SEG, the UIDs generated and the patient and study
    attributes left empty because the series lacks them."""
    if fmt == "dicom-seg":
        from unetr_cli.dicom import write_segmentation

        missing = write_segmentation(labels, scan.header, target, classes, provenance)
        if not missing:
            return []
        line = (
            f"{scan.path}: the series lacks {', '.join(missing)}: its DICOM-SEG {target.name} carries "
            "stand-ins (generated UIDs, empty Type 2 values)"
        )
        if any(m.endswith("UID") for m in missing):
            line += "; with generated UIDs a PACS files it beside the series, not with it"
        return [line]
    if fmt == "nifti":
        like = scan.header if scan.info.kind == "nifti" else None
        save_nifti(labels, scan.affine, target, like=like)
    elif fmt == "seg-nrrd":
        save_segmentation_nrrd(labels, scan.affine, target, classes)
    else:
        save_itk(labels, scan.affine, target)
    return []


def _finish_write(result: BatchResult, reporter: Reporter, pending: _Writing, options: PredictOptions):
    source, target, stages = pending.source, pending.target, pending.stages
    try:
        report: ScanReport | None
        report, stages["write"], notes = pending.written.result()
    except Exception as err:
        _record_failure(result, reporter, source, err, target)
        return
    result.written.append(target)
    for note in notes:
        reporter.warn(note)
    seconds = time.monotonic() - pending.started
    reporter.info(f"{source} -> {target} ({seconds:.1f} s)")
    reporter.event(
        "predicted", input=str(source), output=str(target), seconds=round(seconds, 3), stages=stages.rounded()
    )
    if report is None:
        return
    line = report.summary(str(source))
    (reporter.warn if report.has_flags else reporter.info)(line)
    reporter.event(
        "report",
        input=str(source),
        flagged=report.to_dict()["flagged"],
        empty=report.empty,
        orientation=report.orientation,
    )
    if report.has_flags and options.fail_on_flags:
        result.flagged[source] = line


def _record_failure(
    result: BatchResult, reporter: Reporter, source: Path, err: Exception, target: Path | None = None
) -> None:
    if debugging():
        raise err
    message = failure_message(err, target or source)
    result.failed[source] = message
    reporter.warn(f"skipped: {message}")
    reporter.event("failed", input=str(source), error=message)
