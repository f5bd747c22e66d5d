"""The training data path: metadata untracked while batches come from a full cache (always restored), and
the time the loop waits for batches."""

from __future__ import annotations

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
