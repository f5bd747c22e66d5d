"""The settings tree: precedence, validation messages, config files."""

from __future__ import annotations

import json

import pytest

from tests.conftest import invoke
from unetr_cli.errors import SettingsError
from unetr_cli.settings import Settings, SettingsSources, deep_merge, parse_assignments, resolve_settings


def test_defaults_are_the_btcv_reference_network():
    model = Settings().model
    assert (model.in_channels, model.out_channels, model.img_size) == (1, 14, 96)
    assert (model.feature_size, model.hidden_size, model.mlp_dim, model.num_heads) == (16, 768, 3072, 12)
    assert (model.pos_embed, model.norm_name, model.res_block, model.dropout_rate) == (
        "perceptron",
        "instance",
        True,
        0,
    )


def test_config_show_json_precedence_file_env_flag(tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(
        "[optimisation]\nlr = 0.001\nmax_epochs = 7\n[model]\nfeature_size = 32\nhidden_size = 384\n"
    )
    result = invoke(
        "config",
        "show",
        "--json",
        "--config",
        config,
        "--lr",
        "0.0004",
        env={"UNETR_MODEL__FEATURE_SIZE": "8", "UNETR_OPTIMISATION__LR": "0.002"},
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["optimisation"]["lr"] == 0.0004  # flag beats env and file
    assert shown["model"]["feature_size"] == 8  # env beats file
    assert shown["model"]["hidden_size"] == 384  # file beats default
    assert shown["optimisation"]["max_epochs"] == 7
    assert shown["optimisation"]["optimizer"] == "adamw"  # default stays


def test_yaml_config_and_set_assignments(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("data:\n  spacing: [3, 3, 4]\n  workers: 0\n")
    settings = resolve_settings(
        SettingsSources(config, assignments=("model.hidden_size=96", "model.num_heads=4"))
    )
    assert settings.data.spacing == (3.0, 3.0, 4.0)
    assert (settings.model.hidden_size, settings.model.num_heads) == (96, 4)


def test_preset_sits_below_the_config_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[model]\nfeature_size = 24\n")
    assert resolve_settings(SettingsSources(preset="btcv-fs32")).model.feature_size == 32
    assert resolve_settings(SettingsSources(config, "btcv-fs32")).model.feature_size == 24


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lr", "-1"], "optimisation.lr = -1.0: Input should be greater than 0"),
        (["-s", "model.hidden_size=100"], "hidden_size 100 is not divisible by num_heads 12"),
        (["--img-size", "40"], "model.img_size = 40: must be a multiple of 16"),
        (["-s", "inference.infer_overlap=1.0"], "inference.infer_overlap = 1.0: Input should be less than 1"),
        (["-s", "inference.infer_overlap=-0.1"], "inference.infer_overlap = -0.1"),
        (
            ["-s", "model.pos_embed=linear"],
            "model.pos_embed = 'linear': Input should be 'perceptron' or 'conv'",
        ),
    ],
)
def test_bad_values_name_field_and_value(args, expected):
    result = invoke("config", "show", *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_one_line_per_bad_field(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nimg_size = 40\nfeature_size = 'big'\n[optimiser]\nlr = 1\n")
    result = invoke("config", "show", "--config", config)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert any("model.img_size = 40" in line for line in lines)
    assert any("model.feature_size = 'big'" in line for line in lines)
    assert any("optimiser: unknown setting" in line for line in lines)


def test_missing_config_file(tmp_path):
    result = invoke("config", "show", "--config", tmp_path / "nope.toml")
    assert result.exit_code == 2
    assert "nope.toml: config file not found" in result.stderr


def test_unparsable_config_file(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[model\nfeature_size = 3\n")
    result = invoke("config", "show", "--config", config)
    assert result.exit_code == 2
    assert "broken.toml: not valid toml" in result.stderr


def test_unknown_field_in_a_set_assignment_is_reported():
    with pytest.raises(SettingsError, match="model.feature_sise: unknown setting"):
        resolve_settings(SettingsSources(assignments=("model.feature_sise=3",)))


def test_set_needs_group_and_field():
    with pytest.raises(SettingsError, match="expected GROUP.FIELD=VALUE"):
        parse_assignments(["lr=3"])


def test_unknown_preset_lists_the_known_ones():
    result = invoke("config", "show", "--preset", "btvc")
    assert result.exit_code == 2
    assert "unknown preset 'btvc'" in result.stderr and "btcv-fs32" in result.stderr


def test_settings_round_trip_through_a_dict():
    settings = resolve_settings(SettingsSources(), {"data.spacing": (2, 2, 3), "runtime.seed": 3})
    assert Settings.from_dict(settings.to_dict()) == settings


def test_deep_merge_keeps_untouched_branches():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("UNETR_MODL__FEATURE_SIZE", "UNETR_MODL__FEATURE_SIZE: unknown settings group 'modl'"),
        ("UNETR_MODEL__FEATUR_SIZE", "UNETR_MODEL__FEATUR_SIZE: model.featur_size: unknown setting"),
    ],
)
def test_misspelt_environment_variables_are_errors_naming_the_variable(monkeypatch, variable, expected):
    monkeypatch.setenv(variable, "32")
    result = invoke("config", "show", "--json")
    assert result.exit_code == 2
    assert expected in result.stderr
    assert result.stdout == ""


def test_environment_variables_set_nested_fields(monkeypatch):
    monkeypatch.setenv("UNETR_MODEL__FEATURE_SIZE", "32")
    monkeypatch.setenv("UNETR_DATA__SPACING", "[2, 2, 3]")
    settings = resolve_settings()
    assert settings.model.feature_size == 32 and settings.data.spacing == (2.0, 2.0, 3.0)


def test_stored_settings_of_earlier_versions_still_load():
    stored = Settings().to_dict()
    stored["inference"]["roi_size"] = None  # written by unetr 0.1
    assert Settings.from_dict(stored) == Settings()


def test_json_config_files_are_read(tmp_path):
    config = tmp_path / "s.json"
    config.write_text('{"optimisation": {"lr": 0.0003}}')
    assert resolve_settings(SettingsSources(config)).optimisation.lr == 0.0003


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["-s", "data.hu_min=NaN"], {}, "data.hu_min = nan: Input should be a finite number"),
        ([], {"UNETR_DATA__HU_MAX": "inf"}, "data.hu_max = 'inf': Input should be a finite number"),
        (["--lr", "inf"], {}, "optimisation.lr = inf: Input should be a finite number"),
        ([], {"UNETR_DATA": "{garbage"}, "UNETR_DATA: not valid JSON for the data settings group"),
    ],
)
def test_non_finite_and_malformed_settings_are_usage_errors(args, env, expected):
    result = invoke("config", "show", *args, env=env)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert "unexpected" not in result.stderr


def test_a_binary_config_file_is_named(tmp_path):
    config = tmp_path / "weights.toml"
    config.write_bytes(bytes(range(256)) * 4)
    result = invoke("config", "show", "--config", config)
    assert result.exit_code == 2 and "weights.toml: not a settings file (not text)" in result.stderr


def test_an_alias_bomb_gives_a_short_error(tmp_path):
    levels = ["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    for index, name in enumerate("bcdefg"):
        previous = "abcdefg"[index]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(levels) + "\nmodel:\n  feature_size: *g\n")
    result = invoke("config", "show", "--config", config)
    assert result.exit_code == 2
    assert "model.feature_size = [[" in result.stderr
    assert len(result.stderr) < 2000


def test_a_preset_is_a_name_not_a_path(tmp_path):
    result = invoke("config", "show", "--preset", "../../etc/passwd")
    assert result.exit_code == 2 and "unknown preset '../../etc/passwd'" in result.stderr
