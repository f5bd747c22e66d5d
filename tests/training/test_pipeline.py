"""The training data path's metadata: untracked while batches come from a full cache, always restored."""

from __future__ import annotations

import pytest
from monai.data import get_track_meta

from unetr_cli.settings import SettingsSources, resolve_settings
from unetr_cli.training.pipeline import metadata_untracked


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
