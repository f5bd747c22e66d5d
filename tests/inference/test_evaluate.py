"""Scores with analytically known values, both empty-organ conventions, and agreement with training."""

from __future__ import annotations

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import invoke
from unetr_cli.metrics import DiceAccumulator, hausdorff95, organ_dice, organ_metrics


def _cubes(n: int = 10, k: int = 3, size: int = 30):
    truth = np.zeros((size,) * 3, np.uint8)
    pred = np.zeros_like(truth)
    truth[5 : 5 + n, 5 : 5 + n, 5 : 5 + n] = 1
    pred[5 + k : 5 + k + n, 5 : 5 + n, 5 : 5 + n] = 1
    return pred, truth


@pytest.mark.parametrize("k", [1, 3, 6])
def test_offset_cubes_dice_and_hd95(k):
    pred, truth = _cubes(k=k)
    spacing = (2.5, 0.8, 1.0)  # anisotropic: the offset is along the 2.5 mm axis
    rows = organ_metrics(pred, truth, spacing, num_classes=2)
    assert rows[0]["dice"] == pytest.approx((10 - k) / 10)
    assert rows[0]["hd95_mm"] == pytest.approx(k * 2.5)
    assert rows[0]["volume_diff_ml"] == pytest.approx(0.0)


def test_parallel_plates_hd95_uses_the_slice_spacing():
    truth = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(truth)
    truth[2:18, 2:18, 5] = True
    pred[2:18, 2:18, 9] = True
    assert hausdorff95(pred, truth, (0.7, 0.7, 3.0)) == pytest.approx(4 * 3.0)
    assert hausdorff95(pred, np.zeros_like(truth), (1, 1, 1)) is None


def test_empty_organ_conventions():
    truth = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[2:5, 2:5, 2:5] = 1
    pred[2:5, 2:5, 2:5] = 1
    pred[7:9, 7:9, 7:9] = 3  # organ 3 predicted, absent from the truth; organ 2 in neither
    default = organ_dice(pred, truth, 4)
    assert default[0] == 1.0 and math.isnan(default[1]) and default[2] == 0.0
    reference = organ_dice(pred, truth, 4, empty_as_zero=True)
    assert list(reference) == [1.0, 0.0, 0.0]


def test_dice_matches_monai_dice_metric():
    import torch
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (16, 16, 16))
    pred = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 4, truth.shape))
    onehot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a), 4).permute(3, 0, 1, 2)[None]  # noqa: E731
    monai = DiceMetric(include_background=False)(onehot(pred), onehot(truth))[0].numpy()
    assert np.allclose(organ_dice(pred, truth, 4), monai)
    accumulator = DiceAccumulator(4)
    accumulator.add(pred, truth)
    assert accumulator.mean() == pytest.approx(float(np.mean(monai)))


def _save(path, labels, affine=None):
    nib.save(
        nib.Nifti1Image(labels.astype(np.uint8), np.diag([2.5, 0.8, 1.0, 1.0]) if affine is None else affine),
        path,
    )
    return path


def test_folders_are_paired_by_name_and_reported(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    pred, truth = _cubes(k=2)
    _save(pred_dir / "img0001_seg.nii.gz", pred)
    _save(gt_dir / "label0001.nii.gz", truth)
    _save(pred_dir / "case7_seg.nii.gz", truth)
    _save(gt_dir / "case7.nii.gz", truth)
    _save(pred_dir / "stray_seg.nii.gz", truth)
    _save(gt_dir / "lonely.nii.gz", truth)
    out = tmp_path / "results.json"
    result = invoke(
        "evaluate",
        "--pred-dir",
        pred_dir,
        "--gt-dir",
        gt_dir,
        "--output",
        out,
        "--csv",
        tmp_path / "r.csv",
        "-s",
        "model.out_channels=2",
    )
    assert result.exit_code == 0, result.output
    assert "1 unpaired predictions: stray_seg.nii.gz" in result.stderr
    assert "1 unpaired truths: lonely.nii.gz" in result.stderr
    payload = json.loads(out.read_text())
    scores = {c["case"]: c["organs"]["spleen"]["dice"] for c in payload["cases"]}
    assert scores == {"label0001": pytest.approx(0.8), "case7": 1.0}
    assert payload["summary"]["organs"]["spleen"]["dice"] == pytest.approx(0.9)
    assert payload["summary"]["organs"]["spleen"]["hd95_mm"] == pytest.approx((5.0 + 0.0) / 2)
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("case,organ,dice,hd95_mm")


def test_bad_pairs_are_reported_and_skipped(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    pred, truth = _cubes()
    _save(pred_dir / "a.nii.gz", pred[:-1])
    _save(gt_dir / "a.nii.gz", truth)
    shifted = np.diag([2.5, 0.8, 1.0, 1.0])
    shifted[0, 3] = 10.0
    _save(pred_dir / "b.nii.gz", pred, shifted)
    _save(gt_dir / "b.nii.gz", truth)
    bad_ids = pred.copy()
    bad_ids[0, 0, 0] = 20
    _save(pred_dir / "c.nii.gz", bad_ids)
    _save(gt_dir / "c.nii.gz", truth)
    _save(pred_dir / "d.nii.gz", pred)
    _save(gt_dir / "d.nii.gz", truth)
    result = invoke(
        "evaluate", "--pred-dir", pred_dir, "--gt-dir", gt_dir, "-s", "model.out_channels=2", "--json"
    )
    assert result.exit_code == 1
    assert "a.nii.gz: shape (29, 30, 30) differs from the truth's (30, 30, 30)" in result.stderr
    assert "b.nii.gz: affine differs from the truth's" in result.stderr
    assert "c.nii.gz: the prediction has label ids [20] outside the label set 0..1" in result.stderr
    summary = [json.loads(x) for x in result.stdout.splitlines() if '"summary"' in x][0]
    assert summary["cases"] == 1


def test_empty_split_and_nothing_to_do(tiny_dataset, tmp_path):
    listing = json.loads((tiny_dataset / "dataset_0.json").read_text())
    listing["validation"] = []
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset_0.json").write_text(json.dumps(listing))
    result = invoke("evaluate", "--data-dir", data, "--pred-dir", tmp_path)
    assert result.exit_code == 2 and "the 'validation' split is empty" in result.stderr
    assert invoke("evaluate").exit_code == 2


def test_evaluate_agrees_with_training_validation(trained_run, tiny_dataset, tmp_path):
    last = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()][-1]
    out = tmp_path / "r.json"
    result = invoke(
        "evaluate",
        "--data-dir",
        tiny_dataset,
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
        "--space",
        "resampled",
        "--no-hd95",
        "--output",
        out,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["mean_dice"] == pytest.approx(last["mean_dice"], abs=1e-9)
    assert "mean over organs" in result.stdout
    original = invoke(
        "evaluate",
        "--data-dir",
        tiny_dataset,
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
        "--output",
        tmp_path / "o.json",
    )
    assert original.exit_code == 0, original.output
    native = json.loads((tmp_path / "o.json").read_text())["summary"]["mean_dice"]
    assert abs(native - last["mean_dice"]) < 0.15  # same model, scored on each scan's own grid


def test_a_broken_case_is_named_and_the_others_are_scored(trained_run, tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    listing = json.loads((data / "dataset_0.json").read_text())
    broken, missing = (data / listing["training"][0]["image"]), data / listing["training"][1]["image"]
    image = nib.load(broken)
    voxels = np.asanyarray(image.dataobj).astype(np.float32)
    voxels[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), broken)
    missing.unlink()
    common = ("--data-dir", data, "--checkpoint", trained_run / "checkpoint_final.pt", "--no-hd95")
    for space in ("resampled", "original"):
        result = invoke("evaluate", *common, "--space", space, "--split", "training")
        assert result.exit_code == 1, result.output
        assert "2 case(s)" in result.stdout  # the other two were scored
        assert f"{broken.name}: contains 1 NaN or infinite voxels" in result.stderr
        assert f"{missing.name}: file not found" in result.stderr


def test_evaluate_outputs_are_checked_before_any_case_is_scored(trained_run, tiny_dataset, tmp_path):
    (tmp_path / "a_file").write_text("")
    common = (
        "--data-dir",
        tiny_dataset,
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
        "--no-hd95",
        "-q",
    )
    refused = invoke("evaluate", *common, "--output", tmp_path / "a_file" / "r.json")
    assert refused.exit_code == 2 and "a file is in the way" in refused.stderr
    assert "case" not in refused.stdout
    created = invoke("evaluate", *common, "--output", tmp_path / "new" / "r.json")
    assert created.exit_code == 0 and (tmp_path / "new" / "r.json").is_file()
