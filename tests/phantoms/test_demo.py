"""`unetr demo`: bounded by its epochs; a time cap says what it cut."""

from __future__ import annotations

import pytest

from tests.conftest import invoke
from unetr_cli.settings import read_preset


@pytest.mark.slow
def test_a_time_cap_says_how_many_epochs_it_cut(tmp_path):
    result = invoke("demo", "--out", tmp_path / "demo", "--cases", "4", "--minutes", "0.5")
    assert "--minutes 0.5 stopped training after" in result.stderr
    epochs = read_preset("demo")["optimisation"]["max_epochs"]
    assert f"of {epochs} epochs" in result.stderr
