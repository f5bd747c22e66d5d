"""The plausibility report: flags a reader acts on, orientation checks, post-processing, bad label maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import invoke, write_scan
from unetr_cli.inference.plausibility import assess
from unetr_cli.inference.postprocess import PostProcessing, postprocess
from unetr_cli.inference.segmenter import flip_agreement
from unetr_cli.phantoms import make_phantom

SHAPE = (96, 96, 48)


@pytest.fixture(scope="module")
def phantom():
    """A phantom whose true label map raises no flag (checked by the first test)."""
    return make_phantom(1, SHAPE)


def mirrored(affine: np.ndarray, axis: int) -> np.ndarray:
    """The affine of a header that has the patient's `axis` (0 left/right, 1 front/back, 2 up/down) backwards:
    the same voxels, their world positions mirrored."""
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    return flip @ affine


def save_pair(folder: Path, image, labels, affine) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    scan = write_scan(folder / "ct.nii.gz", image, affine)
    seg = folder / "ct_seg.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), seg)
    return scan, seg


def organ(report, name: str):
    return next(o for o in report.organs if o.organ == name)


def test_true_labels_of_a_normal_phantom_raise_no_flag(phantom):
    report = assess(phantom.label, phantom.affine, 14, phantom.image)
    assert not report.has_flags and report.orientation == [] and report.notes == []
    assert report.contrast_phase == "contrast"  # the phantoms are portal-venous
    kidney = organ(report, "right kidney")
    assert kidney.expected_side_share == 1.0 and kidney.fragments == 1 and kidney.edge_voxels == 0
    assert report.summary("case") == "case: no organ flagged (13 present)"


def test_left_right_flipped_header_flags_lateral_organs_and_orientation(phantom, tmp_path):
    scan, seg = save_pair(tmp_path, phantom.image, phantom.label, mirrored(phantom.affine, 0))
    result = invoke("report", str(seg), "--scan", str(scan), "--fail-on-flags")
    assert result.exit_code == 1, result.output
    line = " ".join(result.output.split())
    assert (
        "left/right looks reversed: 87% of the liver lies left of the midline (its centre 47 mm left)" in line
    )
    assert "100% of the spleen lies right of the midline" in line and "the labels or the header" in line
    stats = json.loads((tmp_path / "ct_seg_stats.json").read_text())
    flagged = {row["organ"]: row for row in stats["organs"] if "lateral" in row["flags"]}
    assert {
        "right kidney",
        "left kidney",
        "right adrenal gland",
        "left adrenal gland",
        "liver",
        "spleen",
    } <= set(flagged)
    assert flagged["right kidney"]["expected_side_share"] == 0.0
    # the same files with the header put right: no flag, exit 0
    scan, seg = save_pair(tmp_path / "right", phantom.image, phantom.label, phantom.affine)
    result = invoke("report", str(seg), "--scan", str(scan), "--fail-on-flags")
    assert result.exit_code == 0 and "no organ flagged" in result.output


@pytest.mark.parametrize(
    ("axis", "message"),
    [
        (1, "front/back looks reversed: the spine lies"),
        (2, "up/down looks reversed: the liver's centre lies 58 mm below the kidneys'"),
    ],
)
def test_front_back_and_up_down_flips_are_named(phantom, axis, message):
    report = assess(phantom.label, mirrored(phantom.affine, axis), 14, phantom.image)
    assert len(report.orientation) == 1 and report.orientation[0].startswith(message)
    assert report.has_flags


@pytest.mark.parametrize(
    ("axis", "message"),
    [(None, None), (0, "left/right looks reversed"), (2, "up/down looks reversed")],
)
def test_orientation_of_a_large_label_map_is_judged_on_a_subsample(phantom, axis, message):
    from unetr_cli.inference.orientation import ORIENTATION_VOXELS, find_body, orientation_after_inference

    def upsampled(volume):
        return np.repeat(np.repeat(np.repeat(volume, 3, axis=0), 3, axis=1), 4, axis=2)

    large = upsampled(phantom.label).astype(np.uint8)
    assert round((large.size / ORIENTATION_VOXELS) ** (1 / 3)) >= 2  # every second voxel per axis or fewer
    affine = phantom.affine @ np.diag([1 / 3, 1 / 3, 1 / 4, 1.0])
    affine = affine if axis is None else mirrored(affine, axis)
    body = find_body(upsampled(phantom.image), affine)  # its midline comes from every voxel's position
    problems = orientation_after_inference(large, affine, body)
    assert problems == [] if message is None else len(problems) == 1 and problems[0].startswith(message)


def test_organ_cut_by_the_field_of_view(phantom):
    liver = np.argwhere(phantom.label == 6)
    middle = int(np.median(liver[:, 2]))  # a scan that stops halfway through the liver
    cut = assess(phantom.label[:, :, :middle], phantom.affine, 14, phantom.image[:, :, :middle])
    whole = organ(assess(phantom.label, phantom.affine, 14, phantom.image), "liver")
    liver_cut = organ(cut, "liver")
    assert "cut" in liver_cut.flags and liver_cut.edge_voxels > 0
    assert liver_cut.volume_ml < whole.volume_ml  # a lower bound, said so
    assert "volume" not in liver_cut.flags  # a cut organ is not called too small
    assert "liver (cut: volume >= " in cut.summary("case")
    assert organ(cut, "aorta").flags == []  # it crosses every abdominal scan's ends


def test_a_speck_at_the_edge_does_not_make_an_organ_cut(phantom):
    labels = phantom.label.copy()
    labels[-3:, -3:, -3:] = 6  # a few stray liver voxels in a corner of the grid, far from the liver
    liver = organ(assess(labels, phantom.affine, 14, phantom.image), "liver")
    assert liver.flags == [] and liver.edge_voxels == 0 and liver.fragments == 1


def test_planted_fragments_are_flagged_and_keep_largest_removes_them(phantom):
    labels = phantom.label.copy()
    spleen = np.argwhere(labels == 1)
    low, high = spleen.min(axis=0), spleen.max(axis=0)
    piece = labels[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : low[2] + 4] == 1
    labels[-piece.shape[0] - 1 : -1, -piece.shape[1] - 1 : -1, -5:-1][piece] = 1  # far from the spleen
    spleen_report = organ(assess(labels, phantom.affine, 14, phantom.image), "spleen")
    assert "fragments" in spleen_report.flags and spleen_report.fragments == 2

    voxel_ml = abs(np.linalg.det(phantom.affine[:3, :3])) / 1000
    cleaned, removed = postprocess(labels, voxel_ml, PostProcessing(keep_largest=True), 14)
    assert np.array_equal(cleaned, phantom.label) and removed == {1: int(piece.sum())}
    assert organ(assess(cleaned, phantom.affine, 14, phantom.image), "spleen").flags == []
    # --min-size removes the small piece of any organ, and nothing of the real ones
    cleaned, _ = postprocess(labels, voxel_ml, PostProcessing(min_size_ml=1.1 * piece.sum() * voxel_ml), 14)
    assert np.array_equal(cleaned == 1, phantom.label == 1)


def test_volume_and_hu_out_of_range(phantom):
    labels, image = phantom.label.copy(), phantom.image.copy()
    image[labels == 6] = 900  # a liver as dense as bone
    labels[labels == 1] = 0
    labels[40:42, 40:42, 20:22][labels[40:42, 40:42, 20:22] == 0] = 1  # a spleen of a few voxels
    report = assess(labels, phantom.affine, 14, image)
    assert "hu" in organ(report, "liver").flags and organ(report, "liver").hu_range == (20, 220)
    assert "volume" in organ(report, "spleen").flags


def test_tta_agreement_per_organ():
    labels = torch.zeros(20, 20, 20, dtype=torch.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[12:16, 12:16, 12:16] = 2
    shifted = labels.clone()
    shifted[12:16] = 0
    shifted[14:18, 12:16, 12:16] = 2  # half of organ 2 moved
    agreement = flip_agreement([labels, shifted], labels, 3)
    assert agreement[1] == pytest.approx(1.0)
    assert agreement[2] == pytest.approx((1.0 + 0.5) / 2)
    report = assess(labels.numpy(), np.diag([10.0, 10.0, 10.0, 1.0]), 3, agreement=agreement)
    assert report.organs[1].flags == ["uncertain"] and report.organs[0].flags == []


@pytest.mark.parametrize(
    ("labels", "image", "note"),
    [
        ("unknown", "ct", "label ids [20] are not BTCV organs: not judged"),
        ("empty", "ct", None),
        ("true", "air", "no body found (no voxels above -500 HU)"),
        ("true", None, "no scan given: mean HU and the body's midline not judged"),
    ],
)
def test_what_cannot_be_judged_is_said_not_crashed(phantom, tmp_path, labels, image, note):
    label_map = {
        "unknown": np.where(phantom.label == 5, 20, phantom.label),
        "empty": np.zeros_like(phantom.label),
        "true": phantom.label,
    }[labels]
    ct = np.full_like(phantom.image, -1000) if image == "air" else phantom.image
    scan, seg = save_pair(tmp_path, ct, label_map, phantom.affine)
    args = ["report", str(seg), *(["--scan", str(scan)] if image else []), "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    event = next(e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "report")
    assert any(note in line for line in event["notes"]) if note else event["empty"]
    assert len(event["organs"]) == 13
    summary = invoke(*args[:-1], "--overwrite")
    assert summary.exit_code == 0 and "Traceback" not in summary.output
    if labels == "empty":
        assert "no organ labelled: nothing to judge" in summary.output


def test_predict_refuses_a_front_back_flipped_scan_with_strict_orientation(trained_run, phantom, tmp_path):
    flipped = write_scan(tmp_path / "flipped.nii.gz", phantom.image, mirrored(phantom.affine, 1))
    normal = write_scan(tmp_path / "normal.nii.gz", phantom.image, phantom.affine)
    checkpoint = str(trained_run / "checkpoint_final.pt")
    out = tmp_path / "out"
    common = ["--checkpoint", checkpoint, "--device", "cpu", "-o", str(out)]
    warned = invoke("predict", str(flipped), *common, "-q")
    assert warned.exit_code == 0 and "front/back looks reversed" in warned.output
    strict = invoke(
        "predict", str(flipped), str(normal), *common, "--strict-orientation", "--overwrite", "-q"
    )
    assert strict.exit_code == 1
    assert (
        "flipped.nii.gz: front/back looks reversed" in strict.output
        and "--strict-orientation" in strict.output
    )
    assert (out / "normal_seg.nii.gz").is_file()  # the batch went on


def test_predict_report_and_fail_on_flags(trained_run, phantom, tmp_path):
    scan = write_scan(
        tmp_path / "ct.nii.gz", phantom.image, mirrored(phantom.affine, 1)
    )  # front/back flipped
    out = tmp_path / "seg.nii.gz"
    common = [
        str(scan),
        "--checkpoint",
        str(trained_run / "checkpoint_final.pt"),
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    result = invoke("predict", *common, "--report", "--tta", "--keep-largest", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "seg_stats.json").read_text())
    labels = np.asanyarray(nib.load(out).dataobj)
    present = [row for row in stats["organs"] if row["voxels"]]
    assert present and all(row["agreement"] is not None for row in present)  # --tta measured agreement
    assert all(row["fragments"] in (None, 1) for row in present)  # --keep-largest left one piece each
    assert {row["label"] for row in present} == set(np.unique(labels)) - {0}
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    assert sidecar["postprocessing"]["steps"] == "largest component per one-piece organ"
    report = next(e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "report")
    assert report["flagged"] == stats["flagged"] and report["orientation"] == stats["orientation"]
    assert stats["orientation"][0].startswith("front/back looks reversed")
    # a flagged scan: --fail-on-flags turns that into exit 1, its outputs written
    failed = invoke("predict", *common, "--fail-on-flags", "--overwrite", "-q")
    assert failed.exit_code == 1 and "flagged (--fail-on-flags)" in failed.output and out.is_file()


def test_evaluate_scores_with_and_without_postprocessing_and_surface_dice(phantom, tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    noisy = phantom.label.copy()
    rng = np.random.default_rng(0)
    for _ in range(40):  # specks of liver label scattered through the background
        x, y, z = rng.integers(0, 90, 2).tolist() + [int(rng.integers(0, 44))]
        box = (slice(x, x + 3), slice(y, y + 3), slice(z, z + 3))
        noisy[box][phantom.label[box] == 0] = 6
    nib.save(nib.Nifti1Image(phantom.label, phantom.affine), truth_dir / "case.nii.gz")
    nib.save(nib.Nifti1Image(noisy, phantom.affine), pred_dir / "case_seg.nii.gz")
    output = tmp_path / "scores.json"
    args = ["evaluate", "--pred-dir", str(pred_dir), "--gt-dir", str(truth_dir), "--output", str(output)]
    result = invoke(*args, "--keep-largest", "--surface-tolerance", "1")
    assert result.exit_code == 0, result.output
    scores = json.loads(output.read_text())
    raw, after = scores["summary"]["organs"]["liver"], scores["summary"]["postprocessed"]["organs"]["liver"]
    assert raw["dice"] < 1.0 and raw["surface_dice"] < 1.0
    assert after["dice"] > raw["dice"] and after["hd95_mm"] < raw["hd95_mm"]
    assert scores["summary"]["organs"]["spleen"]["surface_dice"] == pytest.approx(1.0)
    header = " ".join(result.output.split())  # the table may wrap its column names
    assert "post" in header and "NSD" in header
    assert scores["postprocessing"] == "largest component per one-piece organ"


def test_pieces_joined_through_a_neighbouring_label_are_one_organ(phantom):
    through_vein, apart = phantom.label.copy(), phantom.label.copy()
    for labels, between in ((through_vein, 10), (apart, 0)):
        slab = labels[40:42]  # 8.5 mm across the pancreas
        slab[slab == 11] = between
    pancreas = organ(assess(through_vein, phantom.affine, 14, phantom.image), "pancreas")
    assert pancreas.fragments == 1 and "fragments" not in pancreas.flags  # split only by the vein's label
    pancreas = organ(assess(apart, phantom.affine, 14, phantom.image), "pancreas")
    assert pancreas.fragments == 2 and "fragments" in pancreas.flags  # background between the pieces


def test_an_organ_at_the_scan_edge_is_never_called_too_small(phantom):
    bottom = (slice(None), slice(None), slice(0, 2))  # a scan that ends two slices into the aorta
    aorta = organ(assess(phantom.label[bottom], phantom.affine, 14, phantom.image[bottom]), "aorta")
    assert aorta.volume_ml < aorta.volume_range_ml[0] and aorta.edge_voxels > 0
    assert aorta.flags == []  # routinely crosses the scan's ends: neither cut nor too small


def test_mean_hu_is_judged_on_the_interior_and_only_with_enough_in_view(phantom):
    from scipy import ndimage

    image = phantom.image.copy()
    spleen = phantom.label == 1
    image[spleen & ~ndimage.binary_erosion(spleen)] = -300  # partial volume with fat at its surface
    report = organ(assess(phantom.label, phantom.affine, 14, image), "spleen")
    assert report.mean_hu < report.hu_range[0] < report.interior_hu and "hu" not in report.flags
    image[spleen] = 5  # the whole spleen as dense as water: flagged
    assert "hu" in organ(assess(phantom.label, phantom.affine, 14, image), "spleen").flags
    top = int(np.argwhere(phantom.label == 2)[:, 2].max())
    image[phantom.label == 2] = 5  # a kidney whose interior reads as water...
    assert "hu" in organ(assess(phantom.label, phantom.affine, 14, image), "right kidney").flags
    tip = (slice(None), slice(None), slice(top - 2, None))  # ... with only its tip in view: not judged
    kidney = organ(assess(phantom.label[tip], phantom.affine, 14, image[tip]), "right kidney")
    assert kidney.volume_ml < kidney.volume_range_ml[0] and kidney.interior_hu == 5 and kidney.edge_voxels
    assert kidney.hu_range is None and "hu" not in kidney.flags


def test_an_organ_missing_where_the_scan_covers_its_level_is_flagged(phantom):
    labels = np.where(phantom.label == 6, 0, phantom.label)  # the liver deleted
    report = assess(labels, phantom.affine, 14, phantom.image)
    liver = organ(report, "liver")
    assert liver.flags == ["missing"] and liver.expected_from == "spleen (wholly in view)"
    assert "liver (missing: none labelled, though the spleen (wholly in view) shows" in report.summary("c")
    assert "no liver or no kidney labelled: up/down not judged from the organs" in report.notes
    no_aorta = assess(np.where(phantom.label == 8, 0, phantom.label), phantom.affine, 14, phantom.image)
    assert organ(no_aorta, "aorta").flags == ["missing"]
    low = int(np.argwhere(np.isin(phantom.label, (2, 3, 6)))[:, 2].min())
    below = (slice(None), slice(None), slice(0, low))  # a scan that ends below the liver and kidneys
    report = assess(phantom.label[below], phantom.affine, 14, phantom.image[below])
    assert not any("missing" in o.flags for o in report.organs)


def test_a_poor_segmentation_is_not_called_a_flipped_scan(phantom):
    from unetr_cli.inference.orientation import find_body, to_world

    labels = np.where(phantom.label == 1, 0, phantom.label)  # no spleen; the liver spills to the left
    body = find_body(phantom.image, phantom.affine)
    free = np.argwhere((labels == 0) & (phantom.image > -500))
    left = free[to_world(free, phantom.affine)[:, 0] < body.midline_x - 10]
    liver = int((labels == 6).sum())
    labels[tuple(left[: int(0.9 * liver)].T)] = 6  # 46% of the liver left on its side
    report = assess(labels, phantom.affine, 14, phantom.image)
    share = organ(report, "liver").expected_side_share
    assert 0.4 < share < 0.5 and "lateral" in organ(report, "liver").flags
    assert report.orientation == []  # a liver across the midline is a bad label map, not a mirrored header
