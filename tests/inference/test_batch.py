"""`unetr predict` as a user runs it: batches, outputs, sidecars, statistics, previews, bad inputs."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import predict, write_scan
from unetr_cli.phantoms import make_phantom


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for index, orientation in enumerate(("LPS", "RAS", "LAS")):
        phantom = make_phantom(20 + index, (64, 64, 32), orientation=orientation)
        write_scan(folder / f"case{index}.nii.gz", phantom.image, phantom.affine)
    return folder


def test_single_scan_gets_label_map_and_sidecars(trained_run, scans, tmp_path):
    out = tmp_path / "seg.nii.gz"
    result = predict(
        trained_run / "checkpoint_final.pt",
        scans / "case0.nii.gz",
        "-o",
        out,
        "--stats",
        "--preview",
        "--json",
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    ready = next(e for e in events if e["event"] == "ready")
    assert ready["device"] == "cpu" and ready["startup_s"] > 0
    assert [e["event"] for e in events if e["event"] in ("ready", "predicted", "summary")] == [
        "ready",
        "predicted",
        "summary",
    ]
    stages = next(e for e in events if e["event"] == "predicted")["stages"]  # where a scan's time goes
    names = ["read", "orientation", "preprocess", "windows", "to_scan_grid", "postprocess", "write"]
    assert list(stages) == names
    assert all(seconds >= 0 for seconds in stages.values()) and stages["windows"] > 0
    source, written = nib.load(scans / "case0.nii.gz"), nib.load(out)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8
    labels = np.asanyarray(written.dataobj)
    assert labels.max() <= 13 and (labels == 6).sum() > 0  # the trained model finds the liver
    sidecar = json.loads((tmp_path / "seg.json").read_text())
    assert sidecar["labels"]["6"] == "liver" and sidecar["settings"]["model"]["img_size"] == 32
    assert "6 liver" in (tmp_path / "seg.ctbl").read_text()
    stats = json.loads((tmp_path / "seg_stats.json").read_text())
    liver = next(row for row in stats["organs"] if row["organ"] == "liver")
    voxel_ml = abs(np.linalg.det(source.affine[:3, :3])) / 1000
    assert liver["volume_ml"] == pytest.approx((labels == 6).sum() * voxel_ml, rel=1e-3)
    assert 0 < liver["mean_hu"] < 250
    assert (tmp_path / "seg_stats.csv").read_text().startswith("label,organ,voxels,volume_ml,mean_hu")
    assert (tmp_path / "seg_preview.png").stat().st_size > 10_000


def test_batch_with_bad_files_goes_on(trained_run, scans, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(scans, inputs)
    truncated = inputs / "case1.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:-300])
    (inputs / "notes.nii.gz").write_text("not an image")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), inputs / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), inputs / "two_channels.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((0, 8, 8), np.int16), np.eye(4)), inputs / "empty.nii.gz")
    nan = np.full((16, 16, 16), np.nan, np.float32)
    nib.save(nib.Nifti1Image(nan, np.eye(4)), inputs / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), inputs / "huge.nii")
    header = bytearray((inputs / "huge.nii").read_bytes())
    struct.pack_into(
        "<8h", header, 40, 3, 20_000, 20_000, 4_000, 1, 1, 1, 1
    )  # the dim field, 6.4 TB of voxels
    (inputs / "huge.nii").write_bytes(bytes(header))
    out = tmp_path / "out"
    result = predict(trained_run / "checkpoint_final.pt", inputs, str(inputs / "*.nii"), "-o", out)
    assert result.exit_code == 1
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0_seg.nii.gz", "case2_seg.nii.gz"]
    errors = result.stderr
    assert "case1.nii.gz: truncated or corrupted data" in errors
    assert "notes.nii.gz: not a readable NIfTI file" in errors
    assert "flat.nii.gz: expected a 3D scan, got a 2D image" in errors
    assert "two_channels.nii.gz: expected a 3D scan, got a 4D with 2 channels" in errors
    assert "nan.nii.gz: contains 4096 NaN or infinite voxels" in errors
    assert "empty.nii.gz: has an empty axis (shape (0, 8, 8))" in errors
    assert "huge.nii: header declares (20000, 20000, 4000) voxels" in errors
    assert "2 written, 0 skipped (existing), 7 failed" in result.stdout
    assert "Traceback" not in result.output


def test_existing_outputs_are_kept_unless_asked(trained_run, scans, tmp_path):
    out = tmp_path / "out"
    checkpoint = trained_run / "checkpoint_final.pt"
    assert predict(checkpoint, scans / "case0.nii.gz", scans / "case1.nii.gz", "-o", out, "-q").exit_code == 0
    first = (out / "case0_seg.nii.gz").stat().st_mtime_ns
    refused = predict(checkpoint, scans, "-o", out, "-q")
    assert refused.exit_code == 1 and "2 output(s) exist; pass --overwrite" in refused.stderr
    resumed = predict(checkpoint, scans, "-o", out, "--skip-existing", "-q")
    assert resumed.exit_code == 0 and "1 written, 2 skipped" in resumed.stdout
    assert (out / "case0_seg.nii.gz").stat().st_mtime_ns == first
    assert predict(checkpoint, scans, "-o", out, "--overwrite", "-q").exit_code == 0
    assert (out / "case0_seg.nii.gz").stat().st_mtime_ns != first


def test_missing_input_and_wrong_output_kind(trained_run, scans, tmp_path):
    checkpoint = trained_run / "checkpoint_final.pt"
    result = predict(checkpoint, tmp_path / "nope.nii.gz", "-o", tmp_path / "seg.nii.gz")
    assert result.exit_code == 1 and "nope.nii.gz: file not found" in result.stderr
    several = predict(checkpoint, scans, "-o", tmp_path / "seg.nii.gz")
    assert several.exit_code == 2 and "-o must be a folder" in several.stderr


def test_tta_changes_the_prediction_and_mostly_agrees(trained_run, scans, tmp_path):
    checkpoint = trained_run / "checkpoint_final.pt"
    plain = predict(
        checkpoint, scans / "case2.nii.gz", "-o", tmp_path / "a.nii.gz", "--mode", "constant", "-q"
    )
    assert plain.exit_code == 0, plain.output
    with_tta = predict(
        checkpoint,
        scans / "case2.nii.gz",
        "-o",
        tmp_path / "b.nii.gz",
        "--tta",
        "--blend-mode",
        "constant",
        "-q",
    )
    assert with_tta.exit_code == 0, with_tta.output
    used = json.loads((tmp_path / "b.json").read_text())["settings"]["inference"]
    assert used["tta"] is True and used["blend_mode"] == "constant"
    a = np.asanyarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    b = np.asanyarray(nib.load(tmp_path / "b.nii.gz").dataobj)
    assert (a != b).any(), "--tta gave exactly the plain prediction: the flips were not averaged"
    assert (a == b).mean() > 0.9


def test_inference_flags_reach_the_settings_used(trained_run, scans, tmp_path):
    out = tmp_path / "seg.nii.gz"
    flags = ("--no-amp", "--mode", "constant", "--infer-overlap", "0.25", "--resample", "labels", "-q")
    result = predict(trained_run / "checkpoint_final.pt", scans / "case0.nii.gz", "-o", out, *flags)
    assert result.exit_code == 0, result.output
    used = json.loads((tmp_path / "seg.json").read_text())["settings"]["inference"]
    assert used["amp"] is False and used["blend_mode"] == "constant"
    assert used["infer_overlap"] == 0.25 and used["resample"] == "labels"


def test_an_input_is_never_overwritten(trained_run, scans, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(scans / "case0.nii.gz", scan)
    original = scan.read_bytes()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    for target in (scan, link):
        result = predict(trained_run / "checkpoint_final.pt", scan, "-o", target, "--overwrite")
        assert result.exit_code == 2
        assert "inputs are never overwritten" in result.stderr and "--overwrite" not in result.stderr
    assert scan.read_bytes() == original


def test_predicting_into_the_input_folder_never_reads_its_own_outputs(trained_run, scans, tmp_path):
    folder = tmp_path / "scans"
    shutil.copytree(scans, folder)
    (folder / ".unetr-tmp-999999999-case9_seg.nii.gz").write_bytes(b"left by a killed process")
    checkpoint = trained_run / "checkpoint_final.pt"
    first = predict(checkpoint, folder, "-o", folder, "-q")
    assert first.exit_code == 0, first.output
    assert "3 written" in first.stdout
    assert not list(folder.glob(".unetr-tmp-*"))  # the dead process's temporary file is gone
    again = predict(checkpoint, folder, "-o", folder, "--skip-existing", "-q")
    assert again.exit_code == 0 and "0 written, 3 skipped" in again.stdout
    assert not list(folder.glob("*_seg_seg*"))


def test_skip_existing_finishes_incomplete_outputs(trained_run, scans, tmp_path):
    out = tmp_path / "segs"
    checkpoint = trained_run / "checkpoint_final.pt"
    assert predict(checkpoint, scans, "-o", out, "--stats", "-q").exit_code == 0
    (out / "case1_seg_stats.json").unlink()  # as if a kill had struck between the files of one scan
    resumed = predict(checkpoint, scans, "-o", out, "--stats", "--skip-existing", "-q")
    assert resumed.exit_code == 0 and "1 written, 2 skipped" in resumed.stdout
    assert (out / "case1_seg_stats.json").is_file()


def test_the_model_is_built_only_once_a_scan_has_passed_its_checks(trained_run, scans, tmp_path, monkeypatch):
    """Start-up of a single invocation: the scan is decoded and checked before the model is built, so a scan
    refused by its voxels never builds it; a batch whose outputs all exist (--skip-existing) builds none."""
    from unetr_cli import model as model_module
    from unetr_cli.inference import batch

    order = []
    real_read, real_build = batch.read_scan, model_module.model_with_weights

    def read_scan(source):
        scan = real_read(source)
        order.append(f"read {Path(source).name}")
        return scan

    def model_with_weights(*args):
        order.append("build")
        return real_build(*args)

    monkeypatch.setattr(batch, "read_scan", read_scan)
    monkeypatch.setattr(model_module, "model_with_weights", model_with_weights)
    phantom = make_phantom(41, (48, 48, 16))
    no_air = write_scan(tmp_path / "no_air.nii.gz", np.clip(phantom.image, 0, None), phantom.affine)
    refused = predict(trained_run / "checkpoint_final.pt", no_air, "-o", tmp_path / "n.nii.gz", "-q")
    assert refused.exit_code == 1 and "no air" in refused.stderr
    assert order == ["read no_air.nii.gz"]  # refused by its voxels: no model was built
    out = tmp_path / "seg.nii.gz"
    order.clear()
    assert (
        predict(trained_run / "checkpoint_final.pt", scans / "case0.nii.gz", "-o", out, "-q").exit_code == 0
    )
    assert out.is_file() and order == ["read case0.nii.gz", "build"]
    again = predict(trained_run / "checkpoint_final.pt", scans / "case0.nii.gz", "-o", out, "--skip-existing")
    assert again.exit_code == 0 and "0 written, 1 skipped" in again.stdout
    assert order == ["read case0.nii.gz", "build"]  # neither read nor built again


def test_unusable_outputs_are_refused_before_the_model_loads(scans, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    result = predict(tmp_path / "no_such_model.pt", scans, "-o", tmp_path / "a_file" / "segs")
    assert result.exit_code == 2 and "a file is in the way" in result.stderr


def test_a_scan_that_cannot_fit_is_named_and_the_batch_goes_on(trained_run, scans, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(scans, folder)
    huge = nib.load(folder / "case1.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asanyarray(huge.dataobj), np.diag([600.0, 600.0, 600.0, 1.0])),
        folder / "case1.nii.gz",
    )
    result = predict(trained_run / "checkpoint_final.pt", folder, "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert "case1.nii.gz: resampled to 4x4x5 mm it would have" in result.stderr
    assert "2 written, 0 skipped (existing), 1 failed" in result.stdout


def test_a_full_disk_is_one_scans_failure(trained_run, scans, tmp_path, monkeypatch):
    import errno

    from unetr_cli.inference import batch

    real = batch.write_label_sidecars

    def disk_full_for_case1(target, *args):
        if target.name.startswith("case1"):
            raise OSError(
                errno.ENOSPC, "No space left on device", str(target.with_suffix("").with_suffix(".json"))
            )
        return real(target, *args)

    monkeypatch.setattr(batch, "write_label_sidecars", disk_full_for_case1)
    out = tmp_path / "out"
    result = predict(trained_run / "checkpoint_final.pt", scans, "-o", out, "-q")
    assert result.exit_code == 1
    assert "case1_seg.json: no space left on the device" in result.stderr
    assert not (out / "case1_seg.nii.gz").exists()  # no label map without its sidecars
    assert (out / "case0_seg.nii.gz").is_file() and (out / "case2_seg.nii.gz").is_file()


def test_a_cuda_error_is_one_scans_failure(trained_run, scans, tmp_path, monkeypatch):
    """A GPU fault while segmenting one scan (simulated here: CI has no GPU) is that scan's one-line
    failure without a traceback; the other scans are written."""
    from unetr_cli.inference import batch

    real = batch.segment_scan

    def cuda_error_for_case1(scan, *args, **kwargs):
        if scan.path.name == "case1.nii.gz":
            raise RuntimeError(
                "CUDA error: an illegal memory access was encountered\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        return real(scan, *args, **kwargs)

    monkeypatch.setattr(batch, "segment_scan", cuda_error_for_case1)
    out = tmp_path / "out"
    result = predict(trained_run / "checkpoint_final.pt", scans, "-o", out, "-q")
    assert result.exit_code == 1
    # said when it happens and again in the summary, each time in one line
    failures = [line for line in result.stderr.splitlines() if "case1.nii.gz" in line]
    message = "case1.nii.gz: CUDA error: an illegal memory access was encountered"
    assert failures and all(line.endswith(message) for line in failures)
    assert "Traceback" not in result.stderr and "asynchronously" not in result.stderr
    assert "2 written, 0 skipped (existing), 1 failed" in result.stdout
    assert (out / "case0_seg.nii.gz").is_file() and (out / "case2_seg.nii.gz").is_file()
    assert not (out / "case1_seg.nii.gz").exists()


def test_the_sliding_window_options_reach_monai(trained_run, scans, tmp_path, monkeypatch):
    import monai.inferers

    seen = []
    real = monai.inferers.sliding_window_inference

    def spy(**kwargs):
        seen.append({k: kwargs[k] for k in ("overlap", "mode", "sw_batch_size", "roi_size")})
        return real(**kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    options = ["--infer-overlap", "0.3", "--blend-mode", "constant", "--sw-batch-size", "2", "-q"]
    result = predict(
        trained_run / "checkpoint_final.pt", scans / "case0.nii.gz", "-o", tmp_path / "s.nii.gz", *options
    )
    assert result.exit_code == 0, result.output
    assert seen and all(call["overlap"] == 0.3 and call["mode"] == "constant" for call in seen)
    assert all(
        call["sw_batch_size"] == 2 and call["roi_size"] == (32, 32, 32) for call in seen
    )  # tiny-cpu's window
