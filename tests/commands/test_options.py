"""The shared options: each flag, in our spelling and the reference's, sets the field it names."""

from __future__ import annotations

import json

from tests.conftest import invoke


def test_reference_spellings_reach_their_settings(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "train",
        "--preset",
        "tiny-cpu",
        "--data-dir",
        tiny_dataset,
        "--logdir",
        run,
        "--max-epochs",
        "1",
        "--noamp",
        "--optim-name",
        "sgd",
        "--optim-lr",
        "0.002",
        "--roi-size",
        "16",
        "--no-save-checkpoint",
        "-q",
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "settings.json").read_text())
    assert saved["optimisation"]["amp"] is False
    assert saved["optimisation"]["optimizer"] == "sgd" and saved["optimisation"]["lr"] == 0.002
    assert saved["model"]["img_size"] == 16
    assert not list(run.glob("checkpoint_*.pt"))


def test_config_help_names_every_format():
    result = invoke("config", "show", "--help")
    assert "TOML, YAML or JSON" in result.stdout
