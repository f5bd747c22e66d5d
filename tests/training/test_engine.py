"""Training on tiny phantoms: it learns, it resumes exactly, and it leaves a complete run folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import invoke
from unetr_cli.checkpoint import safe_load

TINY = ("--preset", "tiny-cpu", "--seed", "0")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path)["model"]


@pytest.mark.slow
def test_training_raises_validation_dice(tiny_dataset, tmp_path):
    from unetr_cli.data import read_datalist
    from unetr_cli.inference import Segmenter
    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.engine import validate
    from unetr_cli.training.pipeline import validation_dataset

    settings = resolve_settings(
        SettingsSources(preset="tiny-cpu"), {"data.data_dir": tiny_dataset, "runtime.seed": 0}
    )
    torch.manual_seed(0)
    untrained = Segmenter(build_model(settings.model), settings, torch.device("cpu"))
    val = validation_dataset(read_datalist(tiny_dataset, "dataset_0.json").validation, settings)
    _, before = validate(untrained, val, settings)

    result = invoke(
        "train",
        *TINY,
        "--data-dir",
        tiny_dataset,
        "--logdir",
        tmp_path / "run",
        "--max-epochs",
        "24",
        "--val-every",
        "24",
        "--json",
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    after = [e for e in events if e["event"] == "validation"][-1]["mean_dice"]
    print(f"mean validation Dice: {before:.3f} untrained -> {after:.3f} after 24 epochs")
    assert after > before + 0.1, (before, after)  # measured: 0.004 -> 0.15 (README)


def test_run_folder_holds_everything(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "train",
        *TINY,
        "--data-dir",
        tiny_dataset,
        "--logdir",
        run,
        "--max-epochs",
        "2",
        "--val-every",
        "1",
        "-q",
    )
    assert result.exit_code == 0, result.output
    for name in (
        "settings.json",
        "checkpoint_latest.pt",
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "metrics.jsonl",
        "progress.png",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]) >= {"loss", "lr", "seconds", "mean_dice", "dice"} and len(records[0]["dice"]) == 13
    checkpoint = safe_load(run / "checkpoint_final.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["settings"]["model"]["img_size"] == 32
    assert {"model", "optimizer", "scaler", "versions", "best_dice"} <= set(checkpoint)
    assert json.loads((run / "settings.json").read_text())["runtime"]["seed"] == 0
    final, latest = (run / "checkpoint_final.pt").stat(), (run / "checkpoint_latest.pt").stat()
    assert (final.st_dev, final.st_ino) == (latest.st_dev, latest.st_ino)  # one state, one file on disk


def test_existing_run_is_not_overwritten(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text("{}")
    (run / "checkpoint_latest.pt").write_bytes(b"an earlier run")
    result = invoke("train", *TINY, "--data-dir", tiny_dataset, "--logdir", run, "--max-epochs", "1", "-q")
    assert result.exit_code == 1
    assert "holds a run; pass --resume to continue it or --overwrite" in result.stderr
    assert (run / "checkpoint_latest.pt").read_bytes() == b"an earlier run"
    common = ("--logdir", run, "--max-epochs", "1", "-q", "--overwrite", "--val-every", "1")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    (broken / "labelsTr" / "label0002.nii.gz").unlink()
    refused = invoke("train", *TINY, "--data-dir", broken, *common)
    assert refused.exit_code == 1 and "label0002.nii.gz" in refused.stderr
    assert (run / "checkpoint_latest.pt").read_bytes() == b"an earlier run"  # kept: the new run never started
    again = invoke("train", *TINY, "--data-dir", tiny_dataset, *common)
    assert again.exit_code == 0 and (run / "checkpoint_final.pt").exists()


def test_a_failed_start_does_not_block_the_retry(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(3)}, bad)
    failed = invoke("finetune", "--from", bad, *TINY, "--data-dir", tiny_dataset, "--logdir", run, "-q")
    assert failed.exit_code == 1 and (run / "settings.json").exists()
    retry = invoke("train", *TINY, "--data-dir", tiny_dataset, "--logdir", run, "--max-epochs", "1", "-q")
    assert retry.exit_code == 0, retry.output
    assert (run / "checkpoint_final.pt").exists()


def test_a_run_folder_in_use_is_refused(tiny_dataset, tmp_path):
    from unetr_cli.training.rundir import RunDir

    run = tmp_path / "run"
    held = RunDir(run).lock()
    try:
        result = invoke(
            "train", *TINY, "--data-dir", tiny_dataset, "--logdir", run, "--max-epochs", "1", "-q"
        )
    finally:
        held.close()
    assert result.exit_code == 1 and "is in use by another unetr process" in result.stderr
    assert not (run / "settings.json").exists()


def test_resume_survives_a_torn_metrics_line_and_a_damaged_settings_file(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    common = (
        *TINY,
        "--data-dir",
        tiny_dataset,
        "--logdir",
        run,
        "--max-epochs",
        "2",
        "--val-every",
        "1",
        "-q",
    )
    assert invoke("train", *common, "--stop-after", "1").exit_code == 0
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"epoch": 2, "lo')  # a kill in the middle of a line
    (run / "settings.json").write_text("{not json")
    resumed = invoke("train", *common, "--resume")
    assert resumed.exit_code == 0, resumed.output
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_a_second_ctrl_c_during_a_checkpoint_save_still_leaves_a_resumable_run(
    tiny_dataset, tmp_path, monkeypatch
):
    from unetr_cli.training import engine

    real_save, calls = engine.save_training_state, []

    def interrupted_twice(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:  # the first checkpoint of the run: Ctrl-C, Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(engine, "save_training_state", interrupted_twice)
    run = tmp_path / "run"
    args = (*TINY, "--data-dir", tiny_dataset, "--logdir", run, "--max-epochs", "2", "--val-every", "1", "-q")
    result = invoke("train", *args)
    assert result.exit_code == 130 and "interrupted: saved" in result.stderr
    assert (run / "checkpoint_best.pt").is_file()  # the save under way was finished, not torn
    monkeypatch.setattr(engine, "save_training_state", real_save)
    resumed = invoke("train", *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert safe_load(run / "checkpoint_final.pt")["epoch"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["workers", "device"])
def test_resume_equals_a_straight_run(tiny_dataset, tmp_path, pipeline):
    common = [*TINY, "--data-dir", str(tiny_dataset), "--max-epochs", "2", "--val-every", "1", "-q"]
    common += ["-s", f"data.pipeline={pipeline}"]
    straight = invoke("train", *common, "--logdir", str(tmp_path / "straight"))
    assert straight.exit_code == 0, straight.output
    first = invoke("train", *common, "--logdir", str(tmp_path / "split"), "--stop-after", "1")
    assert first.exit_code == 0, first.output
    assert not (tmp_path / "split" / "checkpoint_final.pt").exists()
    second = invoke("train", *common, "--logdir", str(tmp_path / "split"), "--resume")
    assert second.exit_code == 0, second.output
    a = _weights(tmp_path / "straight" / "checkpoint_final.pt")
    b = _weights(tmp_path / "split" / "checkpoint_final.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the straight run"
    straight_log = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    split_log = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in straight_log] == [json.loads(x)["loss"] for x in split_log]


def test_every_data_pipeline_trains_the_same_weights_on_cpu(tiny_dataset, tmp_path):
    """The pipelines differ in where volumes are cached and augmented, not in what the model sees."""
    weights = {}
    for pipeline in ("workers", "device", "host"):
        run = tmp_path / pipeline
        args = (
            "--data-dir",
            tiny_dataset,
            "--logdir",
            run,
            "--max-epochs",
            "1",
            "--json",
        )
        result = invoke("train", *TINY, *args, "-s", f"data.pipeline={pipeline}")
        assert result.exit_code == 0, result.output
        start = next(json.loads(x) for x in result.stdout.splitlines() if '"event": "start"' in x)
        assert ("loader process" in start["data"]) == (pipeline == "workers"), start["data"]
        weights[pipeline] = _weights(run / "checkpoint_final.pt")
    for pipeline in ("device", "host"):
        assert all(torch.equal(weights["workers"][k], v) for k, v in weights[pipeline].items()), pipeline


def test_resume_with_other_model_settings_is_refused(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert (
        invoke(
            "train",
            *TINY,
            "--data-dir",
            tiny_dataset,
            "--logdir",
            run,
            "--max-epochs",
            "2",
            "--stop-after",
            "1",
            "-q",
        ).exit_code
        == 0
    )
    result = invoke(
        "train", "--resume", "--logdir", run, "--feature-size", "8", "-s", "model.hidden_size=192", "-q"
    )
    assert result.exit_code == 2
    assert "cannot resume with different model settings" in result.stderr
    assert "feature_size 8 (run: 16)" in result.stderr and "hidden_size 192 (run: 96)" in result.stderr


def test_sigterm_saves_checkpoint_latest(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unetr_cli",
            "train",
            *TINY,
            "--data-dir",
            str(tiny_dataset),
            "--logdir",
            str(run),
            "--max-epochs",
            "500",
            "--val-every",
            "500",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in child.stdout:  # wait until a few epochs are done
        if '"event": "epoch"' in line and json.loads(line)["epoch"] >= 2:
            break
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0
    assert "interrupted: saved" in stderr
    saved = safe_load(run / "checkpoint_latest.pt")
    assert saved["epoch"] >= 2
    shutil.rmtree(run)


@pytest.mark.parametrize("time_budget", [0.0])
def test_time_budget_stops_after_one_epoch(tiny_dataset, tmp_path, time_budget):
    from unetr_cli.console import Reporter
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.engine import RunOptions, fit
    from unetr_cli.training.rundir import RunDir

    settings = resolve_settings(
        SettingsSources(preset="tiny-cpu"), {"data.data_dir": tiny_dataset, "runtime.seed": 0}
    )
    result = fit(settings, RunDir(tmp_path / "run"), Reporter("quiet"), RunOptions(time_budget_s=time_budget))
    assert result.epochs_done == 1
    assert result.history[-1]["mean_dice"] is not None  # the last epoch of a run always validates


@pytest.mark.parametrize("expected_minutes, warned", [(1e-4, True), (1e3, False)])
def test_first_epoch_tells_the_pace_and_warns_up_front_when_far_slower_than_expected(
    tiny_dataset, tmp_path, capsys, expected_minutes, warned
):
    from unetr_cli.console import Reporter
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.engine import RunOptions, fit
    from unetr_cli.training.rundir import RunDir

    settings = resolve_settings(
        SettingsSources(preset="tiny-cpu"),
        {"data.data_dir": tiny_dataset, "runtime.seed": 0, "optimisation.max_epochs": 2},
    )
    result = fit(
        settings, RunDir(tmp_path / "run"), Reporter("rich"), RunOptions(expected_minutes=expected_minutes)
    )
    output = capsys.readouterr()
    assert "s per step (" in output.out + output.err and "% of it waiting for data); about" in output.out
    assert ("trains slower than expected" in output.err) is warned
    assert all(0 <= r["data_wait_s"] <= r["seconds"] for r in result.history)


def test_the_model_trains_on_plain_tensors(tiny_dataset, tmp_path, monkeypatch):
    """MONAI's MetaTensors stop at the model's door: inside it, every op would pay for metadata handling."""
    from unetr_cli.console import Reporter
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training import engine
    from unetr_cli.training.rundir import RunDir

    seen = set()
    monkeypatch.setattr(engine, "build_model", lambda s, build=engine.build_model: _recorded(build(s), seen))
    settings = resolve_settings(
        SettingsSources(preset="tiny-cpu"),
        {"data.data_dir": tiny_dataset, "runtime.seed": 0, "optimisation.max_epochs": 1},
    )
    engine.fit(settings, RunDir(tmp_path / "run"), Reporter("quiet"), engine.RunOptions())
    assert seen == {torch.Tensor}


def _recorded(model: torch.nn.Module, seen: set) -> torch.nn.Module:
    model.register_forward_pre_hook(lambda module, args: seen.add(type(args[0])))
    return model
