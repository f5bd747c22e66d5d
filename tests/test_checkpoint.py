"""Checkpoint safety: atomic writes, weights-only reads, format detection from the bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import invoke
from tests.test_model import reference_state_dict
from unetr_cli.checkpoint import atomic_save, detect_format, read_weights, safe_load, save_safetensors
from unetr_cli.errors import CheckpointError, InputError


class _BoobyTrap:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def trapped_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "UNETR_model_best_acc.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _BoobyTrap(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_booby_trapped_checkpoint_is_refused_even_when_forced(trapped_checkpoint, monkeypatch):
    path, marker = trapped_checkpoint
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match=r"refused to load.*io\.open"):
        read_weights(path)
    assert not marker.exists()


def test_booby_trapped_checkpoint_through_the_cli(trapped_checkpoint, tmp_path):
    path, marker = trapped_checkpoint
    result = invoke(
        "finetune", "--from", path, "--data-dir", tmp_path, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    )
    assert result.exit_code == 1
    assert "refused to load" in result.stderr and "io.open" in result.stderr
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_reference_trainer_checkpoint_with_numpy_best_acc(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"epoch": 4999, "best_acc": np.float64(0.8213), "state_dict": reference_state_dict()}, path)
    weights = read_weights(path)
    assert weights.kind == "reference trainer checkpoint"
    assert weights.extra == {"epoch": 4999, "best_acc": pytest.approx(0.8213)}
    assert "vit.patch_embedding.cls_token" in weights.state_dict


def test_raw_state_dict_and_safetensors(tmp_path):
    raw = tmp_path / "UNETR_model_best_acc.pth"
    torch.save(reference_state_dict(), raw)
    assert read_weights(raw).kind == "state dict"
    tensors = tmp_path / "weights.bin"  # the extension does not matter
    save_safetensors(
        {"a": torch.ones(3)}, {"settings": {"model": {"feature_size": 8}}, "version": "1"}, tensors
    )
    assert detect_format(tensors) == "safetensors"
    loaded = read_weights(tensors)
    assert loaded.settings == {"model": {"feature_size": 8}}
    assert torch.equal(loaded.state_dict["a"], torch.ones(3))


def test_torchscript_needs_the_trust_flag(tmp_path):
    module = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "model.pth"  # misleading extension on purpose
    module.save(str(path))
    assert detect_format(path) == "torchscript"
    with pytest.raises(CheckpointError, match="--trust-torchscript"):
        read_weights(path)
    loaded = read_weights(path, trust_torchscript=True)
    assert torch.equal(loaded.state_dict["weight"], module.weight)


def test_not_a_checkpoint_and_truncated_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_weights(text)
    good = tmp_path / "good.pth"
    torch.save(reference_state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_weights(truncated)
    with pytest.raises(InputError, match="file not found"):
        read_weights(tmp_path / "missing.pth")


_SAVER = """
import sys, torch
from unetr_cli.checkpoint import atomic_save
path = sys.argv[1]
version = 1
print("ready", flush=True)
while True:
    atomic_save({"version": version, "blob": torch.full((4_000_000,), float(version))}, path)
    version += 1
"""


def test_kill_during_save_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "checkpoint_latest.pt"
    atomic_save({"version": 0, "blob": torch.zeros(4_000_000)}, path)
    for attempt in range(4):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.15 + 0.2 * attempt)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        loaded = safe_load(path)
        assert torch.all(loaded["blob"] == loaded["version"]), "checkpoint is torn"


def _tiny_weights(tmp_path):
    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings

    settings = resolve_settings(SettingsSources(preset="tiny-cpu"))
    torch.manual_seed(0)
    return settings, build_model(settings.model).state_dict()


def test_a_checkpoint_with_damaged_bytes_is_refused_by_its_checksums(tmp_path):
    import zipfile

    settings, state = _tiny_weights(tmp_path)
    path = tmp_path / "model.pt"
    torch.save({"format": "unetr-checkpoint/1", "model": state, "settings": settings.to_dict()}, path)
    with zipfile.ZipFile(path) as archive:  # the largest stored tensor, and where its bytes start
        member = max(archive.infolist(), key=lambda info: info.file_size)
        header = len(member.filename.encode()) + len(member.extra) + 30
        offset = member.header_offset + header + member.file_size // 2
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = bytes(b ^ 0xFF for b in data[offset : offset + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its stored checksum"):
        read_weights(path)


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda t: t.to(torch.int64), "not floating-point numbers: out.conv.conv.weight (torch.int64)"),
        (lambda t: t > 0, "not floating-point numbers: out.conv.conv.weight (torch.bool)"),
        (lambda t: t.fill_(float("nan")), "hold NaN or infinite values: out.conv.conv.weight"),
    ],
)
def test_weights_must_be_finite_floating_point_numbers(tmp_path, spoil, expected):
    settings, state = _tiny_weights(tmp_path)
    state["out.conv.conv.weight"] = spoil(state["out.conv.conv.weight"].clone())
    path = tmp_path / "model.safetensors"
    save_safetensors(state, {"settings": settings.to_dict()}, path)
    result = invoke("export", "--checkpoint", path, "--safetensors", "-o", tmp_path / "again.safetensors")
    assert result.exit_code == 1
    assert f"{path}: " in result.stderr and expected in result.stderr


@pytest.mark.parametrize("stored", ['{"model": ', '"just text"'])
def test_broken_settings_metadata_is_named(tmp_path, stored):
    settings, state = _tiny_weights(tmp_path)
    path = tmp_path / "model.safetensors"
    save_safetensors(state, {"settings": stored}, path)
    with pytest.raises(CheckpointError, match="model.safetensors: its s"):
        read_weights(path)


def test_the_checksums_are_checked_while_the_weights_are_read(tmp_path, monkeypatch):
    """Both run at once (they must meet at a barrier), and a damaged archive is still refused."""
    import threading

    from unetr_cli import checkpoint

    settings, state = _tiny_weights(tmp_path)
    path = tmp_path / "model.pt"
    torch.save({"format": "unetr-checkpoint/1", "model": state, "settings": settings.to_dict()}, path)
    meeting = threading.Barrier(2, timeout=30)

    def meeting_first(function):
        def run(*args):
            meeting.wait()
            return function(*args)

        return run

    monkeypatch.setattr(checkpoint, "_check_archive", meeting_first(checkpoint._check_archive))
    monkeypatch.setattr(checkpoint, "_read_pickled", meeting_first(checkpoint._read_pickled))
    assert read_weights(path).kind == "unetr checkpoint"

    def damaged(path):
        raise CheckpointError(f"{path}: corrupted")

    monkeypatch.setattr(checkpoint, "_check_archive", meeting_first(damaged))
    with pytest.raises(CheckpointError, match="corrupted"):
        read_weights(path)
