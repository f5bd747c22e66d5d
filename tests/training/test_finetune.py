"""Fine-tuning from the official weights' formats, safely, and with a new label set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import invoke
from tests.test_model import reference_state_dict
from unetr_cli.checkpoint import read_weights, safe_load
from unetr_cli.model import model_with_weights
from unetr_cli.settings import ModelSettings


@pytest.mark.parametrize("wrapping", ["raw", "trainer", "ddp"])
def test_official_formats_load_into_the_standard_model(tmp_path, wrapping):
    state = reference_state_dict(prefix="module." if wrapping == "ddp" else "", seed=1)
    payload = (
        {"epoch": 5000, "best_acc": np.float64(0.79), "state_dict": state} if wrapping == "trainer" else state
    )
    path = tmp_path / "UNETR_model_best_acc.pth"
    torch.save(payload, path)
    model = model_with_weights(ModelSettings(), read_weights(path).state_dict)
    key = "vit.blocks.3.mlp.linear1.weight"
    assert torch.equal(model.state_dict()[key], state[("module." if wrapping == "ddp" else "") + key])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.rand(1, 1, 96, 96, 96))
    assert logits.shape == (1, 14, 96, 96, 96) and torch.isfinite(logits.float()).all()


def _tiny_raw_state_dict(path, out_channels: int = 14):
    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings

    settings = resolve_settings(SettingsSources(preset="tiny-cpu"), {"model.out_channels": out_channels})
    torch.manual_seed(3)
    torch.save({f"module.{k}": v for k, v in build_model(settings.model).state_dict().items()}, path)
    return path


def test_finetune_cli_from_a_raw_state_dict(tiny_dataset, tmp_path):
    source = _tiny_raw_state_dict(tmp_path / "pretrained.pth")
    run = tmp_path / "run"
    result = invoke(
        "finetune",
        "--from",
        source,
        "--preset",
        "tiny-cpu",
        "--data-dir",
        tiny_dataset,
        "--logdir",
        run,
        "--max-epochs",
        "2",
        "-s",
        "optimisation.val_every=2",
        "-q",
    )
    assert result.exit_code == 0, result.output
    tuned = safe_load(run / "checkpoint_final.pt")
    original = torch.load(source, weights_only=True)
    assert tuned["epoch"] == 2
    assert not torch.equal(tuned["model"]["out.conv.conv.weight"], original["module.out.conv.conv.weight"])


def _starting_weights_kept(run, source_state: dict) -> bool:
    """After one epoch at a negligible learning rate, the run's weights are still the file's (to 1e-9; a
    fresh initialisation differs by 1e-2 and more)."""
    tuned = safe_load(run / "checkpoint_final.pt")["model"]
    return all(
        torch.allclose(tuned[k.removeprefix("module.")], v, rtol=0, atol=1e-9)
        for k, v in source_state.items()
        if "running_" not in k and "num_batches" not in k
    )


NEGLIGIBLE_LR = ("--lr", "1e-12")


def test_reference_dir_and_name_flags(tiny_dataset, tmp_path):
    folder = tmp_path / "pretrained_models"
    folder.mkdir()
    source = _tiny_raw_state_dict(folder / "UNETR_model_best_acc.pth")
    result = invoke(
        "finetune",
        "--pretrained-dir",
        folder,
        "--pretrained-model-name",
        "UNETR_model_best_acc.pth",
        "--preset",
        "tiny-cpu",
        "--data-dir",
        tiny_dataset,
        "--logdir",
        tmp_path / "run",
        "--max-epochs",
        "1",
        *NEGLIGIBLE_LR,
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert _starting_weights_kept(tmp_path / "run", torch.load(source, weights_only=True))


def test_new_label_set_with_reinit_head_and_frozen_encoder(tiny_dataset, tmp_path):
    source = _tiny_raw_state_dict(tmp_path / "pretrained.pth")
    common = ["--from", source, "--preset", "tiny-cpu", "--data-dir", tiny_dataset, "--max-epochs", "1", "-q"]
    refused = invoke("finetune", *common, "--out-channels", "16", "--logdir", tmp_path / "a")
    assert refused.exit_code == 1
    assert "out_channels=14 (model: 16)" in refused.stderr and "--reinit-head" in refused.stderr
    result = invoke(
        "finetune",
        *common,
        "--out-channels",
        "16",
        "--reinit-head",
        "--freeze-encoder",
        "--logdir",
        tmp_path / "b",
    )
    assert result.exit_code == 0, result.output
    tuned = safe_load(tmp_path / "b" / "checkpoint_final.pt")["model"]
    original = torch.load(source, weights_only=True)
    assert tuned["out.conv.conv.weight"].shape[0] == 16
    assert torch.equal(tuned["vit.blocks.0.attn.qkv.weight"], original["module.vit.blocks.0.attn.qkv.weight"])
    assert not torch.equal(
        tuned["decoder2.transp_conv.conv.weight"], original["module.decoder2.transp_conv.conv.weight"]
    )


def test_finetune_from_torchscript_with_trust(trained_run, tiny_dataset, tmp_path):
    invoke(
        "export",
        "--checkpoint",
        trained_run / "checkpoint_final.pt",
        "--torchscript",
        "-o",
        tmp_path / "m.pt",
    )
    common = [
        "--from",
        tmp_path / "m.pt",
        "--data-dir",
        tiny_dataset,
        "--max-epochs",
        "1",
        "-q",
        "-s",
        "data.workers=0",
    ]
    refused = invoke("finetune", *common, "--logdir", tmp_path / "a")
    assert refused.exit_code == 1 and "--trust-torchscript" in refused.stderr
    result = invoke("finetune", *common, "--trust-torchscript", *NEGLIGIBLE_LR, "--logdir", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert _starting_weights_kept(tmp_path / "b", safe_load(trained_run / "checkpoint_final.pt")["model"])
    stored = safe_load(tmp_path / "b" / "checkpoint_final.pt")["settings"]
    assert stored["model"]["img_size"] == 32 and stored["data"]["spacing"] == [4.0, 4.0, 5.0]


def test_an_interrupted_finetune_resumes(tiny_dataset, tmp_path):
    source = _tiny_raw_state_dict(tmp_path / "pretrained.pth")
    run = tmp_path / "run"
    common = ("--preset", "tiny-cpu", "--data-dir", tiny_dataset, "--logdir", run, "--max-epochs", "2", "-q")
    first = invoke("finetune", "--from", source, *common, "--freeze-encoder", "--stop-after", "1")
    assert first.exit_code == 0, first.output
    resumed = invoke("finetune", *common, "--freeze-encoder", "--resume")
    assert resumed.exit_code == 0, resumed.output
    final = safe_load(run / "checkpoint_final.pt")
    assert final["epoch"] == 2
    original = torch.load(source, weights_only=True)
    assert torch.equal(
        final["model"]["vit.blocks.0.attn.qkv.weight"], original["module.vit.blocks.0.attn.qkv.weight"]
    )
