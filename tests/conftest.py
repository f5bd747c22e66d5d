"""Shared fixtures: the real CLI, and tiny phantom datasets written to temporary folders.

Every test runs on the CPU (UNETR_INFERENCE__DEVICE=cpu, inherited by the processes tests start) unless it is
marked `gpu`: those run the real commands on CUDA and are skipped where no GPU is visible. Tests marked
`no_gpu` assert what happens on a machine without one and are skipped where a GPU is visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unetr_cli.cli import app
from unetr_cli.monai_extras import skip_unused_extras

skip_unused_extras()  # in-process tests get MONAI as the unetr programs load it

TINY_SHAPE = (64, 64, 32)


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu = _gpu_visible()
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "no_gpu" in item.keywords and gpu:
            item.add_marker(pytest.mark.skip(reason="asserts behaviour without a GPU; one is visible"))


@pytest.fixture(autouse=True)
def _isolated_env(request, monkeypatch, tmp_path):
    """No test sees the developer's UNETR_* variables, debug mode or hub cache; tests not marked `gpu` run on
    the CPU."""
    for key in list(os.environ):
        if key.startswith("UNETR_"):
            monkeypatch.delenv(key)
    if "gpu" not in request.keywords:
        monkeypatch.setenv("UNETR_INFERENCE__DEVICE", "cpu")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def invoke(*args: str, env: dict[str, str] | None = None):
    """Run `unetr ARGS` in-process and return click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False, prog_name="unetr")


def predict(checkpoint: Path, *args):
    """`unetr predict ARGS --checkpoint CHECKPOINT`."""
    return invoke("predict", *args, "--checkpoint", checkpoint)


def tiny_train(data_dir: Path, logdir: Path, *extra, epochs: int = 1, command: str = "train"):
    """The tests' tiny run: `unetr train --preset tiny-cpu --data-dir D --logdir L --max-epochs N -q ...`."""
    common = (
        "--preset",
        "tiny-cpu",
        "--data-dir",
        data_dir,
        "--logdir",
        logdir,
        "--max-epochs",
        epochs,
        "-q",
    )
    return invoke(command, *common, *extra)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Six 64x64x32 phantoms (4 training, 2 validation) in the BTCV layout; read-only for tests."""
    from unetr_cli.phantoms import write_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, cases=6, seed=7, shape=TINY_SHAPE, validation_fraction=0.34)
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory) -> Path:
    """A tiny-cpu run trained on the CPU for 10 epochs on the tiny dataset (read-only for tests)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = tiny_train(tiny_dataset, run, "--seed", "0", "--val-every", "5", "--device", "cpu", epochs=10)
    assert result.exit_code == 0, result.output
    return run


def write_scan(path: Path, image, affine) -> Path:
    """Save an int16 HU volume as NIfTI with scanner qform/sform codes."""
    from unetr_cli.volumes import save_nifti

    return save_nifti(image, affine, path)


REALDATA = Path(__file__).parent / "fixtures" / "realdata"  # real scanners' files; see its README.md


def dicom_errors(path: Path) -> list[str]:
    """The errors dicom3tools' validator (dciodvfy) finds in a DICOM file: an independent check of what unetr
    writes. Skips the test where dicom3tools is not installed (CI installs it)."""
    import shutil
    import subprocess

    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def json_events(output: str) -> list[dict]:
    """The --json events a command printed, in order."""
    import json

    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
