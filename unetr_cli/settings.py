"""The one typed settings tree shared by every subcommand.

Precedence, lowest first: field defaults < `--preset NAME` < `--config FILE` (TOML, YAML or JSON) <
`UNETR_*` environment variables (nested with `__`, e.g. `UNETR_MODEL__FEATURE_SIZE=32`) < command-line flags.
Unknown keys (misspelt environment variables included) and wrong types are errors, one line per bad field.
Commands resolve their settings once, with `resolve_settings(sources, flags)`, and pass the result inward.
"""

from __future__ import annotations

import json
import os
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from unetr_cli.errors import SettingsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"


class _Group(BaseModel):
    # NaN and infinity are never a valid setting (a NaN HU window used to give an all-background map).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSettings(_Group):
    """The UNETR architecture (MONAI `UNETR` arguments; defaults are the BTCV reference network)."""

    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(14, ge=2, description="classes including background (BTCV: 13 organs + 1)")
    img_size: int = Field(
        96, ge=16, le=512, description="cubic input window in voxels; a multiple of 16, at most 512"
    )
    feature_size: int = Field(16, ge=1)
    hidden_size: int = Field(768, ge=1)
    mlp_dim: int = Field(3072, ge=1)
    num_heads: int = Field(12, ge=1)
    pos_embed: Literal["perceptron", "conv"] = Field("perceptron", description="MONAI's proj_type")
    norm_name: Literal["instance", "batch"] = "instance"
    conv_block: bool = True
    res_block: bool = True
    dropout_rate: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("img_size")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError("must be a multiple of 16 (the ViT patch size)")
        return value

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelSettings:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class DataSettings(_Group):
    """Where the data is and how it is prepared (BTCV reference recipe)."""

    data_dir: Path = Path("dataset")
    json_list: str = Field("dataset_0.json", description="datalist file, relative to data_dir")
    fold: int | None = Field(None, ge=0, description="validation fold when entries carry a 'fold' field")
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    hu_min: float = -175.0
    hu_max: float = 250.0
    cache_rate: float = Field(1.0, ge=0.0, le=1.0)
    workers: int | None = Field(
        None,
        ge=0,
        description="data loader processes; default 4 with a GPU, 0 on CPU (workers compete with the "
        "compute threads there, measured)",
    )
    pipeline: Literal["auto", "device", "host", "workers"] = Field(
        "auto",
        description="training data path: device (cached on the GPU, augmented there), host (cached in "
        "host memory, crops augmented on the GPU), workers (loader processes, all on the CPU); auto: device "
        "if the cache fits in half the free GPU memory, else host; workers on a CPU",
    )
    num_samples: int = Field(4, ge=1, description="random crops per volume and step")
    crop_sampler: Literal["pos_neg", "class_balanced"] = Field(
        "pos_neg", description="pos_neg: the reference's 1:1 crops; class_balanced: every organ equally often"
    )
    rand_flip_prob: float = Field(0.2, ge=0.0, le=1.0)
    rand_rotate90_prob: float = Field(0.2, ge=0.0, le=1.0)
    rand_scale_intensity_prob: float = Field(0.1, ge=0.0, le=1.0)
    rand_shift_intensity_prob: float = Field(0.1, ge=0.0, le=1.0)
    archive_max_gib: float = Field(16.0, gt=0, description="a .zip of DICOM files unpacks to at most this")
    archive_max_member_gib: float = Field(4.0, gt=0, description="... and each of its files to at most this")
    archive_max_members: int = Field(100_000, ge=1, description="... holds at most this many files")
    archive_max_ratio: float = Field(
        200.0, gt=1, description="... and none of them (from 1 MiB) unpacks to more times its packed size"
    )

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("every spacing must be > 0 mm")
        return value

    @model_validator(mode="after")
    def _window_is_ordered(self) -> DataSettings:
        if self.hu_min >= self.hu_max:
            raise ValueError(f"hu_min {self.hu_min} must be below hu_max {self.hu_max}")
        return self


class OptimisationSettings(_Group):
    """Optimiser, schedule and loop lengths (BTCV reference defaults)."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(1e-5, ge=0.0)
    momentum: float = Field(0.99, ge=0.0, lt=1.0, description="SGD only (Nesterov)")
    lrschedule: Literal["warmup_cosine", "cosine_anneal", "constant"] = "warmup_cosine"
    warmup_epochs: int = Field(50, ge=0)
    max_epochs: int = Field(5000, ge=1)
    batch_size: int = Field(1, ge=1, description="volumes per step; each yields num_samples crops")
    val_every: int = Field(100, ge=1, description="validate every N epochs")
    amp: bool = Field(True, description="mixed precision: fp16+GradScaler or bf16 on CUDA, bf16 on CPU")
    amp_dtype: Literal["auto", "bf16", "fp16"] = Field(
        "auto",
        description="CUDA autocast type; auto is bf16 where the GPU supports it, else fp16 + GradScaler",
    )
    scale_lr: bool = Field(False, description="multiply lr by the number of processes (reference advice)")
    cuda_graphs: bool = Field(
        True,
        description="on one CUDA process, replay the model's training forward and backward as CUDA graphs "
        "(a GPU step is otherwise paced by Python launching its kernels)",
    )
    loss_smooth_nr: float = Field(0.0, ge=0.0)
    loss_smooth_dr: float = Field(1e-6, ge=0.0)


class InferenceSettings(_Group):
    """Sliding-window inference, used by validation, predict and evaluate."""

    infer_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int | None = Field(
        None,
        ge=1,
        description="windows per forward pass; default 4 on GPU, 1 on CPU (fastest there, measured)",
    )
    blend_mode: Literal["gaussian", "constant"] = "gaussian"
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    amp: bool = Field(True, description="autocast during inference where the hardware supports it")
    channels_last: bool | None = Field(
        None, description="channels_last_3d memory format; default on for bf16 on CPU (8% faster, measured)"
    )
    tta: bool = Field(False, description="average over the 8 axis-flip combinations")
    resample: Literal["probabilities", "labels"] = Field(
        "probabilities",
        description="back to the scan's grid: interpolate class probabilities (classical), or the label map "
        "alone (no probability volume in memory)",
    )
    keep_largest: bool = Field(
        False, description="keep only the largest connected component of each organ that is one piece"
    )
    min_size_ml: float | None = Field(
        None, gt=0, description="remove organ components smaller than this (ml)"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in {"auto", "cpu", "cuda"} or (index and (head != "cuda" or not index.isdigit())):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return value


class RuntimeSettings(_Group):
    """Where runs go and how they behave."""

    logdir: Path | None = Field(None, description="run directory; default runs/<timestamp>")
    seed: int | None = Field(None, ge=0)
    save_checkpoint: bool = True
    dist_timeout_s: int = Field(600, ge=1, description="a rank silent this long ends the distributed job")


class Settings(BaseSettings):
    """Every setting of unetr, grouped as model / data / optimisation / inference / runtime."""

    model_config = SettingsConfigDict(
        env_prefix="UNETR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
    )

    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    optimisation: OptimisationSettings = OptimisationSettings()
    inference: InferenceSettings = InferenceSettings()
    runtime: RuntimeSettings = RuntimeSettings()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict, as stored in run directories and checkpoints."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Settings:
        """Rebuild settings stored by `to_dict` (environment variables are not consulted)."""
        try:
            return cls.model_validate(_upgrade_stored(values))
        except ValidationError as err:
            raise SettingsError(format_validation_error(err)) from None


def _upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """Stored settings of earlier versions, read today: `inference.roi_size` (always the model's img_size)
    is gone."""
    inference = values.get("inference")
    if isinstance(inference, dict) and "roi_size" in inference:
        values = {**values, "inference": {k: v for k, v in inference.items() if k != "roi_size"}}
    return values


def _short_repr() -> reprlib.Repr:
    """A repr that stays short whatever the value (a YAML alias bomb expands to gigabytes in full)."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 60
    short.maxlist = short.maxtuple = short.maxset = 6
    short.maxdict, short.maxlevel = 4, 2
    return short


_SHORT = _short_repr()


def format_validation_error(err: ValidationError) -> str:
    """One line per bad field: `model.img_size = 40: must be a multiple of 16 ...`."""
    lines = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {_SHORT.repr(value)}"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            shown, message = "", "unknown setting"
        lines.append(f"{where}{shown}: {message}")
    return "\n".join(lines)


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON settings file into a nested dict."""
    if not path.is_file():
        raise SettingsError(f"{path}: config file not found")
    try:
        text = path.read_text()
    except OSError as err:
        raise SettingsError(f"{path}: cannot read config file ({err.strerror})") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not a settings file (not text)") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            values = yaml.safe_load(text) or {}
        elif path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            values = tomllib.loads(text)
    except Exception as err:  # every parser has its own error type
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SettingsError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'} ({first_line})") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: expected a table of settings groups at the top level")
    return values


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def read_preset(name: str) -> dict[str, Any]:
    """The settings a named preset changes from the defaults."""
    if name not in preset_names():
        raise SettingsError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return tomllib.loads((PRESET_DIR / f"{name}.toml").read_text())


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict with `update` merged into `base`, recursing into nested dicts."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class SettingsSources:
    """Where settings come from besides the defaults and the typed flags: --preset, --config and --set."""

    config: Path | None = None
    preset: str | None = None
    assignments: tuple[str, ...] = ()


def resolve_settings(
    sources: SettingsSources = SettingsSources(),
    flags: Mapping[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    base_origin: str | None = None,
) -> Settings:
    """Resolve the settings tree from all sources.

    Args:
        sources: preset, config file and `--set GROUP.FIELD=VALUE` assignments.
        flags: typed command-line flags as `{"group.field": value}`; None means "not given". They win over
            everything, `--set` included.
        base: stored settings (a resumed run's, or what a weights file says about its model), applied just
            above the defaults.
        base_origin: the file `base` was read from, named when its values are what fails validation.
    """
    check_environment(os.environ)
    layered = deep_merge(_upgrade_stored(base or {}), read_preset(sources.preset) if sources.preset else {})
    if sources.config is not None:
        layered = deep_merge(layered, read_config_file(sources.config))
    overrides = deep_merge(parse_assignments(sources.assignments), _nest(flags or {}))

    class _Resolved(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_unused):
            return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=layered))

    try:
        resolved = _Resolved(**overrides)
    except ValidationError as err:
        message = format_validation_error(err)
        if base_origin is not None and _valid_without_base(sources, flags):
            message = f"{base_origin}: its stored settings are not valid: {message}"
        raise SettingsError(message) from None
    except ValueError as err:  # pydantic-settings' own: a variable that is not JSON where JSON is needed
        group = str(err).split('"')[1] if str(err).count('"') >= 2 else "?"
        raise SettingsError(_json_culprit(group)) from None
    return Settings.from_dict(resolved.to_dict())


def _valid_without_base(sources: SettingsSources, flags: Mapping[str, Any] | None) -> bool:
    try:
        resolve_settings(sources, flags)
    except SettingsError:
        return False
    return True


def _json_culprit(group: str) -> str:
    """Which UNETR_ variable of `group` holds what is not JSON where a JSON value is needed: the group's own
    variable, or one of its list and mapping fields (UNETR_DATA__SPACING)."""
    import json
    import typing

    def parses(value: str) -> bool:
        try:
            json.loads(value)
        except ValueError:
            return False
        return True

    prefix = f"{ENV_PREFIX}{group.upper()}"
    fields = getattr(Settings.model_fields.get(group), "annotation", None)
    fields = getattr(fields, "model_fields", {})
    for name, value in os.environ.items():
        upper = name.upper()
        if upper == prefix and not parses(value):
            return f"{name}: not valid JSON for the {group} settings group"
        key = upper.removeprefix(prefix + "__").lower() if upper.startswith(prefix + "__") else None
        field = fields.get(key) if key else None
        complex_field = field is not None and typing.get_origin(field.annotation) in (tuple, list, dict)
        if complex_field and not parses(value):
            example = json.dumps(field.default)
            return f"{name}: {value!r} is not valid JSON; {group}.{key} takes a JSON value such as {example}"
    return f"{prefix} variables: not valid JSON for the {group} settings group"


def _nest(flags: Mapping[str, Any]) -> dict[str, Any]:
    """`{"model.feature_size": 32}` -> `{"model": {"feature_size": 32}}`, dropping flags left unset (None)."""
    nested: dict[str, Any] = {}
    for key, value in flags.items():
        if value is not None:
            group, field = key.split(".")
            nested.setdefault(group, {})[field] = value
    return nested


ENV_PREFIX = "UNETR_"
TOOL_VARIABLES = frozenset({"UNETR_DEBUG", "UNETR_FAULT_INJECT"})  # read by the tool, not settings


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse `UNETR_*` variables that name no setting (pydantic-settings would silently ignore them)."""
    groups = Settings.model_fields
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in TOOL_VARIABLES:
            continue
        group, _, field = upper.removeprefix(ENV_PREFIX).lower().partition("__")
        if group not in groups:
            raise SettingsError(
                f"{name}: unknown settings group {group!r} (expected UNETR_GROUP__FIELD with GROUP one of "
                f"{', '.join(groups)})"
            )
        if field and field not in groups[group].annotation.model_fields:
            raise SettingsError(f"{name}: {group}.{field}: unknown setting")


def input_space(stored: dict[str, Any]) -> dict[str, Any]:
    """The part of stored settings a trained model depends on: its architecture and its input space
    (spacing and HU window). Other commands take the rest from the user."""
    data = stored.get("data", {})
    return {
        "model": stored.get("model", {}),
        "data": {k: data[k] for k in ("spacing", "hu_min", "hu_max") if k in data},
    }


def parse_assignments(assignments: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Turn `--set group.field=value` strings into a nested dict; values are read as JSON when they parse."""
    overrides: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) != 2 or not all(path):
            raise SettingsError(f"--set {item!r}: expected GROUP.FIELD=VALUE, e.g. model.hidden_size=96")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(path[0], {})[path[1]] = value
    return overrides
