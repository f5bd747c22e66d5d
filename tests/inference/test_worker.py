"""Batch prediction shared among processes through torchrun (two CPU processes here)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import invoke, write_scan
from unetr_cli.phantoms import make_phantom


@pytest.mark.slow
def test_two_processes_share_a_batch_and_a_rerun_finishes_it(trained_run, tmp_path):
    scans = tmp_path / "scans"
    for index in range(3):
        phantom = make_phantom(40 + index, (64, 64, 32))
        write_scan(scans / f"case{index}.nii.gz", phantom.image, phantom.affine)
    checkpoint = trained_run / "checkpoint_final.pt"
    out = tmp_path / "segs"
    shared = invoke("predict", scans, "-o", out, "--checkpoint", checkpoint, "--nproc-per-node", "2", "-q")
    assert shared.exit_code == 0, shared.output
    assert "3 written, 0 skipped (existing), 0 failed" in shared.stdout
    single = invoke(
        "predict", scans / "case1.nii.gz", "-o", tmp_path / "one.nii.gz", "--checkpoint", checkpoint
    )
    assert single.exit_code == 0, single.output
    assert np.array_equal(
        np.asanyarray(nib.load(out / "case1_seg.nii.gz").dataobj),
        np.asanyarray(nib.load(tmp_path / "one.nii.gz").dataobj),
    )
    (out / "case2_seg.nii.gz").unlink()  # as if the batch had been interrupted
    rerun = invoke(
        "predict",
        scans,
        "-o",
        out,
        "--checkpoint",
        checkpoint,
        "--nproc-per-node",
        "2",
        "--skip-existing",
        "-q",
    )
    assert rerun.exit_code == 0, rerun.output
    assert "1 written, 2 skipped (existing), 0 failed" in rerun.stdout
    assert (out / "case2_seg.nii.gz").is_file()


def test_more_processes_than_gpus_is_a_usage_error_naming_both(trained_run, tmp_path):
    import torch

    gpus = torch.cuda.device_count()
    phantom = make_phantom(40, (64, 64, 32))
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    checkpoint = trained_run / "checkpoint_final.pt"
    too_many = ("--nproc-per-node", str(gpus + 1))
    result = invoke(
        "predict", scan, "-o", tmp_path / "out", "--checkpoint", checkpoint, *too_many, "--device", "cuda"
    )
    assert result.exit_code == 2
    assert f"--nproc-per-node {gpus + 1}: only {gpus} GPU(s) are visible" in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
