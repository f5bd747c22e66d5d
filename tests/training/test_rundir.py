"""The run folder: which run `--resume` continues."""

from __future__ import annotations

import os

from unetr_cli.training.rundir import LATEST, resolve_run_dir


def test_resume_without_logdir_continues_the_most_recently_saved_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ages = {
        "torchrun-3f2a": 2_000_000_000,
        "20261127-101500": 2_000_000_600,
        "20261127-090000": 2_000_000_300,
    }
    for name, saved_at in ages.items():
        checkpoint = tmp_path / "runs" / name / LATEST
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
        os.utime(checkpoint, ns=(saved_at * 10**9, saved_at * 10**9))
    assert resolve_run_dir(None, resume=True).path.name == "20261127-101500"
    os.utime(tmp_path / "runs" / "torchrun-3f2a" / LATEST, ns=(2_000_001_000 * 10**9,) * 2)
    assert resolve_run_dir(None, resume=True).path.name == "torchrun-3f2a"
