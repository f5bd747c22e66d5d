"""What `--keep-largest` and `--min-size` do to the scores: `unetr evaluate` with and without post-processing
on the `unetr demo` model's held-out phantoms, and on a deliberately noisy prediction of them (the model's
label maps with specks of random organ labels and planted fragments of one-piece organs added).

    python benchmarks/bench_postprocess.py [--demo DIR] [--min-size 0.5]

`--demo` is the folder of a finished `unetr demo` (default: the cached one in benchmarks/.data/demo, made on
first use).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import DATA, run_measured, trained_checkpoint, write_result

SPECKS = 40  # 2x2x2-voxel specks of random organ labels per case (below --min-size at the demo's grid)
FRAGMENTS = 3  # 5x5x5-voxel blobs of one-piece organs, far from the organ (above --min-size)
ONE_PIECE = (1, 2, 3, 6, 7)  # spleen, kidneys, liver, stomach


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", type=Path, default=None, help="folder of a finished `unetr demo`")
    parser.add_argument("--min-size", type=float, default=0.5, help="ml, passed to --min-size")
    args = parser.parse_args()
    demo = args.demo or trained_checkpoint().parents[1]
    checkpoint = demo / "run" / "checkpoint_latest.pt"
    work = DATA / "postprocess"
    cleanup = ["--keep-largest", "--min-size", str(args.min_size)]

    held_out = _evaluate(
        ["--data-dir", str(demo / "dataset"), "--checkpoint", str(checkpoint), *cleanup],
        work / "held_out.json",
    )
    predictions, truths = _predict_validation(demo, checkpoint, work)
    noisy = work / "noisy"
    for index, prediction in enumerate(predictions):
        _add_noise(prediction, noisy / prediction.name, seed=index)
    noisy_scores = _evaluate(
        ["--pred-dir", str(noisy), "--gt-dir", str(truths), *cleanup], work / "noisy.json"
    )
    path = write_result(
        "postprocess",
        {
            "demo": str(demo),
            "min_size_ml": args.min_size,
            "noise": {"specks": SPECKS, "fragments": FRAGMENTS},
            "held_out": held_out,
            "noisy": noisy_scores,
        },
    )
    print(path)


def _evaluate(arguments: list[str], output: Path) -> dict:
    """`unetr evaluate` with post-processing; the means with and without it."""
    command = [sys.executable, "-m", "unetr_cli", "evaluate", *arguments, "--output", str(output), "-q"]
    run_measured(command)
    summary = json.loads(output.read_text())["summary"]
    return {"before": _means(summary), "after": _means(summary["postprocessed"]), "cases": summary["cases"]}


def _means(summary: dict) -> dict:
    import numpy as np

    def mean(key: str) -> float:
        values = [v[key] for v in summary["organs"].values() if v[key] is not None]
        return float(np.mean(values))

    return {
        "dice": summary["mean_dice"],
        "hd95_mm": mean("hd95_mm"),
        "surface_dice": mean("surface_dice"),
        "per_organ_dice": {organ: v["dice"] for organ, v in summary["organs"].items()},
    }


def _predict_validation(demo: Path, checkpoint: Path, work: Path) -> tuple[list[Path], Path]:
    """The demo model's label maps of the validation phantoms, and a folder of their ground truths."""
    from unetr_cli.data import read_datalist

    datalist = read_datalist(demo / "dataset", "dataset_0.json")
    truths, predictions = work / "truth", []
    truths.mkdir(parents=True, exist_ok=True)
    for case in datalist.validation:
        name = Path(case["image"]).name
        target = truths / name
        target.unlink(missing_ok=True)
        target.symlink_to(Path(case["label"]).resolve())
        predictions.append(work / "pred" / name)
    images = [str(case["image"]) for case in datalist.validation]
    run_measured(
        [
            sys.executable,
            "-m",
            "unetr_cli",
            "predict",
            *images,
            "-o",
            str(work / "pred"),
            "--checkpoint",
            str(checkpoint),
            "--overwrite",
            "-q",
        ]
    )
    return [work / "pred" / p.name.replace(".nii.gz", "_seg.nii.gz") for p in predictions], truths


def _add_noise(prediction: Path, output: Path, seed: int) -> None:
    """Specks of random organ ids inside the body, and blobs of one-piece organs far from each organ."""
    import numpy as np

    from unetr_cli.volumes import load_volume, save_nifti

    labels, info = load_volume(prediction, dtype=None)
    labels = labels.astype(np.uint8)
    rng = np.random.default_rng(seed)
    inside = np.argwhere(labels > 0)
    for corner in inside[rng.choice(len(inside), SPECKS)]:
        x, y, z = corner
        labels[x : x + 2, y : y + 2, z : z + 2] = rng.integers(1, 14)
    for organ in rng.choice(ONE_PIECE, FRAGMENTS, replace=False):
        centre = np.argwhere(labels == organ).mean(axis=0)
        far = inside[np.argmax(np.linalg.norm(inside - centre, axis=1))]
        x, y, z = np.clip(far - 2, 0, np.asarray(labels.shape) - 5)
        labels[x : x + 5, y : y + 5, z : z + 5] = organ
    output.parent.mkdir(parents=True, exist_ok=True)
    save_nifti(labels, info.affine, output.with_name(output.name.replace("_seg", "")))


if __name__ == "__main__":
    main()
