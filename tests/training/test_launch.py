"""Training through torchrun on CPU (gloo): one run, ranks in sync, clear failures, restarts, external
torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import invoke

TINY = ["--preset", "tiny-cpu", "--seed", "0"]


def _unetr(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "unetr_cli", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=600,
    )


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event"')]


@pytest.mark.slow
def test_two_processes_train_one_run_in_sync(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    done = _unetr(
        "train",
        *TINY,
        "--data-dir",
        str(tiny_dataset),
        "--logdir",
        str(run),
        "--max-epochs",
        "2",
        "--val-every",
        "1",
        "--nproc-per-node",
        "2",
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    events = _events(done.stdout)
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2 and start["effective_batch"] == 8
    finish = [e for e in events if e["event"] == "finish"]
    assert len(finish) == 1 and finish[0]["ranks_in_sync"] is True  # only rank 0 reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == [
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "checkpoint_latest.pt",
    ]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    scored = invoke(
        "evaluate",
        "--data-dir",
        tiny_dataset,
        "--checkpoint",
        run / "checkpoint_final.pt",
        "--space",
        "resampled",
        "--no-hd95",
        "--output",
        tmp_path / "eval.json",
    )
    assert scored.exit_code == 0, scored.output
    single = json.loads((tmp_path / "eval.json").read_text())["summary"]["mean_dice"]
    assert single == pytest.approx(records[-1]["mean_dice"], abs=1e-9)


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_and_is_named(tiny_dataset, tmp_path):
    """The other rank is stopped instead of waiting on the dead one (a hang would pass _unetr's timeout)."""
    done = _unetr(
        "train",
        *TINY,
        "--data-dir",
        str(tiny_dataset),
        "--logdir",
        str(tmp_path / "run"),
        "--max-epochs",
        "5",
        "--nproc-per-node",
        "2",
        "-q",
        env={"UNETR_FAULT_INJECT": "1:1"},
    )
    assert done.returncode == 1
    assert "distributed training failed: rank 1 (local rank 1) exited with code 1" in done.stderr
    assert "fault injected on rank 1" in done.stderr


@pytest.mark.slow
def test_max_restarts_resumes_from_checkpoint_latest(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    done = _unetr(
        "train",
        *TINY,
        "--data-dir",
        str(tiny_dataset),
        "--logdir",
        str(run),
        "--max-epochs",
        "2",
        "--val-every",
        "1",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "-q",
        env={"UNETR_FAULT_INJECT": "1:2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert (run / "checkpoint_final.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_external_torchrun_shares_one_default_run_folder(tiny_dataset, tmp_path, processes):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            "-m",
            "unetr_cli",
            "train",
            *TINY,
            "--data-dir",
            str(tiny_dataset),
            "--max-epochs",
            "1",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("torchrun-")
    assert (runs[0] / "checkpoint_final.pt").is_file()


@pytest.mark.no_gpu
def test_distributed_without_gpus_is_a_clear_usage_error(tiny_dataset, tmp_path):
    result = invoke("train", *TINY, "--data-dir", tiny_dataset, "--logdir", tmp_path / "run", "--distributed")
    assert result.exit_code == 2
    assert "--distributed: no GPU is visible; use --nproc-per-node N" in result.stderr
