"""Geometry of prediction: label maps come back on the scan's own grid in every orientation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import write_scan
from unetr_cli.inference import Segmenter, predict_scan
from unetr_cli.inference.resample import resample_labels
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


def test_resample_labels_identity_flip_and_upsampling():
    labels = np.random.default_rng(0).integers(0, 5, (12, 10, 8)).astype(np.uint8)
    grid = np.diag([1.5, 1.5, 2.0, 1.0])
    assert np.array_equal(resample_labels(labels, grid, labels.shape, grid), labels)
    flipped = grid.copy()
    flipped[0, 0], flipped[0, 3] = -1.5, 1.5 * 11
    assert np.array_equal(resample_labels(labels, grid, labels.shape, flipped), labels[::-1])
    fine = np.diag([0.75, 0.75, 1.0, 1.0])
    upsampled = resample_labels(labels, grid, (24, 20, 16), fine)
    assert np.array_equal(upsampled[::2, ::2, ::2], labels)


def test_resample_labels_keeps_boundaries_between_voxel_centres():
    """A sphere resampled to a finer grid keeps its volume within a few percent (no staircase growth)."""
    coarse = np.zeros((30, 30, 30), np.uint8)
    x, y, z = np.meshgrid(*(np.arange(30),) * 3, indexing="ij")
    coarse[(x - 14.5) ** 2 + (y - 14.5) ** 2 + (z - 14.5) ** 2 < 10**2] = 3
    fine = resample_labels(coarse, np.diag([2.0, 2.0, 2.0, 1.0]), (60, 60, 60), np.diag([1.0, 1.0, 1.0, 1.0]))
    coarse_ml, fine_ml = (coarse == 3).sum() * 8, (fine == 3).sum()
    assert abs(fine_ml - coarse_ml) / coarse_ml < 0.05
    assert set(np.unique(fine)) == {0, 3}


def test_output_keeps_qform_and_sform_codes(tmp_path, segmenter):
    from unetr_cli.volumes import save_nifti

    phantom = make_phantom(6, (64, 64, 24), orientation="LPS")
    image = nib.Nifti1Image(phantom.image, phantom.affine)
    image.set_qform(phantom.affine, code=1)
    image.set_sform(phantom.affine, code=4)
    nib.save(image, tmp_path / "codes.nii.gz")
    prediction = predict_scan(tmp_path / "codes.nii.gz", segmenter)
    out = save_nifti(
        prediction.labels, prediction.nifti.affine, tmp_path / "seg.nii.gz", like=prediction.nifti
    )
    written = nib.load(out)
    assert written.header["qform_code"] == 1 and written.header["sform_code"] == 4
    assert np.allclose(written.affine, phantom.affine)


def test_axis_by_axis_path_equals_the_general_path():
    from unetr_cli.inference.resample import _positions, _VotingGrid

    rng = np.random.default_rng(1)
    labels = (rng.random((14, 11, 9)) * 4).astype(np.uint8)
    source = np.diag([1.5, 1.5, 2.0, 1.0])
    target = np.array([[0.0, -0.9, 0.0, 14.0], [0.7, 0.0, 0.0, -2.0], [0.0, 0.0, 1.3, 0.5], [0, 0, 0, 1.0]])
    shape = (20, 26, 17)
    mapping = np.linalg.inv(source) @ target
    general = _VotingGrid(labels).sample_positions(_positions(mapping, shape, 0, shape[2]))
    assert np.array_equal(resample_labels(labels, source, shape, target), general)


@pytest.mark.parametrize("oblique", [False, True])
def test_probability_resampling_equals_full_trilinear_interpolation(oblique):
    """Only disagreeing neighbourhoods are interpolated, yet the result is the classical one everywhere."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 10, 9, 8)) * 3
    logits[1, 2:7, 2:7, 2:6] += 6  # an organ, so most neighbourhoods agree
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    source = np.diag([2.0, 2.0, 3.0, 1.0])
    target = np.diag([0.7, -0.9, 1.1, 1.0])
    target[1, 3] = 16.0
    if oblique:
        angle = np.radians(9)
        target[:3, :3] = (
            np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
            @ target[:3, :3]
        )
    shape = (24, 20, 22)
    result = resample_labels(labels, source, shape, target, probabilities=probabilities)

    padded = np.pad(probabilities, ((0, 0), (1, 1), (1, 1), (1, 1)))
    padded[0][np.pad(np.zeros(labels.shape, bool), 1, constant_values=True)] = 1.0
    mapping = np.linalg.inv(source) @ target
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1) @ mapping[:3, :3].T
    positions = (grid + mapping[:3, 3] + 1.0).reshape(-1, 3).T
    inside = np.all((positions >= 0) & (positions <= np.array(padded.shape[1:])[:, None] - 1), axis=0)
    interpolated = np.stack(
        [map_coordinates(channel, positions, order=1, mode="nearest") for channel in padded]
    )
    expected = np.where(inside, interpolated.argmax(axis=0), 0).reshape(shape)
    assert np.array_equal(result, expected)


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
