"""The weights options of `predict`, `evaluate` and `export`, and the one helper that turns them into a
ready model with its settings: the file's own model settings first, then the user's sources and flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unetr_cli.settings import Settings, SettingsSources, input_space, resolve_settings

if TYPE_CHECKING:
    import torch

    from unetr_cli.checkpoint import LoadedWeights


@dataclass(frozen=True)
class WeightsOptions:
    """Which weights file, as --checkpoint/--from, --pretrained-dir + --pretrained-model-name, or hub:."""

    checkpoint: str | None = None
    pretrained_dir: Path | None = None
    pretrained_model_name: str | None = None
    trust_torchscript: bool = False
    saved_checkpoint: str | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.checkpoint, self.pretrained_dir, self.pretrained_model_name))

    @property
    def files(self) -> list[Path]:
        """The local weights file these options name (none for `hub:` or nothing given): an input that no
        output may replace."""
        from unetr_cli.checkpoint import locate_weights

        if not self.given or (self.checkpoint or "").startswith("hub:"):
            return []
        return [locate_weights(self.checkpoint, self.pretrained_dir, self.pretrained_model_name)]

    def read(self) -> LoadedWeights:
        """Locate (downloading `hub:` references) and read the weights, checking --saved-checkpoint."""
        from unetr_cli.checkpoint import check_saved_kind, locate_weights, read_weights

        path = locate_weights(self.checkpoint, self.pretrained_dir, self.pretrained_model_name)
        weights = read_weights(path, self.trust_torchscript)
        check_saved_kind(weights, self.saved_checkpoint)
        return weights


@dataclass
class TrainedModel:
    """A model holding its weights, the settings it runs with, the device they name, and the file it came
    from."""

    settings: Settings
    network: torch.nn.Module
    device: torch.device
    weights_path: Path


def model_settings(weights: LoadedWeights, sources: SettingsSources, flags: dict[str, Any]) -> Settings:
    """Settings from the weights file where it carries them (its architecture and input space), the user's
    sources and flags on top."""
    return resolve_settings(
        sources, flags, base=input_space(weights.settings or {}), base_origin=weights.source
    )


def trained_model(weights: LoadedWeights, sources: SettingsSources, flags: dict[str, Any]) -> TrainedModel:
    """`model_settings`, then the model with the weights loaded strictly (a GPU warming up meanwhile)."""
    from unetr_cli.devices import resolve_device, warming_up
    from unetr_cli.model import model_with_weights

    settings = model_settings(weights, sources, flags)
    device = resolve_device(settings.inference.device)
    with warming_up(device):
        network = model_with_weights(settings.model, weights.state_dict, weights.source)
    return TrainedModel(settings, network, device, Path(weights.source))
