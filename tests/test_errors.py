"""Every error names its file and its real cause, in one line, for the cases where it used not to: work inside
MONAI's transforms, settings stored in a checkpoint, environment variables, series that share a number or a
UID, impossible geometry, values that cannot be CT, sizes beyond memory, a full disk during export."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pydicom
import pytest
import torch

from tests.conftest import invoke, tiny_train, write_scan
from unetr_cli.errors import InputError, failure_message
from unetr_cli.phantoms import make_phantom
from unetr_cli.phantoms.dicom_series import write_ct_series


def test_errors_inside_transforms_reach_the_user_as_their_cause():
    def wrapped(cause: BaseException) -> RuntimeError:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise RuntimeError(
                    "applying transform <monai.transforms.SpatialPadd object at 0x7f>"
                ) from inner
        except RuntimeError as outer:
            return outer

    missing = wrapped(InputError("data/img0003.nii.gz", "file not found"))
    assert failure_message(missing, "case") == "data/img0003.nii.gz: file not found"
    full = wrapped(OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoint_latest.pt"))
    assert failure_message(full, "case") == "runs/x/checkpoint_latest.pt: no space left on the device"
    memory = wrapped(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't "
            "allocate memory: you tried to allocate 274877906944 bytes."
        )
    )
    assert (
        failure_message(memory, "img0001.nii.gz") == "img0001.nii.gz: not enough memory (256.0 GiB asked for)"
    )


def test_a_case_deleted_after_the_data_check_is_named(tiny_dataset, tmp_path, monkeypatch):
    import shutil

    from unetr_cli.training import engine

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    real_check = engine.check_data

    def check_then_delete(cases, settings, reporter):
        real_check(cases, settings, reporter)
        Path(cases[0]["image"]).unlink()  # gone between the check and the first epoch

    monkeypatch.setattr(engine, "check_data", check_then_delete)
    result = tiny_train(data, tmp_path / "run")
    assert result.exit_code == 1
    assert "img0001.nii.gz: file not found" in result.stderr and "unexpected" not in result.stderr


def test_a_window_too_large_is_refused_as_a_setting(tiny_dataset, tmp_path):
    result = tiny_train(tiny_dataset, tmp_path / "run", "--img-size", "4096")
    assert (
        result.exit_code == 2
        and "model.img_size = 4096: Input should be less than or equal to 512" in result.stderr
    )


def test_settings_stored_in_a_checkpoint_are_named_after_it(trained_run, tmp_path):
    stored = torch.load(trained_run / "checkpoint_final.pt", weights_only=True)
    stored["settings"]["model"]["img_size"] = 1e9
    bad = tmp_path / "bad_meta.pt"
    torch.save(stored, bad)
    phantom = make_phantom(81, (32, 32, 8))
    scan = write_scan(tmp_path / "ct.nii.gz", phantom.image, phantom.affine)
    result = invoke("predict", scan, "-o", tmp_path / "s.nii.gz", "--checkpoint", bad)
    assert result.exit_code == 2
    assert f"{bad}: its stored settings are not valid: model.img_size = 1000000000.0" in result.stderr
    assert "negative dimension" not in result.stderr


def test_a_variable_that_is_not_json_is_named(monkeypatch):
    monkeypatch.setenv("UNETR_DATA__SPACING", "1.5,1.5,2")
    result = invoke("config", "show")
    assert result.exit_code == 2
    assert "UNETR_DATA__SPACING: '1.5,1.5,2' is not valid JSON; data.spacing takes" in result.stderr
    assert "UNETR_DATA:" not in result.stderr


def test_series_sharing_a_number_or_split_over_folders(trained_run, tmp_path):
    first, second = make_phantom(82, (32, 32, 8)), make_phantom(83, (32, 32, 8))
    folder = tmp_path / "export"
    write_ct_series(first.image, first.affine, folder, series_number=3)
    for path in write_ct_series(second.image, second.affine, tmp_path / "b", series_number=3):
        path.rename(folder / f"b_{path.name}")
    checkpoint = trained_run / "checkpoint_final.pt"
    both = invoke("predict", folder, "-o", tmp_path / "out", "--checkpoint", checkpoint, "-q")
    assert both.exit_code == 0, both.output
    names = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert len(names) == 2 and all(n.startswith("export_s3_") for n in names)
    files = write_ct_series(first.image, first.affine, tmp_path / "split" / "part1")
    (tmp_path / "split" / "part2").mkdir()
    for path in files[4:]:
        path.rename(tmp_path / "split" / "part2" / path.name)
    split = invoke(
        "predict",
        tmp_path / "split" / "part1",
        tmp_path / "split" / "part2",
        "-o",
        tmp_path / "split_out",
        "--checkpoint",
        checkpoint,
    )
    assert split.exit_code == 0, split.output
    assert "is in 2 of the folders named" in split.stderr and "read as one series of 8 images" in split.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda ds: setattr(ds, "ImageOrientationPatient", [0] * 6), "is not two perpendicular unit vectors"),
        (lambda ds: setattr(ds, "RescaleSlope", 0), "every voxel is 0: no image"),
        (lambda ds: setattr(ds, "PixelRepresentation", 0), "no air (about -1000 HU) anywhere"),
    ],
)
def test_headers_that_cannot_be_right_are_named(trained_run, tmp_path, change, expected):
    phantom = make_phantom(84, (32, 32, 8))
    for path in write_ct_series(phantom.image, phantom.affine, tmp_path / "ct"):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
    result = invoke(
        "predict",
        tmp_path / "ct",
        "-o",
        tmp_path / "s.nii.gz",
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
    )
    assert result.exit_code in (1, 2) and expected in " ".join(result.stderr.split())
    assert not (tmp_path / "s.nii.gz").exists() and "two slices at the same position" not in result.stderr


def test_synth_names_a_shape_beyond_memory(tmp_path):
    result = invoke("synth", tmp_path / "d", "--shape", "100000", "100000", "100000", "-q")
    assert (
        result.exit_code == 2 and "--shape 100000 100000 100000: a phantom of 1e+15 voxels" in result.stderr
    )
    assert not (tmp_path / "d").exists()


def test_a_full_disk_during_torchscript_export_is_an_error_and_leaves_nothing(
    trained_run, tmp_path, monkeypatch
):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    out = tmp_path / "model.pt"
    result = invoke("export", "--checkpoint", trained_run / "checkpoint_final.pt", "--torchscript", "-o", out)
    assert result.exit_code == 1 and f"{out}: no space left on the device" in result.stderr
    assert list(tmp_path.iterdir()) == []
