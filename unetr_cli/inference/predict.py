"""`unetr predict` in two steps around reading the weights: `plan` finds and checks the inputs and plans the
outputs (every refusal that needs no model happens here), `run` segments the scans here or shares them among
torchrun processes and says how it went."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from unetr_cli.console import Reporter, error_line
from unetr_cli.errors import DataError
from unetr_cli.inference.batch import BatchResult, PredictOptions
from unetr_cli.inference.inputs import check_outputs, choose_format, expand_inputs, plan_outputs, preflight


@dataclass(frozen=True)
class PredictPlan:
    """The scans to segment, their outputs, the inputs refused before any model, and how to write."""

    scans: list
    targets: list[Path]
    refused: dict
    options: PredictOptions


def plan(
    inputs: list[str],
    output: Path,
    series: str | None,
    output_format: str | None,
    options: PredictOptions,
    reporter: Reporter,
) -> PredictPlan:
    """Find the scans, refuse what needs no model to refuse (saying so as it goes), and plan the outputs.

    Raises:
        DataError: every input refused.
    """
    scans, skipped, unreadable = expand_inputs(inputs, series, options.allow_non_ct)
    refused = unreadable | preflight(scans, options.allow_non_ct)
    scans = [s for s in scans if s not in refused]
    if not scans:
        raise DataError("\n".join([*skipped, *refused.values()]))
    _announce(reporter, scans, skipped, refused)
    fmt = choose_format(output, output_format, scans)
    options = dataclasses.replace(options, output_format=fmt)
    targets = plan_outputs(scans, output, fmt)
    check_outputs(scans, targets, options)
    return PredictPlan(scans, targets, refused, options)


def run(
    plan: PredictPlan, weights, settings, trust_torchscript: bool, launch, reporter: Reporter
) -> BatchResult:
    """Segment the planned scans with `weights` (a `checkpoint.LoadedWeights`) and `settings`, in this process
    or on torchrun processes (`launch`), then print the summary and every failure."""
    options = dataclasses.replace(
        plan.options, provenance={"checkpoint": weights.source, "settings": settings.to_dict()}
    )
    from unetr_cli.devices import requested_device, resolve_device

    processes = launch.processes(requested_device(settings.inference.device))
    if processes:
        from unetr_cli.inference.worker import PredictJob, predict_on_processes

        job = PredictJob(
            plan.scans,
            plan.targets,
            options,
            settings,
            Path(weights.source),
            trust_torchscript,
            reporter.mode,
        )
        result = predict_on_processes(job, launch, processes)  # each process reads the weights itself
    else:
        from unetr_cli.inference.batch import predict_batch
        from unetr_cli.inference.scan import load_segmenter

        device = resolve_device(settings.inference.device)
        result = predict_batch(
            plan.scans,
            plan.targets,
            lambda: load_segmenter(settings, device, lambda: weights, reporter),
            device,
            options,
            reporter,
        )
    result.failed |= plan.refused
    _summarise(result, reporter)
    return result


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


def report_ready(reporter: Reporter, device) -> None:
    """How long start-up took (imports, device, weights, model): the `ready` event of --json."""
    from unetr_cli import STARTED_AT

    seconds = round(time.monotonic() - STARTED_AT, 3)
    reporter.info(f"model ready on {device} after {seconds:.1f} s")
    reporter.event("ready", startup_s=seconds, device=str(device))


def _summarise(result: BatchResult, reporter: Reporter) -> None:
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
    for source, problem in result.failed.items():
        error_line(problem if str(source) in problem else f"{source}: {problem}")
    if result.flagged:
        error_line(
            f"{len(result.flagged)} scan(s) flagged (--fail-on-flags): {', '.join(map(str, result.flagged))}"
        )
