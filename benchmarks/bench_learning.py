"""What a training recipe learns, per organ: train a preset (with optional `--set` changes) for its fixed
number of epochs on the `unetr demo` dataset, then score it with `unetr evaluate` on the demo's held-out
phantoms and on a second, differently generated set (other seeds, grid sizes, spacings and storage orders,
some oblique), which is never used while training or choosing.

    python benchmarks/bench_learning.py --name demo                       # the demo preset as shipped
    python benchmarks/bench_learning.py --name lr3 --set optimisation.lr=3e-3
    python benchmarks/bench_learning.py --name tiny --preset tiny-cpu --set optimisation.max_epochs=400
    python benchmarks/bench_learning.py --name more --training-cases 40    # more phantoms, same held-out two

Writes results/learning_NAME.json: per-organ Dice on both sets, the per-organ validation Dice curve of the
run (metrics.jsonl) and the training time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import DATA, run_measured, write_result

DEMO_TRAINING_CASES = 10  # the demo's 12 phantoms less its 2 held out
SECOND_SET = [  # (seed, shape, orientation, oblique degrees): unlike the demo's 128x128x64 LPS/RAS/LAS grids
    (900_001, (160, 160, 80), "RAS", 0.0),
    (900_002, (112, 112, 48), "LPS", 0.0),
    (900_003, (144, 144, 56), "LAS", 0.0),
    (900_004, (128, 128, 96), "PIL", 0.0),
    (900_005, (176, 176, 64), "LPS", 8.0),
    (900_006, (96, 96, 72), "RAS", 0.0),
    (900_007, (136, 136, 60), "LPI", 0.0),
    (900_008, (152, 152, 88), "LPS", 12.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="result name: results/learning_NAME.json")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], help="GROUP.FIELD=VALUE, as `unetr train -s`")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--training-cases",
        type=int,
        default=DEMO_TRAINING_CASES,
        help="phantoms to train on: the demo's 10, or more of the same generator seed (same held-out two)",
    )
    parser.add_argument(
        "--score-only", action="store_true", help="score the existing run NAME again (pass its --set too)"
    )
    args = parser.parse_args()
    if args.training_cases < DEMO_TRAINING_CASES:
        parser.error(f"--training-cases must be at least the demo's {DEMO_TRAINING_CASES}")

    demo_data, second = demo_dataset(args.training_cases), second_dataset()
    run = DATA / "learning" / args.name
    command = [
        sys.executable,
        "-m",
        "unetr_cli",
        "train",
        "--preset",
        args.preset,
        "--data-dir",
        str(demo_data),
        "--logdir",
        str(run),
        "--seed",
        str(args.seed),
        "--overwrite",
        "--json",
    ]
    command += [item for assignment in args.set for item in ("-s", assignment)]
    if not args.score_only:
        run_measured(command)
    checkpoint = run / "checkpoint_latest.pt"
    scores = {
        name: _evaluate(data, split, checkpoint, run / f"evaluation_{name}.json")
        for name, data, split in (
            ("demo_held_out", demo_data, "validation"),
            ("second_set", second, "training"),
        )
    }
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves = [
        {"epoch": r["epoch"], "mean_dice": r["mean_dice"], "dice": r["dice"]}
        for r in records
        if "mean_dice" in r
    ]
    trained = {"epochs": records[-1]["epoch"], "training_minutes": records[-1]["elapsed_s"] / 60.0}
    path = write_result(
        f"learning_{args.name}",
        {
            "preset": args.preset,
            "set": args.set,
            "seed": args.seed,
            "training_cases": args.training_cases,
            **trained,
            **scores,
            "curves": curves,
        },
    )
    for name, score in scores.items():
        low = min(score["organs"].items(), key=lambda item: item[1])
        print(f"{name}: mean organ Dice {score['mean_dice']:.3f}, lowest {low[0]} {low[1]:.3f}")
    print(f"{trained['epochs']} epochs, {trained['training_minutes']:.1f} training minutes -> {path}")


def _evaluate(data: Path, split: str, checkpoint: Path, output: Path) -> dict:
    """`unetr evaluate` of one split of `data` on the scans' own grids: per-organ Dice."""
    command = [
        sys.executable,
        "-m",
        "unetr_cli",
        "evaluate",
        "--data-dir",
        str(data),
        "--split",
        split,
        "--checkpoint",
        str(checkpoint),
        "--no-hd95",
        "--output",
        str(output),
        "-q",
    ]
    run_measured(command)
    summary = json.loads(output.read_text())["summary"]
    return {
        "mean_dice": summary["mean_dice"],
        "organs": {organ: values["dice"] for organ, values in summary["organs"].items()},
        "cases": summary["cases"],
    }


def _generator_version() -> str:
    """A short hash of the phantom generator's code: cached datasets are remade when it changes."""
    import hashlib

    from unetr_cli.phantoms import anatomy, generator

    code = b"".join(Path(module.__file__).read_bytes() for module in (anatomy, generator))
    return hashlib.sha256(code).hexdigest()[:8]


def demo_dataset(training_cases: int = DEMO_TRAINING_CASES) -> Path:
    """The dataset `unetr demo` trains on (its seed 0, cached); with more `training_cases`, further phantoms
    of the same seed join its training list while its two held-out phantoms stay the validation list."""
    from unetr_cli.commands.demo_recipe import DEMO_CASES, DEMO_SHAPE, DEMO_VALIDATION_FRACTION
    from unetr_cli.files import write_text
    from unetr_cli.phantoms.generator import write_dataset

    name = "demo_dataset" if training_cases == DEMO_TRAINING_CASES else f"training_{training_cases}"
    folder = DATA / "learning" / f"{name}_{_generator_version()}"
    if not (folder / "dataset_0.json").exists():
        extra = training_cases - DEMO_TRAINING_CASES
        datalist = write_dataset(
            folder,
            DEMO_CASES + extra,
            seed=0,
            shape=DEMO_SHAPE,
            validation_fraction=DEMO_VALIDATION_FRACTION,
            workers=2,
        )
        if extra:
            lists = json.loads(datalist.read_text())
            entries = lists["training"] + lists["validation"]
            held_out = {f"imagesTr/img{index:04d}.nii.gz" for index in (DEMO_CASES - 1, DEMO_CASES)}
            lists["validation"] = [entry for entry in entries if entry["image"] in held_out]
            lists["training"] = [entry for entry in entries if entry["image"] not in held_out]
            lists["numTraining"], lists["numValidation"] = len(lists["training"]), len(lists["validation"])
            write_text(datalist, json.dumps(lists, indent=2) + "\n")
    return folder


def second_dataset() -> Path:
    """`SECOND_SET`, every case in the training list (scored with `--split training`; cached)."""
    from unetr_cli.files import write_text
    from unetr_cli.phantoms.generator import make_phantom
    from unetr_cli.volumes import save_nifti

    folder = DATA / "learning" / f"second_set_{_generator_version()}"
    if not (folder / "dataset_0.json").exists():
        entries = []
        for seed, shape, orientation, oblique in SECOND_SET:
            phantom = make_phantom(seed, shape, orientation=orientation, oblique_degrees=oblique)
            image = save_nifti(phantom.image, phantom.affine, folder / f"img{seed}.nii.gz")
            label = save_nifti(phantom.label, phantom.affine, folder / f"label{seed}.nii.gz")
            entries.append({"image": image.name, "label": label.name})
        write_text(folder / "dataset_0.json", json.dumps({"training": entries, "validation": []}, indent=2))
    return folder


if __name__ == "__main__":
    main()
