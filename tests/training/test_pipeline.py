"""The training data path: metadata untracked while batches come from a full cache (always restored), the
time the loop waits for batches, and the fall-back when the cache does not fit on the GPU."""

from __future__ import annotations

import json
import time

import pytest
from monai.data import get_track_meta

from unetr_cli.settings import SettingsSources, resolve_settings
from unetr_cli.training.pipeline import DataWait, metadata_untracked


@pytest.mark.parametrize("cache_rate, tracked_inside", [(1.0, False), (0.5, True)])
def test_metadata_is_untracked_only_for_a_full_cache_and_restored_after(cache_rate, tracked_inside):
    settings = resolve_settings(SettingsSources(preset="tiny-cpu"), {"data.cache_rate": cache_rate})
    assert get_track_meta()
    with metadata_untracked(settings):
        assert get_track_meta() is tracked_inside  # volumes read during the epoch keep their affine
    assert get_track_meta()
    with pytest.raises(KeyboardInterrupt), metadata_untracked(settings):
        raise KeyboardInterrupt  # an interrupted epoch leaves prediction and validation their metadata
    assert get_track_meta()


def test_data_wait_counts_the_time_the_loop_waits_for_batches():
    def slow_batches():
        for index in range(3):
            time.sleep(0.05)
            yield index

    wait = DataWait()
    assert list(wait.batches(slow_batches())) == [0, 1, 2]
    assert wait.seconds >= 0.15


def test_a_cache_that_does_not_fit_on_the_gpu_falls_back_to_host_memory(tiny_dataset, tmp_path, monkeypatch):
    """Filling the `device` cache runs out of GPU memory (simulated: CI has no GPU): one line says so and
    training goes on from host memory instead of crashing."""
    import torch

    from tests.conftest import invoke
    from unetr_cli.training import pipeline

    real = pipeline.training_dataset

    def out_of_memory_on_the_device(cases, settings, kind, device):
        if kind == "device":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(cases, settings, kind, device)

    monkeypatch.setattr(pipeline, "training_dataset", out_of_memory_on_the_device)
    result = invoke(
        "train",
        "--preset",
        "tiny-cpu",
        "--data-dir",
        tiny_dataset,
        "--logdir",
        tmp_path / "run",
        "--max-epochs",
        "1",
        "-s",
        "data.pipeline=device",
        "--json",
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(x) for x in result.stdout.splitlines() if x.startswith('{"event"')]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == ["the training cache did not fit in GPU memory: falling back to the host pipeline"]
    start = next(e for e in events if e["event"] == "start")
    assert "cached in host memory (the GPU ran out of memory)" in start["data"]
    assert (tmp_path / "run" / "checkpoint_final.pt").is_file()
