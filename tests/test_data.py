"""The datalist and the checks every case passes before training starts."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import tiny_train
from unetr_cli.data import read_datalist
from unetr_cli.errors import InputError, UsageError


@pytest.fixture
def dataset(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny phantom dataset that a test may break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


def _train(data_dir: Path, *extra: str):
    return tiny_train(data_dir, data_dir.parent / "run", *extra)


def _listing(data_dir: Path) -> dict:
    return json.loads((data_dir / "dataset_0.json").read_text())


def _rewrite(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    old = nib.load(path)
    nib.save(nib.Nifti1Image(array, old.affine if affine is None else affine), path)


def test_datalist_paths_are_relative_to_the_data_dir(dataset):
    datalist = read_datalist(dataset, "dataset_0.json")
    assert len(datalist.training) == 4 and len(datalist.validation) == 2
    assert datalist.training[0]["image"] == str(dataset / "imagesTr" / "img0001.nii.gz")


def test_fold_selects_the_validation_cases(dataset):
    listing = _listing(dataset)
    for i, entry in enumerate(listing["training"]):
        entry["fold"] = i % 2
    (dataset / "dataset_0.json").write_text(json.dumps(listing))
    datalist = read_datalist(dataset, "dataset_0.json", fold=1)
    assert [Path(e["image"]).name for e in datalist.validation] == ["img0002.nii.gz", "img0004.nii.gz"]
    assert len(datalist.training) == 2
    with pytest.raises(UsageError, match=r"has folds \[0, 1\]"):
        read_datalist(dataset, "dataset_0.json", fold=3)


def test_fold_without_fold_fields_is_refused(dataset):
    with pytest.raises(UsageError, match="has no 'fold' fields"):
        read_datalist(dataset, "dataset_0.json", fold=0)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda d: shutil.rmtree(d), "data folder not found"),
        (lambda d: (d / "dataset_0.json").unlink(), "dataset_0.json: datalist not found"),
        (lambda d: (d / "dataset_0.json").write_text("{'training': []"), "dataset_0.json: not valid JSON"),
        (
            lambda d: (d / "dataset_0.json").write_text('{"validation": []}'),
            'dataset_0.json: has no "training" list',
        ),
        (
            lambda d: (d / "dataset_0.json").write_text('{"training": [{"image": "a.nii.gz"}]}'),
            'entry 0 of "training" needs "image" and "label"',
        ),
        (
            lambda d: (d / "dataset_0.json").write_text(
                '{"training": [{"image": "a.nii.gz", "label": "b.nii.gz", "fold": "x"}]}'
            ),
            'entry 0 of "training": "fold" must be an integer, not \'x\'',
        ),
    ],
)
def test_bad_datalists(dataset, breakage, expected):
    breakage(dataset)
    result = _train(dataset)
    assert result.exit_code != 0
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert not (dataset.parent / "run").exists()


def test_every_missing_file_is_listed(dataset):
    (dataset / "imagesTr" / "img0002.nii.gz").unlink()
    (dataset / "labelsTr" / "label0005.nii.gz").unlink()
    result = _train(dataset)
    assert result.exit_code == 1
    assert "2 file(s) in the datalist are missing" in result.stderr
    assert "img0002.nii.gz" in result.stderr and "label0005.nii.gz" in result.stderr


def _break_truncated(d):
    path = d / "imagesTr" / "img0003.nii.gz"
    path.write_bytes(path.read_bytes()[:-200])


def _break_corrupt_gzip(d):
    path = d / "imagesTr" / "img0003.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1000] ^= 0xFF  # flip voxel bytes, then recompress with the original (now wrong) CRC
    data = gzip.compress(bytes(raw))
    original_crc = path.read_bytes()[-8:-4]
    path.write_bytes(data[:-8] + original_crc + data[-4:])


def _break_shape(d):
    label = d / "labelsTr" / "label0003.nii.gz"
    _rewrite(label, np.asanyarray(nib.load(label).dataobj)[:, :, :-2])


def _break_affine(d):
    label = d / "labelsTr" / "label0003.nii.gz"
    affine = nib.load(label).affine.copy()
    affine[0, 3] += 25.0
    _rewrite(label, np.asanyarray(nib.load(label).dataobj), affine)


def _break_values(d, value):
    label = d / "labelsTr" / "label0003.nii.gz"
    data = np.asanyarray(nib.load(label).dataobj).astype(np.float32)
    data[10, 10, 10] = value
    _rewrite(label, data)


def _break_dims(d, shape):
    _rewrite(d / "imagesTr" / "img0003.nii.gz", np.zeros(shape, np.int16))


def _break_voxel_size(d):
    for path in (d / "imagesTr" / "img0003.nii.gz", d / "labelsTr" / "label0003.nii.gz"):
        _rewrite(path, np.asanyarray(nib.load(path).dataobj), np.diag([600.0, 600.0, 600.0, 1.0]))


def _break_nan(d):
    image = d / "imagesTr" / "img0003.nii.gz"
    data = np.asanyarray(nib.load(image).dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    _rewrite(image, data)


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_break_truncated, "img0003.nii.gz: truncated or corrupted data"),
        (_break_corrupt_gzip, "img0003.nii.gz: truncated or corrupted data"),
        (_break_shape, "label0003.nii.gz: shape (64, 64, 30) differs from its image's (64, 64, 32)"),
        (_break_affine, "label0003.nii.gz: affine differs from its image's"),
        (lambda d: _break_values(d, 14), "label0003.nii.gz: has label values 0..14 outside 0..13"),
        (lambda d: _break_values(d, 2.5), "label0003.nii.gz: has non-integer label values"),
        (lambda d: _break_dims(d, (64, 64)), "img0003.nii.gz: expected a 3D scan, got a 2D image"),
        (
            lambda d: _break_dims(d, (64, 64, 32, 2)),
            "img0003.nii.gz: expected a 3D scan, got a 4D with 2 channels",
        ),
        (_break_nan, "img0003.nii.gz: contains 1 NaN or infinite voxels"),
        (_break_voxel_size, "img0003.nii.gz: resampled to 4x4x5 mm it would have"),
    ],
)
def test_bad_cases_are_caught_before_training(dataset, breakage, expected):
    breakage(dataset)
    result = _train(dataset)
    assert result.exit_code == 1, result.output
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert not (dataset.parent / "run" / "checkpoint_latest.pt").exists()


def test_read_info_rejects_zero_scale_affine(tmp_path):
    from unetr_cli.volumes import read_info

    path = tmp_path / "flat.nii.gz"
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(image, path)
    with pytest.raises(InputError, match="zero or non-finite voxel scale"):
        read_info(path)
