"""Geometry of prediction: label maps come back on the scan's own grid in every orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import write_scan
from unetr_cli.inference import Segmenter, predict_scan
from unetr_cli.metrics import organ_dice
from unetr_cli.phantoms import make_phantom
from unetr_cli.settings import SettingsSources, resolve_settings

BRIGHT_HU = 165.0


class BrightVoxels(torch.nn.Module):
    """A stand-in model whose output follows intensity: class 1 where the windowed image is bright."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = 50.0 * (x - self.threshold)
        others = torch.full_like(x, -100.0).repeat(1, 12, 1, 1, 1)
        return torch.cat([torch.zeros_like(x), bright, others], dim=1)


@pytest.fixture(scope="module")
def segmenter():
    settings = resolve_settings(
        SettingsSources(preset="tiny-cpu"), {"data.spacing": (3, 3, 4), "inference.device": "cpu"}
    )
    threshold = (BRIGHT_HU - settings.data.hu_min) / (settings.data.hu_max - settings.data.hu_min)
    return Segmenter(BrightVoxels(threshold), settings, torch.device("cpu"))


def _bright_agreement(prediction, image) -> float:
    return float(organ_dice(prediction.labels == 1, image > BRIGHT_HU, 2)[0])


@pytest.mark.parametrize(
    ("orientation", "oblique", "shape"),
    [
        ("LPS", 0.0, (96, 96, 40)),
        ("RAS", 0.0, (96, 96, 40)),
        ("LAS", 0.0, (80, 112, 30)),
        ("LPS", 14.0, (96, 96, 40)),
    ],
)
def test_output_is_on_the_input_grid_and_follows_the_image(tmp_path, segmenter, orientation, oblique, shape):
    phantom = make_phantom(3, shape, orientation=orientation, oblique_degrees=oblique)
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    prediction = predict_scan(scan, segmenter)
    assert prediction.labels.shape == shape
    assert prediction.labels.dtype == np.uint8
    agreement = _bright_agreement(prediction, phantom.image)
    assert agreement > 0.85, f"{orientation} oblique={oblique}: bright-voxel Dice {agreement:.3f}"


def test_flipping_an_axis_flips_the_output(tmp_path, segmenter):
    phantom = make_phantom(4, (96, 96, 40), orientation="RAS")
    original = predict_scan(write_scan(tmp_path / "a.nii.gz", phantom.image, phantom.affine), segmenter)
    # Same voxels, stored in the opposite order along x, with the affine that keeps them in place.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = phantom.image.shape[0] - 1
    flipped_scan = write_scan(tmp_path / "b.nii.gz", phantom.image[::-1], phantom.affine @ flip)
    flipped = predict_scan(flipped_scan, segmenter)
    assert np.array_equal(flipped.labels, original.labels[::-1])
    # Mirroring the content (same affine) mirrors the segmentation.
    mirrored = predict_scan(write_scan(tmp_path / "c.nii.gz", phantom.image[::-1], phantom.affine), segmenter)
    mirrored_agreement = organ_dice(mirrored.labels, original.labels[::-1], 2)[0]
    unflipped_agreement = organ_dice(mirrored.labels, original.labels, 2)[0]
    assert mirrored_agreement > 0.95 and mirrored_agreement > unflipped_agreement + 0.2


def test_anisotropic_spacing_keeps_the_organs_in_place(tmp_path, segmenter):
    phantom = make_phantom(5, (128, 64, 24), spacing=(1.2, 2.6, 6.5), orientation="LPS")
    prediction = predict_scan(write_scan(tmp_path / "s.nii.gz", phantom.image, phantom.affine), segmenter)
    assert prediction.labels.shape == (128, 64, 24)
    assert _bright_agreement(prediction, phantom.image) > 0.8


def test_output_keeps_qform_and_sform_codes(tmp_path, segmenter):
    from unetr_cli.volumes import save_nifti

    phantom = make_phantom(6, (64, 64, 24), orientation="LPS")
    image = nib.Nifti1Image(phantom.image, phantom.affine)
    image.set_qform(phantom.affine, code=1)
    image.set_sform(phantom.affine, code=4)
    nib.save(image, tmp_path / "codes.nii.gz")
    prediction = predict_scan(tmp_path / "codes.nii.gz", segmenter)
    out = save_nifti(
        prediction.labels, prediction.scan.affine, tmp_path / "seg.nii.gz", like=prediction.scan.header
    )
    written = nib.load(out)
    assert written.header["qform_code"] == 1 and written.header["sform_code"] == 4
    assert np.allclose(written.affine, phantom.affine)


class LeftRightRamp(torch.nn.Module):
    """Class 1 scores +1 at one end of each window's first axis and -1 at the other: any flip of that axis
    negates it, so the 8-flip average is 0 everywhere and nothing is class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, x.shape[2]).view(1, 1, -1, 1, 1).expand_as(x)
        return torch.cat([torch.zeros_like(x), ramp, torch.full_like(x, -5.0).repeat(1, 12, 1, 1, 1)], dim=1)


@pytest.mark.parametrize("tta", [False, True])
def test_tta_averages_the_eight_flips(tta):
    settings = resolve_settings(
        SettingsSources(preset="tiny-cpu"),
        {"inference.tta": tta, "inference.blend_mode": "constant", "inference.amp": False},
    )
    labels = Segmenter(LeftRightRamp(), settings, torch.device("cpu")).labels(torch.rand(1, 1, 32, 32, 32))
    share = float((labels == 1).float().mean())
    assert share == (0.0 if tta else 0.5), share


@pytest.mark.parametrize(("orientation", "oblique"), [("LPS", 0.0), ("LAS", 14.0)])
def test_device_path_on_cpu_tensors_equals_the_host_path(tmp_path, segmenter, orientation, oblique):
    """The GPU path (preprocessing, windows and resampling on the scan's device) run on CPU tensors, so CI
    checks its logic: the label map is the host path's."""
    from unetr_cli.inference.scan import _segment_on_device, _segment_on_host, read_scan
    from unetr_cli.inference.stages import StageTimes

    phantom = make_phantom(8, (96, 80, 36), orientation=orientation, oblique_degrees=oblique)
    scan = read_scan(write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine))
    stages = StageTimes()
    on_device = _segment_on_device(scan, segmenter, stages)
    on_host = _segment_on_host(scan, segmenter, StageTimes())
    assert list(stages) == ["preprocess", "windows", "to_scan_grid"]  # the device path times its stages
    assert on_device.shape == phantom.image.shape and on_device.dtype == np.uint8
    assert (on_device == on_host).mean() > 0.9999
    assert (on_device == 1).mean() > 0.01


class NotANumber(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, float("nan")).repeat(1, 14, 1, 1, 1)


def test_a_model_output_that_is_not_finite_is_an_error(tmp_path):
    from unetr_cli.errors import UnetrError

    settings = resolve_settings(SettingsSources(preset="tiny-cpu"), {"inference.device": "cpu"})
    phantom = make_phantom(3, (64, 64, 24))
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    with pytest.raises(UnetrError, match="the model's output holds NaN or infinite values"):
        predict_scan(scan, Segmenter(NotANumber(), settings, torch.device("cpu")))


def test_the_warm_up_runs_every_device_stage_on_a_blank_scan():
    """What the warm-up runs on a GPU, here on CPU tensors: while the model is built, a blank scan
    preprocessed and scores carried back to its grid (`warm_up_stages`); then one batch of windows of the
    model's size (`Segmenter.blank_windows`, which `warm_up` runs beside the first scan)."""
    from unetr_cli.inference.scan import BLANK_SHAPE, warm_up_stages

    settings = resolve_settings(SettingsSources(preset="tiny-cpu"), {"inference.device": "cpu"})
    labels = warm_up_stages(settings, torch.device("cpu"))
    assert labels.shape == BLANK_SHAPE and labels.dtype == np.uint8
    windows = []
    model = BrightVoxels(0.5)
    model.register_forward_hook(lambda _, inputs, __: windows.append(tuple(inputs[0].shape)))
    segmenter = Segmenter(model, settings, torch.device("cpu"))
    segmenter.blank_windows()
    size = settings.model.img_size
    assert windows == [(segmenter.sw_batch_size, 1, size, size, size)]


@pytest.mark.parametrize("order", ["F", "C"])
def test_a_scan_crosses_to_the_device_in_c_order_with_its_voxels_in_place(order):
    """As nibabel decodes it (Fortran order) or any other way; here the device is the CPU."""
    from unetr_cli.inference.scan import _to_device

    voxels = np.random.default_rng(0).integers(-1000, 2000, (70, 50, 30)).astype(np.int16, order=order)
    moved = _to_device(voxels, torch.device("cpu"))
    assert moved.is_contiguous() and moved.dtype == torch.int16
    assert np.array_equal(moved.numpy(), voxels)
