"""`unetr demo`: the whole job on generated phantoms, start to finish, with the real engine.

Generate a BTCV-layout phantom dataset, train the `demo` preset for its fixed number of epochs (so the result
depends on the seed, not on how busy the machine is; an optional time cap says what it cut), score the
held-out validation phantoms per organ, and segment one more held-out scan on its own (finer) grid with
statistics and a preview. Fails loudly when training diverges or the model does not learn.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from unetr_cli.console import Reporter, stdout
from unetr_cli.errors import OutputExistsError, TrainingError

DEMO_SHAPE = (128, 128, 64)
DEMO_CASES = 12
DEMO_VALIDATION_FRACTION = 0.17  # 2 of 12 cases held out
HELD_OUT_SHAPE = (256, 256, 96)
MIN_MEAN_DICE = 0.3  # far above an untrained model (~0.02), far below the full demo's (README)
EXPECTED_TRAINING_MINUTES = 6.0  # the demo preset's 70 epochs on a 2-core AVX512-BF16 CPU (README)


@dataclass
class DemoResult:
    mean_dice: float
    held_out_dice: float
    epochs: int
    minutes: float
    artefacts: dict[str, Path] = field(default_factory=dict)


def run_demo(
    *,
    out: Path,
    minutes: float | None,
    cases: int,
    seed: int,
    device: str,
    overwrite: bool,
    reporter: Reporter,
) -> DemoResult:
    """Run the demo into `out`; `minutes`, when given, caps the training time."""
    from unetr_cli.phantoms.generator import make_phantom, write_dataset
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.engine import RunOptions, fit
    from unetr_cli.training.rundir import RunDir
    from unetr_cli.volumes import save_nifti

    started = time.monotonic()
    if (out / "dataset" / "dataset_0.json").exists() and not overwrite:
        raise OutputExistsError(out, "it holds an earlier demo; pass --overwrite to run it again")
    data, run_path, held_out = out / "dataset", out / "run", out / "held_out"

    reporter.info(
        f"[bold]1/4[/] generating {cases} phantoms of {'x'.join(map(str, DEMO_SHAPE))} voxels", markup=True
    )
    workers = min(cases, os.cpu_count() or 1)  # each case depends only on its seed: the same data in parallel
    write_dataset(
        data,
        cases,
        seed=seed,
        shape=DEMO_SHAPE,
        validation_fraction=DEMO_VALIDATION_FRACTION,
        workers=workers,
    )
    scan = make_phantom(seed * 100_003 + 10_000, HELD_OUT_SHAPE, orientation="LPS")
    scan_path = save_nifti(scan.image, scan.affine, held_out / "scan.nii.gz")
    save_nifti(scan.label, scan.affine, held_out / "truth.nii.gz")

    settings = resolve_settings(
        SettingsSources(preset="demo"),
        {
            "data.data_dir": data,
            "runtime.seed": seed,
            "runtime.logdir": run_path,
            "inference.device": device,
        },
    )
    epochs = settings.optimisation.max_epochs
    cap = f", at most {minutes:g} minutes" if minutes is not None else ""
    reporter.info(f"[bold]2/4[/] training the demo preset for {epochs} epochs{cap}", markup=True)
    options = RunOptions(
        overwrite=True,
        time_budget_s=minutes * 60.0 if minutes is not None else None,
        expected_minutes=EXPECTED_TRAINING_MINUTES if minutes is None else None,
        slow_hint="or pass --minutes M to cap the training (a weaker model, sooner)",
    )
    result = fit(settings, RunDir(run_path), reporter, options)
    cut = ""
    if result.epochs_done < epochs:
        cut = f"--minutes {minutes:g} stopped training after {result.epochs_done} of {epochs} epochs"
        reporter.warn(f"{cut}: the scores below are lower than the full demo's")

    reporter.info("[bold]3/4[/] scoring the held-out validation phantoms on their own grids", markup=True)
    checkpoint = run_path / "checkpoint_latest.pt"
    segmenter = _segmenter(checkpoint, settings)
    mean_dice = _evaluate(segmenter, checkpoint, reporter, out / "evaluation.json")
    if not mean_dice >= MIN_MEAN_DICE:
        short = (
            f"the demo model has not learnt yet: mean organ Dice {mean_dice:.3f} after "
            f"{result.epochs_done} epochs"
        )
        if not cut:  # the whole recipe ran: that is a failure
            raise TrainingError(f"{short} (expected at least {MIN_MEAN_DICE})")
        reporter.warn(f"{short}, as {cut}; a larger --minutes, or none, gives the full demo")

    reporter.info("[bold]4/4[/] segmenting a held-out scan in its own space", markup=True)
    predicted = _predict(segmenter, checkpoint, scan_path, held_out / "scan_seg.nii.gz")
    from unetr_cli.inference.evaluate import Case, Scoring, score_files

    held_out_case = Case("held-out", held_out / "truth.nii.gz", predicted)
    held_out_dice = score_files(held_out_case, 14, Scoring(with_distance=False))["mean_dice"]
    artefacts = {
        "dataset": data / "dataset_0.json",
        "checkpoint": checkpoint,
        "training curves": run_path / "progress.png",
        "metrics log": run_path / "metrics.jsonl",
        "evaluation": out / "evaluation.json",
        "segmentation": predicted,
        "organ report": held_out / "scan_seg_stats.csv",
        "preview": held_out / "scan_seg_preview.png",
    }
    return DemoResult(
        mean_dice, held_out_dice, result.epochs_done, (time.monotonic() - started) / 60.0, artefacts
    )


def _evaluate(segmenter, checkpoint: Path, reporter: Reporter, output: Path):
    from unetr_cli.data import read_datalist
    from unetr_cli.inference import evaluate as ev

    settings = segmenter.settings
    cases = ev.datalist_cases(read_datalist(settings.data.data_dir, settings.data.json_list).validation, None)
    evaluation = ev.run_cases(
        cases, lambda case: ev.score_model(case, segmenter, "original", ev.Scoring()), reporter
    )
    summary = ev.summarise(evaluation)
    ev.write_results(
        evaluation,
        summary,
        {"space": "original", "checkpoint": str(checkpoint), "settings": settings.to_dict()},
        output,
        None,
    )
    if reporter.mode != "json":
        stdout.print(ev.results_table(summary, "held-out phantoms", ev.Scoring().surface_tolerance_mm))
    return summary["mean_dice"] or 0.0


def _predict(segmenter, checkpoint: Path, scan: Path, output: Path) -> Path:
    from unetr_cli.inference.batch import PredictOptions, predict_batch

    options = PredictOptions(
        report=True,
        preview=True,
        overwrite=True,
        provenance={"checkpoint": str(checkpoint), "settings": segmenter.settings.to_dict()},
    )
    batch = predict_batch([scan], [output], lambda: segmenter, segmenter.device, options, Reporter("quiet"))
    if batch.failed:
        raise TrainingError(f"the demo could not segment {scan}: {batch.failed[scan]}")
    return output


def _segmenter(checkpoint: Path, settings):
    """The trained demo model, loaded once for scoring and prediction."""
    from unetr_cli.checkpoint import read_weights
    from unetr_cli.devices import resolve_device
    from unetr_cli.inference.scan import load_segmenter

    device = resolve_device(settings.inference.device)
    return load_segmenter(settings, device, lambda: read_weights(checkpoint))
