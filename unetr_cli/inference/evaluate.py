"""Scoring segmentations per organ and per case: a model over a datalist split, or label-map folders.

Two spaces: `original` scores on each scan's own grid (what a clinician sees); `resampled` scores in the
model's resampled and cropped space, the way the reference test.py and training validation do.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetr_cli.console import Reporter, debugging, error_line, stdout
from unetr_cli.errors import InputError, UsageError, failure_message
from unetr_cli.files import write_text
from unetr_cli.inference.postprocess import PostProcessing, postprocess
from unetr_cli.inference.reports import output_stem
from unetr_cli.labels import label_names
from unetr_cli.metrics import organ_metrics
from unetr_cli.volumes import OUTPUT_FORMATS, file_kind, load_scan, load_volume, scan_source, scan_suffix


@dataclass
class Case:
    """One thing to score: a truth label map and either a prediction file or an image to predict."""

    name: str
    truth: Path
    prediction: Path | None = None
    image: Path | None = None


@dataclass(frozen=True)
class Scoring:
    """How cases are scored: the reference's rule for organs missing from the truth, distances (HD95 and
    surface Dice at a tolerance), and post-processing to score beside the raw prediction."""

    empty_as_zero: bool = False
    with_distance: bool = True
    surface_tolerance_mm: float = 2.0
    cleanup: PostProcessing = PostProcessing()

    def record(self, case: Case, pred: np.ndarray, truth: np.ndarray, spacing, num_classes: int) -> dict:
        """The case's per-organ numbers; with post-processing, also those of the post-processed map."""
        record = _case_record(case, self._rows(pred, truth, spacing, num_classes), num_classes)
        if self.cleanup:
            cleaned, _ = postprocess(pred, float(np.prod(spacing)) / 1000.0, self.cleanup, num_classes)
            rows = self._rows(cleaned, truth, spacing, num_classes)
            after = _case_record(case, rows, num_classes)
            record["postprocessed"] = {"mean_dice": after["mean_dice"], "organs": after["organs"]}
        return record

    def _rows(self, pred, truth, spacing, num_classes: int) -> list[dict]:
        return organ_metrics(
            pred,
            truth,
            spacing,
            num_classes,
            self.empty_as_zero,
            self.with_distance,
            self.surface_tolerance_mm,
        )


@dataclass
class Evaluation:
    cases: list[dict] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unpaired: dict[str, list[str]] = field(default_factory=dict)


def _key(path: Path) -> str:
    return output_stem(path).name.removesuffix("_seg")


def _loose_key(path: Path) -> str:
    return re.sub(r"^(img|image|images|label|labels|seg|ct)[_-]?", "", _key(path), flags=re.IGNORECASE)


def pair_folders(pred_dir: Path, gt_dir: Path) -> tuple[list[Case], list[str], list[str]]:
    """Pair predictions with truths by name (`x_seg.nii.gz` ~ `x.nii.gz`; `img0001` ~ `label0001`)."""
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise InputError(folder, "folder not found")
    preds = sorted(p for p in pred_dir.iterdir() if _label_file(p))
    truths = sorted(p for p in gt_dir.iterdir() if _label_file(p))
    cases, used = [], set()
    for truth in truths:
        match = next((p for p in preds if _key(p) == _key(truth) and p not in used), None)
        match = match or next(
            (p for p in preds if _loose_key(p) == _loose_key(truth) and p not in used), None
        )
        if match is not None:
            used.add(match)
            cases.append(Case(_key(truth), truth, prediction=match))
    unpaired_truth = [str(t) for t in truths if t not in {c.truth for c in cases}]
    unpaired_pred = [str(p) for p in preds if p not in used]
    return cases, unpaired_pred, unpaired_truth


@dataclass(frozen=True)
class EvaluationRequest:
    """What `unetr evaluate` was asked: the cases (a datalist split predicted by a model, or --pred-dir
    against --gt-dir or the datalist's labels), the space and scoring, and where the numbers go."""

    split: str = "validation"
    space: str = "original"
    pred_dir: Path | None = None
    gt_dir: Path | None = None
    datalist_named: bool = False
    empty_as_zero: bool = False
    hd95: bool = True
    surface_tolerance_mm: float = 2.0
    output: Path | None = None
    csv: Path | None = None
    overwrite: bool = False

    @property
    def outputs(self) -> dict[str, Path]:
        return {option: path for option, path in (("--output", self.output), ("--csv", self.csv)) if path}

    def check(self, weights_files: list[Path], with_model: bool) -> None:
        """Before any weights are read: the choices fit together, and the outputs may be written (none is an
        input, an existing one only with --overwrite, their folders writable)."""
        from unetr_cli.files import ensure_writable_folder
        from unetr_cli.guard import check_output

        if self.space not in ("original", "resampled"):
            raise UsageError(f"--space {self.space}: expected original or resampled")
        if self.split not in ("validation", "training"):
            raise UsageError(f"--split {self.split}: expected validation or training")
        if with_model and (self.pred_dir is not None or self.gt_dir is not None):
            raise UsageError("give either a model (--checkpoint) or --pred-dir, not both")
        if not with_model and self.space == "resampled":
            raise UsageError(
                "--space resampled needs a model (--checkpoint): label folders have no model space"
            )
        if len({p.resolve() for p in self.outputs.values()}) < len(self.outputs):
            raise UsageError(f"--output and --csv name the same file ({self.output}); give each its own")
        for option, path in self.outputs.items():
            check_output(option, path, weights_files, self.overwrite)
            ensure_writable_folder(path.parent, option)

    def spare_cases(self, cases: list[Case]) -> None:
        """The outputs are none of the cases' files (truths, predictions, images)."""
        from unetr_cli.guard import check_output, input_files

        files = input_files(f for case in cases for f in (case.truth, case.prediction, case.image) if f)
        for option, path in self.outputs.items():
            check_output(option, path, files, self.overwrite)


def evaluate(request: EvaluationRequest, settings, weights, reporter: Reporter) -> Evaluation:
    """Score every case (predicted with `weights`, a `checkpoint.LoadedWeights`, or read from label-map
    folders when it is None), write the numbers, print the table and every failure."""
    cleanup = PostProcessing.of(settings.inference)
    scoring = Scoring(request.empty_as_zero, request.hd95, request.surface_tolerance_mm, cleanup)
    unpaired: dict[str, list[str]] = {}
    if weights is not None:
        from unetr_cli.devices import resolve_device
        from unetr_cli.inference.scan import load_segmenter

        cases = datalist_cases(split_entries(settings, request.split), None)
        request.spare_cases(cases)
        segmenter = load_segmenter(settings, resolve_device(settings.inference.device), lambda: weights)
        score = lambda case: score_model(case, segmenter, request.space, scoring)  # noqa: E731
    else:
        cases, unpaired = label_map_cases(
            settings, request.pred_dir, request.gt_dir, request.split, request.datalist_named
        )
        request.spare_cases(cases)
        for kind, names in unpaired.items():
            if names:
                reporter.warn(f"{len(names)} unpaired {kind}: {', '.join(Path(n).name for n in names[:5])}")
        classes = settings.model.out_channels
        score = lambda case: score_files(case, classes, scoring)  # noqa: E731
    evaluation = run_cases(cases, score, reporter)
    evaluation.unpaired = unpaired
    summary = summarise(evaluation)
    context = {
        "space": request.space,
        "empty_as_zero": request.empty_as_zero,
        "surface_tolerance_mm": request.surface_tolerance_mm,
        "postprocessing": cleanup.describe(),
        "checkpoint": str(weights.source) if weights is not None else None,
        "settings": settings.to_dict(),
    }
    write_results(evaluation, summary, context, request.output, request.csv)
    if reporter.mode != "json":
        title = f"unetr evaluate ({request.space} space)"
        stdout.print(results_table(summary, title, request.surface_tolerance_mm))
    reporter.event("summary", **summary)
    for name, problem in evaluation.failed.items():
        error_line(f"case {name} failed: {problem}")
    return evaluation


def _label_file(path: Path) -> bool:
    """A label map file in a folder: a scan format, or a DICOM-SEG (.dcm)."""
    if path.name.startswith(".") or not path.is_file():
        return False
    return bool(scan_suffix(path)) or (path.suffix.lower() == ".dcm" and file_kind(path) == "dicom-seg")


def datalist_cases(entries: list[dict], pred_dir: Path | None) -> list[Case]:
    """Cases of a datalist split; with `pred_dir`, each is paired with `<image name>_seg.nii.gz` there."""
    cases = []
    for entry in entries:
        image, truth = Path(entry["image"]), Path(entry["label"])
        if pred_dir is None:
            cases.append(Case(_key(image), truth, image=image))
            continue
        named = [pred_dir / f"{_key(image)}_seg{suffix}" for suffix in OUTPUT_FORMATS.values()]
        candidates = [*named, pred_dir / image.name, pred_dir / truth.name]
        found = next((c for c in candidates if c.exists()), candidates[0])
        cases.append(Case(_key(image), truth, prediction=found))
    return cases


def split_entries(settings, split: str) -> list[dict]:
    """The datalist entries of `split` (validation or training) for the configured fold."""
    from unetr_cli.data import read_datalist

    datalist = read_datalist(settings.data.data_dir, settings.data.json_list, settings.data.fold)
    entries = datalist.validation if split == "validation" else datalist.training
    if not entries:
        raise UsageError(f"{datalist.path}: the {split!r} split is empty")
    return entries


def label_map_cases(
    settings, pred_dir: Path | None, gt_dir: Path | None, split: str, datalist_named: bool
) -> tuple[list[Case], dict[str, list[str]]]:
    """Cases for scoring existing label maps: --pred-dir against --gt-dir (paired by name, with the unpaired
    names of either side) or, when a data dir was named, against the datalist's labels."""
    if pred_dir is not None and gt_dir is not None:
        cases, unpaired_pred, unpaired_truth = pair_folders(pred_dir, gt_dir)
        return cases, {"predictions": unpaired_pred, "truths": unpaired_truth}
    if pred_dir is not None and datalist_named:
        return datalist_cases(split_entries(settings, split), pred_dir), {}
    raise UsageError(
        "nothing to evaluate: give --checkpoint with --data-dir, or --pred-dir with --gt-dir or --data-dir"
    )


def _checked_labels(path: Path, num_classes: int, role: str):
    labels, info, _ = load_scan(scan_source(path), dtype=None)
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise InputError(path, f"the {role} has non-integer label values")
    ids = np.unique(labels)
    outside = [int(i) for i in ids if i < 0 or i >= num_classes]
    if outside:
        raise InputError(
            path, f"the {role} has label ids {outside[:8]} outside the label set 0..{num_classes - 1}"
        )
    return labels.astype(np.int64, copy=False), info


def score_files(case: Case, num_classes: int, scoring: Scoring) -> dict:
    """Score a prediction file against its truth on the truth's grid (a DICOM-SEG on either side, which
    covers only its labelled slices, placed on the other's grid)."""
    pred, pred_info = _checked_labels(case.prediction, num_classes, "prediction")
    truth, truth_info = _checked_labels(case.truth, num_classes, "truth")
    if pred_info.kind == "dicom-seg" and truth_info.kind != "dicom-seg":
        pred, pred_info = _placed(pred, pred_info, truth_info)
    elif truth_info.kind == "dicom-seg" and pred_info.kind != "dicom-seg":
        truth, truth_info = _placed(truth, truth_info, pred_info)
    if pred_info.shape != truth_info.shape:
        raise InputError(
            case.prediction,
            f"shape {pred_info.shape} differs from the truth's {truth_info.shape} ({case.truth})",
        )
    if not np.allclose(pred_info.affine, truth_info.affine, atol=1e-3, rtol=1e-4):
        raise InputError(
            case.prediction, f"affine differs from the truth's ({case.truth}): they are not on the same grid"
        )
    return scoring.record(case, pred, truth, truth_info.spacing, num_classes)


def _placed(labels: np.ndarray, info, other):
    """A DICOM-SEG's labels on the grid of the other label map, when its voxels are that grid's (else as
    they are, for the grid check to name)."""
    from unetr_cli.grid import on_grid

    placed = on_grid(labels, info.affine, other.shape, other.affine)
    return (labels, info) if placed is None else (placed, other)


def score_model(case: Case, segmenter, space: str, scoring: Scoring) -> dict:
    """Predict `case.image` with the shared inference code and score it in `space`."""
    settings = segmenter.settings
    classes = settings.model.out_channels
    if space == "resampled":
        from monai import transforms as T

        from unetr_cli.data import preprocessing

        _checked_labels(case.truth, classes, "truth")
        load_volume(scan_source(case.image))  # the original space's checks: readable, finite, 3D, fits
        sample = T.Compose(preprocessing(settings))({"image": str(case.image), "label": str(case.truth)})
        pred = segmenter.labels(sample["image"].as_tensor()[None]).numpy()
        truth = sample["label"].as_tensor()[0].numpy().round().astype(np.int64)
        return scoring.record(case, pred, truth, settings.data.spacing, classes)
    from unetr_cli.inference.scan import predict_scan

    truth, truth_info = _checked_labels(case.truth, classes, "truth")
    prediction = predict_scan(scan_source(case.image), segmenter)
    if prediction.labels.shape != truth.shape or not np.allclose(
        prediction.scan.affine, truth_info.affine, atol=1e-3, rtol=1e-4
    ):
        raise InputError(case.truth, f"is not on its image's grid ({case.image})")
    return scoring.record(case, prediction.labels, truth, truth_info.spacing, classes)


def _case_record(case: Case, rows: list[dict], num_classes: int) -> dict:
    names = label_names(num_classes)
    organs = {names[r["label"]]: {k: v for k, v in r.items() if k != "label"} for r in rows}
    dice = [r["dice"] for r in rows if r["dice"] is not None]
    return {
        "case": case.name,
        "truth": str(case.truth),
        "prediction": str(case.prediction) if case.prediction else None,
        "image": str(case.image) if case.image else None,
        "mean_dice": float(np.mean(dice)) if dice else None,
        "organs": organs,
    }


def run_cases(cases: list[Case], score, reporter: Reporter) -> Evaluation:
    """Score every case with `score(case)`; a failing case is reported and skipped."""
    if not cases:
        raise UsageError("nothing to evaluate: the split or folder pairing is empty")
    evaluation = Evaluation()
    with reporter.progress() as bars:
        task = bars.add_task("cases", total=len(cases), status="") if bars else None
        for case in cases:
            try:
                record = score(case)
                evaluation.cases.append(record)
                reporter.event(
                    "case", **{k: v for k, v in record.items() if k not in ("organs", "postprocessed")}
                )
            except Exception as err:  # one case's failure, named; the others are scored
                if debugging():
                    raise
                message = failure_message(err, case.image or case.prediction or case.truth)
                evaluation.failed[case.name] = message
                reporter.warn(f"skipped case {case.name}: {message}")
            if bars:
                bars.update(task, advance=1, status=case.name)
    return evaluation


def summarise(evaluation: Evaluation) -> dict:
    """Mean per organ over cases (ignoring n/a), mean over organs, and mean over cases; the same for the
    post-processed maps under "postprocessed" when they were scored."""
    summary = _summarise(evaluation.cases)
    if evaluation.cases and "postprocessed" in evaluation.cases[0]:
        summary["postprocessed"] = _summarise([case["postprocessed"] for case in evaluation.cases])
    return summary


def _summarise(cases: list[dict]) -> dict:
    if not cases:
        return {"organs": {}, "mean_dice": None, "cases": 0}
    summary = {}
    for organ in cases[0]["organs"]:
        values = {
            key: [c["organs"][organ][key] for c in cases if c["organs"][organ][key] is not None]
            for key in METRICS
        }
        summary[organ] = {key: (float(np.mean(v)) if v else None) for key, v in values.items()}
        summary[organ]["cases"] = len(values["dice"])
    organ_means = [s["dice"] for s in summary.values() if s["dice"] is not None]
    case_means = [c["mean_dice"] for c in cases if c["mean_dice"] is not None]
    return {
        "organs": summary,
        "mean_dice": float(np.mean(organ_means)) if organ_means else None,
        "mean_case_dice": float(np.mean(case_means)) if case_means else None,
        "cases": len(cases),
    }


METRICS = ("dice", "hd95_mm", "surface_dice", "volume_diff_ml")


def results_table(summary: dict, title: str, tolerance_mm: float):
    """Per organ: Dice, HD95, surface Dice, volume difference; with post-processing, Dice and HD95 after
    it."""
    from rich.table import Table

    after = summary.get("postprocessed")
    table = Table(title=f"{title}: {summary['cases']} case(s)", title_justify="left")
    columns = ["organ", "Dice", "HD95 mm", f"NSD {tolerance_mm:g} mm", "vol. diff ml"]
    columns += ["Dice post", "HD95 post"] if after else []
    for column in [*columns, "cases"]:
        table.add_column(column, justify="left" if column == "organ" else "right")
    for organ, values in summary["organs"].items():
        cells = [
            _fmt(values["dice"], 3),
            _fmt(values["hd95_mm"], 1),
            _fmt(values["surface_dice"], 3),
            _fmt(values["volume_diff_ml"], 1),
        ]
        if after:
            cells += [_fmt(after["organs"][organ]["dice"], 3), _fmt(after["organs"][organ]["hd95_mm"], 1)]
        table.add_row(organ, *cells, str(values["cases"]))
    means = [f"[bold]{_fmt(summary['mean_dice'], 3)}[/]", "", "", ""]
    means += [f"[bold]{_fmt(after['mean_dice'], 3)}[/]", ""] if after else []
    table.add_row("[bold]mean over organs[/]", *means, "")
    return table


def _fmt(value, digits: int) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def write_results(
    evaluation: Evaluation, summary: dict, context: dict, json_path: Path | None, csv_path: Path | None
) -> None:
    """Every per-case, per-organ number plus the settings and checkpoint used, as JSON and/or CSV."""
    if json_path is not None:
        payload = {
            **context,
            "summary": summary,
            "cases": evaluation.cases,
            "failed": evaluation.failed,
            "unpaired": evaluation.unpaired,
        }
        write_text(json_path, json.dumps(payload, indent=2) + "\n")
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        columns = ["dice", "hd95_mm", "surface_dice", "volume_pred_ml", "volume_true_ml", "volume_diff_ml"]
        after = bool(evaluation.cases) and "postprocessed" in evaluation.cases[0]
        post_columns = ["dice", "hd95_mm", "surface_dice"] if after else []
        writer.writerow(["case", "organ", *columns, *(f"{c}_postprocessed" for c in post_columns)])
        for case in evaluation.cases:
            for organ, m in case["organs"].items():
                post = case["postprocessed"]["organs"][organ] if after else {}
                writer.writerow(
                    [case["case"], organ, *(m[c] for c in columns), *(post[c] for c in post_columns)]
                )
        write_text(csv_path, buffer.getvalue())
