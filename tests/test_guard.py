"""No command overwrites one of its inputs or a file unetr did not write, and two writers never both write one
output: predict, evaluate, export, report, finetune (guard.py, datafiles.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import invoke, predict, write_scan
from unetr_cli.phantoms import make_phantom


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    phantom = make_phantom(51, (48, 48, 16))
    return write_scan(tmp_path_factory.mktemp("guard") / "ct.nii.gz", phantom.image, phantom.affine)


@pytest.fixture
def checkpoint(trained_run) -> Path:
    return trained_run / "checkpoint_final.pt"


def copied(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    target.write_bytes(path.read_bytes())
    return target


def test_evaluate_never_writes_over_an_input_or_an_existing_report(checkpoint, tiny_dataset, tmp_path):
    weights = copied(checkpoint, tmp_path)
    before = weights.read_bytes()
    same = invoke("evaluate", "--data-dir", tiny_dataset, "--checkpoint", weights, "--output", weights, "-q")
    assert same.exit_code == 2 and "is an input" in same.stderr and weights.read_bytes() == before
    truths, preds = tmp_path / "truth", tmp_path / "pred"
    phantom = make_phantom(52, (32, 32, 8))
    truth = write_scan(truths / "case.nii.gz", phantom.label, phantom.affine)
    write_scan(preds / "case_seg.nii.gz", phantom.label, phantom.affine)
    truth_bytes = truth.read_bytes()
    common = ["evaluate", "--pred-dir", preds, "--gt-dir", truths, "-q"]
    as_csv = invoke(*common, "--csv", truth, "--overwrite")
    assert as_csv.exit_code == 2 and "is an input" in as_csv.stderr and truth.read_bytes() == truth_bytes
    report = tmp_path / "scores.json"
    report.write_text("the user's notes")
    kept = invoke(*common, "--output", report)
    assert (
        kept.exit_code == 1 and "already exists" in kept.stderr and report.read_text() == "the user's notes"
    )
    replaced = invoke(*common, "--output", report, "--overwrite")
    assert replaced.exit_code == 0 and json.loads(report.read_text())["summary"]["cases"] == 1


@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink"])
def test_export_never_replaces_its_checkpoint(checkpoint, tmp_path, spelling):
    weights = copied(checkpoint, tmp_path)
    output = {"same": weights, "symlink": tmp_path / "link.pt", "hardlink": tmp_path / "hard.pt"}[spelling]
    if spelling == "symlink":
        output.symlink_to(weights)
    elif spelling == "hardlink":
        os.link(weights, output)
    before = weights.read_bytes()
    result = invoke("export", "--checkpoint", weights, "--safetensors", "-o", output, "--overwrite")
    assert result.exit_code == 2 and "is an input" in result.stderr
    assert weights.read_bytes() == before


def metaimage(folder: Path, suffix: str) -> tuple[Path, Path]:
    """A phantom as a detached MetaImage or NRRD header and its data file."""
    phantom = make_phantom(53, (40, 40, 12))
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(phantom.image.transpose(2, 1, 0)))
    header = folder / f"scan{suffix}"
    sitk.WriteImage(image, str(header))
    data = next(p for p in folder.iterdir() if p != header)
    return header, data


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_predict_never_writes_over_a_detached_data_file(checkpoint, tmp_path, suffix):
    header, data = metaimage(tmp_path / "in", suffix)
    before = data.read_bytes()
    target = data.with_suffix(".mha")
    data.rename(target)  # the data file named like an output (MetaImage writes .mha)
    header.write_text(header.read_text().replace(data.name, target.name))
    result = predict(checkpoint, header, "-o", target, "--overwrite")
    assert result.exit_code == 2 and "is an input" in result.stderr
    assert target.read_bytes() == before


@pytest.mark.parametrize("where", ["/etc/passwd", "../outside.raw"])
def test_a_header_whose_data_file_lies_elsewhere_is_refused(tmp_path, where):
    header, data = metaimage(tmp_path / "in", ".mhd")
    (tmp_path / "outside.raw").write_bytes(data.read_bytes())
    header.write_text(header.read_text().replace(f"= {data.name}", f"= {where}"))
    result = invoke("predict", header, "-o", tmp_path / "s.nii.gz", "--checkpoint", tmp_path / "none.pt")
    assert result.exit_code == 1 and "lies outside the header's folder" in result.stderr
    assert not (tmp_path / "s.nii.gz").exists() and "none.pt" not in result.stderr  # before the model


def test_skip_existing_keeps_what_unetr_did_not_write_and_remembers_flags(checkpoint, scan, tmp_path):
    out = tmp_path / "ct_seg.nii.gz"
    out.write_bytes(b"a file of the user's, no sidecar")
    kept = predict(checkpoint, scan, "-o", out, "--skip-existing")
    assert kept.exit_code == 1 and "unetr did not write it" in kept.stderr
    assert out.read_bytes() == b"a file of the user's, no sidecar"
    flagged = predict(checkpoint, scan, "-o", out, "--overwrite", "--fail-on-flags", "-q")
    stats = json.loads((tmp_path / "ct_seg_stats.json").read_text())
    assert flagged.exit_code == (1 if stats["flagged"] or stats["orientation"] or stats["empty"] else 0)
    assert flagged.exit_code == 1, "the tiny model's map of this phantom is expected to be flagged"
    rerun = predict(checkpoint, scan, "-o", out, "--skip-existing", "--fail-on-flags")
    assert rerun.exit_code == 1 and "0 written, 1 skipped" in rerun.stdout
    assert "flagged in its existing report ct_seg_stats.json" in " ".join(rerun.stderr.split())


def test_a_unit_that_fails_halfway_leaves_none_of_its_files(checkpoint, scan, tmp_path, monkeypatch):
    import errno

    from unetr_cli.inference import batch

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(batch, "save_nifti", full_disk)
    result = predict(checkpoint, scan, "-o", tmp_path / "out" / "ct_seg.nii.gz", "--report")
    assert result.exit_code == 1 and "no space left on the device" in result.stderr
    assert "ct_seg.nii.gz: no space left" in result.stderr  # the file being written, not a temporary one
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no orphan sidecar or report


def test_two_predictions_racing_for_one_new_output_leave_one_winner(checkpoint, tmp_path):
    first, second = make_phantom(54, (48, 48, 16)), make_phantom(55, (48, 48, 16))
    scans = [
        write_scan(tmp_path / f"{n}.nii.gz", p.image, p.affine) for n, p in (("a", first), ("b", second))
    ]
    out = tmp_path / "shared_seg.nii.gz"
    command = [sys.executable, "-m", "unetr_cli", "predict", "-o", str(out), "--checkpoint", str(checkpoint)]
    env = {**os.environ, "UNETR_INFERENCE__DEVICE": "cpu"}
    runs = [
        subprocess.Popen(
            [*command[:4], str(s), *command[4:]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in scans
    ]
    results = [(run.wait(timeout=300), run.stdout.read(), run.stderr.read()) for run in runs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    loser = next(err for code, _, err in results if code == 1)
    assert "exist" in loser or "written meanwhile by another process" in loser
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    sidecar = json.loads((tmp_path / "shared_seg.json").read_text())
    assert sidecar["source"] == str(scans[winner])  # one unit, all of it from the winner
    assert np.asanyarray(nib.load(out).dataobj).shape == (48, 48, 16)


def test_report_never_writes_over_its_inputs(tmp_path):
    phantom = make_phantom(56, (32, 32, 8))
    labels = write_scan(tmp_path / "seg.nii.gz", phantom.label, phantom.affine)
    (tmp_path / "seg_stats.json").symlink_to(labels)  # the report's name, pointing at the label map
    before = labels.read_bytes()
    result = invoke("report", labels, "--overwrite")
    assert result.exit_code == 2 and "is an input" in result.stderr and labels.read_bytes() == before


def test_a_new_run_never_deletes_the_checkpoint_it_starts_from(checkpoint, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    weights = copied(checkpoint, run)
    start = weights.rename(run / "checkpoint_best.pt")
    before = start.read_bytes()
    common = ["--data-dir", tiny_dataset, "--logdir", run, "--max-epochs", "1", "--overwrite", "-q"]
    result = invoke("finetune", "--checkpoint", start, *common)
    assert result.exit_code == 2 and "is an input" in result.stderr
    assert start.read_bytes() == before


def test_synth_never_replaces_files_it_did_not_write(tmp_path):
    own = tmp_path / "data" / "imagesTr" / "img0001.nii.gz"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"the user's own scan")
    refused = invoke("synth", tmp_path / "data", "--cases", "2", "--shape", "24", "24", "8", "-q")
    assert refused.exit_code == 1 and "1 of the dataset's files exist" in refused.stderr
    assert own.read_bytes() == b"the user's own scan"
    replaced = invoke(
        "synth", tmp_path / "data", "--cases", "2", "--shape", "24", "24", "8", "--overwrite", "-q"
    )
    assert replaced.exit_code == 0 and own.read_bytes() != b"the user's own scan"


@pytest.mark.parametrize("spelling", ["dotdot", "symlink", "hardlink"])
def test_predict_never_writes_over_its_scan_however_spelled(checkpoint, scan, tmp_path, spelling):
    own = copied(scan, tmp_path / "in")
    (tmp_path / "in" / "sub").mkdir()
    output = {
        "dotdot": tmp_path / "in" / "sub" / ".." / own.name,  # resolves to the scan
        "symlink": tmp_path / "link.nii.gz",
        "hardlink": tmp_path / "hard.nii.gz",  # another path, the same inode
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(own)
    elif spelling == "hardlink":
        os.link(own, output)
    before = own.read_bytes()
    result = predict(checkpoint, own, "-o", output, "--overwrite")
    assert result.exit_code == 2 and "is an input" in result.stderr
    assert own.read_bytes() == before
