"""The phantom generator: BTCV layout, realistic geometry, correct left and right, reproducible."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import TINY_SHAPE, invoke
from unetr_cli.labels import BTCV_LABELS
from unetr_cli.phantoms.generator import default_grid, make_phantom, scanner_affine, write_dataset


def _centroid_world(phantom, label):
    voxels = np.argwhere(phantom.label == label)
    return (voxels @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]).mean(axis=0)


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, b, c = make_phantom(3, TINY_SHAPE), make_phantom(3, TINY_SHAPE), make_phantom(4, TINY_SHAPE)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LAS"])
def test_left_and_right_are_correct_in_patient_space(orientation):
    phantom = make_phantom(5, (96, 96, 48), orientation=orientation)
    assert "".join(nib.aff2axcodes(phantom.affine)) == orientation
    # RAS world: +x is the patient's right.
    assert _centroid_world(phantom, 6)[0] > 20  # liver on the right
    assert _centroid_world(phantom, 1)[0] < -20  # spleen on the left
    assert _centroid_world(phantom, 2)[0] > 20 > -20 > _centroid_world(phantom, 3)[0]  # kidneys
    assert _centroid_world(phantom, 12)[0] > 0 > _centroid_world(phantom, 13)[0]  # adrenals
    assert _centroid_world(phantom, 8)[1] < _centroid_world(phantom, 4)[1]  # aorta posterior to gallbladder


def test_every_organ_is_present_with_plausible_hu_and_volume():
    phantom = make_phantom(11, (160, 160, 72))
    voxel_ml = abs(np.linalg.det(phantom.affine[:3, :3])) / 1000
    volumes = {label: (phantom.label == label).sum() * voxel_ml for label in range(1, 14)}
    assert all(v > 0 for v in volumes.values()), volumes
    assert 1000 < volumes[6] < 3500  # liver, ml
    assert volumes[6] > volumes[1] > volumes[12]
    assert phantom.image.dtype == np.int16 and phantom.label.dtype == np.uint8
    outside = phantom.image[0, 0, :]
    assert np.all(outside < -900)  # air in the corner
    assert 60 < phantom.image[phantom.label == 6].mean() < 160  # enhanced liver
    assert phantom.image[phantom.label == 8].mean() > phantom.image[phantom.label == 4].mean() + 100
    assert phantom.image.max() > 400  # bone


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_organs_have_their_own_boundaries(seed):
    """The right adrenal lies in fat beside the liver, not inside it, and the esophagus is one tube in front
    of the aorta, not a crescent left over inside it: shapes a model can learn, as in a real CT."""
    from scipy import ndimage

    label = make_phantom(seed * 100_003 + 1, (128, 128, 64)).label
    adrenal = label == 12
    rim = ndimage.binary_dilation(adrenal, iterations=2) & ~adrenal
    assert (label[rim] == 6).mean() < 0.2  # liver around the right adrenal (it was all of it)
    esophagus = label == 5
    _, pieces = ndimage.label(esophagus, np.ones((3, 3, 3)))
    assert pieces == 1 and esophagus.sum() >= 50
    rim = ndimage.binary_dilation(esophagus, iterations=2) & ~esophagus
    assert (label[rim] == 8).mean() < 0.2  # aorta around the esophagus


@pytest.mark.parametrize("seed", range(5))
def test_default_geometry_is_btcv_like(seed):
    shape, spacing = default_grid(seed)
    assert shape[:2] == (512, 512) and 0.6 <= spacing[0] == spacing[1] <= 0.98 and 2.5 <= spacing[2] <= 5.0
    assert 260 <= shape[2] * spacing[2] <= 420  # cranio-caudal coverage in mm
    small = make_phantom(seed, (32, 32, 16))
    small_spacing = np.linalg.norm(small.affine[:3, :3], axis=0)
    assert np.allclose(small_spacing * (32, 32, 16), np.asarray(spacing) * shape)  # same field of view


def test_oblique_affine_is_not_axis_aligned():
    affine = scanner_affine((10, 10, 10), (1, 1, 2), "LPS", oblique_degrees=15)
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    assert np.count_nonzero(np.abs(direction) > 1e-6) > 3
    assert np.allclose(direction.T @ direction, np.eye(3))


def test_write_dataset_layout_and_folds(tmp_path):
    datalist = write_dataset(str(tmp_path), cases=5, seed=1, shape=(32, 32, 16), folds=2)  # str paths too
    listing = json.loads(datalist.read_text())
    assert listing["labels"] == {str(k): v for k, v in BTCV_LABELS.items()}
    assert len(listing["training"]) == 4 and len(listing["validation"]) == 1
    assert listing["training"][0] == {
        "image": "imagesTr/img0001.nii.gz",
        "label": "labelsTr/label0001.nii.gz",
        "fold": 0,
    }
    assert [e["fold"] for e in listing["training"]] == [0, 1, 0, 1]
    for entry in listing["training"] + listing["validation"]:
        image, label = nib.load(tmp_path / entry["image"]), nib.load(tmp_path / entry["label"])
        assert image.get_data_dtype() == np.int16
        assert np.allclose(image.affine, label.affine)
        assert image.header["qform_code"] == 1 and image.header["sform_code"] == 1


def test_synth_command_prints_what_it_wrote(tmp_path):
    result = invoke("synth", tmp_path / "ph", "--cases", "4", "--shape", "48", "48", "24")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ph" / "imagesTr" / "img0004.nii.gz").is_file()
    assert "48x48x24" in result.stdout and "LPS" in result.stdout and "RAS" in result.stdout
    again = invoke("synth", tmp_path / "ph", "--cases", "4")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_synth_refuses_an_empty_shape(tmp_path):
    result = invoke("synth", tmp_path / "d", "--shape", "0", "0", "0", "--cases", "1")
    assert result.exit_code == 2 and "--shape 0 0 0: every axis needs at least one voxel" in result.stderr
    assert not (tmp_path / "d").exists()
