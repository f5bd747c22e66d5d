"""Building UNETR and mapping the official reference weights onto today's MONAI model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unetr_cli.errors import CheckpointError
from unetr_cli.model import build_model, convert_state_dict, describe_architecture, load_state
from unetr_cli.settings import ModelSettings

FIXTURES = Path(__file__).parent / "fixtures"


def reference_state_dict(feature_size: int = 16, prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the official BTCV file's keys and shapes, filled with random values."""
    shapes = json.loads((FIXTURES / f"unetr_btcv_fs{feature_size}_state_dict_shapes.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    return {prefix + key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def standard_model():
    return build_model(ModelSettings())


def test_standard_model_has_the_reference_parameter_count(standard_model):
    assert round(sum(p.numel() for p in standard_model.parameters()) / 1e6, 1) == 92.8


def test_conversion_drops_exactly_the_obsolete_keys_and_fills_the_new(standard_model):
    source = reference_state_dict()
    target = standard_model.state_dict()
    converted = convert_state_dict(source, target)
    assert list(converted) == list(target)
    dropped = set(source) - set(converted)
    assert dropped == {
        "vit.patch_embedding.cls_token",
        "encoder2.blocks.0.1.conv3.conv.weight",
        "encoder2.blocks.1.1.conv3.conv.weight",
        "encoder3.blocks.0.1.conv3.conv.weight",
    }
    filled = [k for k in converted if k not in source]
    assert len(filled) == 24 and all("norm_cross_attn" in k for k in filled)
    assert all(torch.equal(converted[k], source[k]) for k in source if k in converted)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(standard_model, prefix):
    converted = convert_state_dict(reference_state_dict(prefix=prefix), standard_model.state_dict())
    assert "vit.blocks.0.attn.qkv.weight" in converted


def test_reference_weights_give_the_same_output_as_a_direct_load(standard_model):
    """Loading through the conversion changes nothing the forward pass uses."""
    source = reference_state_dict(seed=3)
    load_state(standard_model, source)
    direct = build_model(ModelSettings())
    direct.load_state_dict({k: v for k, v in source.items() if k in direct.state_dict()}, strict=False)
    for key, value in standard_model.state_dict().items():
        if "norm_cross_attn" not in key:
            assert torch.equal(value, direct.state_dict()[key])


def test_feature_size_32_file_into_16_model_names_the_cause(standard_model):
    with pytest.raises(CheckpointError) as caught:
        convert_state_dict(reference_state_dict(feature_size=32), standard_model.state_dict())
    message = str(caught.value)
    assert "wrong-shaped" in message
    assert "encoder1.layer.conv1.conv.weight (32, 1, 3, 3, 3) vs model (16, 1, 3, 3, 3)" in message
    assert "feature_size=32 (model: 16)" in message and "--feature-size 32" in message


def test_other_label_set_suggests_reinit_head():
    model = build_model(ModelSettings(out_channels=5))
    with pytest.raises(CheckpointError, match=r"out_channels=14 \(model: 5\).*--reinit-head"):
        convert_state_dict(reference_state_dict(), model.state_dict())
    converted = convert_state_dict(reference_state_dict(), model.state_dict(), reinit_head=True)
    assert converted["out.conv.conv.weight"].shape[0] == 5


def test_unknown_and_missing_keys_are_listed(standard_model):
    source = reference_state_dict()
    source["decoder9.weight"] = torch.zeros(3)
    del source["out.conv.conv.bias"]
    with pytest.raises(CheckpointError) as caught:
        convert_state_dict(source, standard_model.state_dict())
    assert "1 missing (out.conv.conv.bias)" in str(caught.value)
    assert "1 unexpected (decoder9.weight)" in str(caught.value)


def test_describe_architecture_reads_shapes():
    found = describe_architecture(reference_state_dict(feature_size=32))
    assert found == {
        "feature_size": 32,
        "in_channels": 1,
        "out_channels": 14,
        "hidden_size": 768,
        "img_size": 96,
        "mlp_dim": 3072,
        "pos_embed": "perceptron",
    }
