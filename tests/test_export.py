"""Export round trips: TorchScript, ONNX and safetensors files work as inputs to predict and finetune."""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import invoke, write_scan
from unetr_cli.checkpoint import read_weights
from unetr_cli.model import model_with_weights
from unetr_cli.phantoms import make_phantom
from unetr_cli.settings import Settings


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    phantom = make_phantom(31, (64, 64, 32), orientation="LPS")
    return write_scan(tmp_path_factory.mktemp("scan") / "scan.nii.gz", phantom.image, phantom.affine)


def _labels(path):
    return np.asanyarray(nib.load(path).dataobj)


def test_torchscript_export_round_trip(trained_run, scan, tmp_path):
    checkpoint = trained_run / "checkpoint_final.pt"
    result = invoke("export", "--checkpoint", checkpoint, "--torchscript", "-o", tmp_path / "model.pt")
    assert result.exit_code == 0, result.output
    assert "max |eager - exported| on a random 32^3 window" in result.stdout
    diff = float(result.stdout.split("window:")[1].split()[0])
    assert diff < 1e-4
    refused = invoke("predict", scan, "-o", tmp_path / "ts.nii.gz", "--checkpoint", tmp_path / "model.pt")
    assert refused.exit_code == 1 and "--trust-torchscript" in refused.stderr
    ok = invoke(
        "predict",
        scan,
        "-o",
        tmp_path / "ts.nii.gz",
        "--checkpoint",
        tmp_path / "model.pt",
        "--trust-torchscript",
        "--saved-checkpoint",
        "torchscript",
        "-q",
    )
    assert ok.exit_code == 0, ok.output
    assert (
        invoke("predict", scan, "-o", tmp_path / "ck.nii.gz", "--checkpoint", checkpoint, "-q").exit_code == 0
    )
    assert np.array_equal(_labels(tmp_path / "ts.nii.gz"), _labels(tmp_path / "ck.nii.gz"))
    again = invoke("export", "--checkpoint", checkpoint, "--torchscript", "-o", tmp_path / "model.pt")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_torchscript_weights_give_the_scripted_outputs(trained_run, tmp_path):
    """Fine-tuning from TorchScript copies the weights into an eager model that computes the same thing."""
    invoke(
        "export",
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
        "--torchscript",
        "-o",
        tmp_path / "m.pt",
    )
    weights = read_weights(tmp_path / "m.pt", trust_torchscript=True)
    settings = Settings.from_dict(weights.settings)
    eager = model_with_weights(settings.model, weights.state_dict)
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(eager(x), weights.extra["module"](x), atol=1e-5)


def test_onnx_export_without_onnx_says_what_to_install(trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    out = tmp_path / "m.onnx"
    result = invoke("export", "--checkpoint", trained_run / "checkpoint_final.pt", "--onnx", "-o", out)
    assert result.exit_code == 2 and "pip install 'unetr[onnx]'" in result.stderr
    assert not out.exists()


def test_onnx_export_parity(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    result = invoke(
        "export", "--checkpoint", trained_run / "checkpoint_final.pt", "--onnx", "-o", tmp_path / "m.onnx"
    )
    assert result.exit_code == 0, result.output
    assert float(result.stdout.split("window:")[1].split()[0]) < 1e-3
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert '"img_size": 32' in meta["settings"] and "liver" in meta["labels"]


def test_safetensors_export_then_predict(trained_run, scan, tmp_path):
    out = tmp_path / "m.safetensors"
    assert (
        invoke(
            "export", "--checkpoint", trained_run / "checkpoint_final.pt", "--safetensors", "-o", out
        ).exit_code
        == 0
    )
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the mode of any file the user writes
    assert invoke("predict", scan, "-o", tmp_path / "a.nii.gz", "--checkpoint", out, "-q").exit_code == 0
    assert (
        invoke(
            "predict",
            scan,
            "-o",
            tmp_path / "b.nii.gz",
            "--checkpoint",
            trained_run / "checkpoint_final.pt",
            "-q",
        ).exit_code
        == 0
    )
    assert np.array_equal(_labels(tmp_path / "a.nii.gz"), _labels(tmp_path / "b.nii.gz"))


def test_export_of_a_file_without_settings_asks_for_the_architecture(tmp_path):
    from tests.test_model import reference_state_dict

    raw = tmp_path / "UNETR_model_best_acc.pth"
    torch.save(reference_state_dict(), raw)
    result = invoke("export", "--checkpoint", raw, "--safetensors", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 2
    assert "holds no model settings; name the architecture with --preset btcv" in result.stderr
    named = invoke(
        "export", "--checkpoint", raw, "--preset", "btcv", "--safetensors", "-o", tmp_path / "m.safetensors"
    )
    assert named.exit_code == 0, named.output


def test_export_needs_exactly_one_format(trained_run, tmp_path):
    result = invoke("export", "--checkpoint", trained_run / "checkpoint_final.pt", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "exactly one of --torchscript, --onnx, --safetensors" in result.stderr


def test_export_without_room_for_the_file_is_refused_before_writing(trained_run, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1 << 20))
    out = tmp_path / "m.pt"
    result = invoke("export", "--checkpoint", trained_run / "checkpoint_final.pt", "--torchscript", "-o", out)
    assert result.exit_code == 1
    assert "not enough free space" in result.stderr and "MB free" in result.stderr
    assert list(tmp_path.iterdir()) == []
