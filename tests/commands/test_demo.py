"""`unetr demo` with its training time capped: the whole job runs to the end, says what the cap cut, and the
run folder keeps one file per distinct checkpoint state."""

from __future__ import annotations

import pytest

from tests.conftest import invoke


@pytest.mark.slow
def test_a_capped_demo_finishes_and_says_what_the_cap_cut(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--minutes", "0.5", "--cases", "4")
    assert result.exit_code == 0, result.output
    errors = " ".join(result.stderr.split())
    assert "--minutes 0.5 stopped training after" in errors
    for name in ("evaluation.json", "held_out/scan_seg.nii.gz", "held_out/scan_seg_preview.png"):
        assert (out / name).is_file(), name
    states = {(p.stat().st_dev, p.stat().st_ino) for p in (out / "run").glob("checkpoint_*.pt")}
    assert len(states) <= 2  # latest and final are one state: one file (best may be an earlier one)
