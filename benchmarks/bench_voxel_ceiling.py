"""The best mean organ Dice any model working at a given voxel spacing can reach on the scans' own grids:
the true labels carried to the model's grid (RAS, resampled as `unetr train` and `unetr predict` do, as
perfect class probabilities) and back with the probabilities, as `unetr predict` carries a prediction back.

    python benchmarks/bench_voxel_ceiling.py 6x6x8 5x5x6 4x4x5

Scores the demo's held-out phantoms and bench_learning.py's second set; writes results/voxel_ceiling.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_learning import demo_dataset, second_dataset
from common import write_result

from unetr_cli.labels import BTCV_LABELS

CLASSES = 14
ORGANS = [name for label, name in BTCV_LABELS.items() if label]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spacings", nargs="+", help="model voxel spacings in mm, e.g. 6x6x8")
    args = parser.parse_args()
    sets = {"demo_held_out": _cases(demo_dataset(), "validation"), "second_set": _cases(second_dataset())}
    results = {}
    for text in args.spacings:
        spacing = tuple(float(v) for v in text.split("x"))
        results[text] = {name: _ceiling(cases, spacing) for name, cases in sets.items()}
        for name, score in results[text].items():
            low = min(score["organs"].items(), key=lambda item: item[1])
            print(
                f"{text} mm, {name}: mean organ Dice {score['mean_dice']:.3f}, lowest {low[0]} {low[1]:.3f}"
            )
    print(f"-> {write_result('voxel_ceiling', {'spacings': results})}")


def _cases(data: Path, split: str = "training") -> list[tuple[np.ndarray, np.ndarray]]:
    """The label maps of one split of a dataset, with their affines."""
    from unetr_cli.data import read_datalist
    from unetr_cli.volumes import load_volume

    cases = []
    for entry in getattr(read_datalist(data, "dataset_0.json"), split):
        labels, info = load_volume(entry["label"], dtype=None)
        cases.append((labels.astype(np.int64), info.affine))
    return cases


def _ceiling(cases: list[tuple[np.ndarray, np.ndarray]], spacing: tuple[float, float, float]) -> dict:
    """Per-organ Dice of the round trip through a grid of `spacing`, averaged over cases as `unetr evaluate`
    averages them."""
    from unetr_cli.metrics import organ_dice

    per_case = np.array(
        [organ_dice(_round_trip(labels, affine, spacing), labels, CLASSES) for labels, affine in cases]
    )
    organs = np.nanmean(per_case, axis=0)
    return {
        "mean_dice": float(organs.mean()),
        "organs": {name: float(value) for name, value in zip(ORGANS, organs, strict=True)},
    }


def _round_trip(labels: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """`labels` carried to a RAS grid of `spacing` as perfect probabilities, and back with them."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    from unetr_cli.data import RAS_LABELS
    from unetr_cli.inference.resample import resample_labels

    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), CLASSES).permute(3, 0, 1, 2).float()
    grid = Orientation(axcodes="RAS", labels=RAS_LABELS)(MetaTensor(one_hot, affine=torch.from_numpy(affine)))
    grid = Spacing(pixdim=spacing, mode="bilinear", dtype=torch.float32)(grid)
    probabilities = grid.numpy()
    return resample_labels(
        probabilities.argmax(0), np.asarray(grid.affine), labels.shape, affine, probabilities=probabilities
    )


if __name__ == "__main__":
    main()
