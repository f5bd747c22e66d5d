"""Option declarations shared by the commands, declared once.

Each alias names the flag, its reference spelling where the research code had one, and the help panel.
Options default to None so an unset flag never hides a config file or environment value. A command hands its
flags to `resolve_settings` as `{"group.field": value}`, so each flag can be followed to the field it sets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.settings import SettingsSources, preset_names

_SETTINGS, _MODEL, _DATA, _OPTIM, _INFER, _RUN = (
    "Settings",
    "Model",
    "Data",
    "Optimisation",
    "Inference",
    "Run",
)


def _preset_names() -> list[str]:
    return preset_names()


# Settings sources
Config = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML, YAML or JSON settings file.", rich_help_panel=_SETTINGS, dir_okay=False
    ),
]
Preset = Annotated[
    str | None,
    typer.Option(
        help="Named settings preset (see `unetr config presets`).",
        rich_help_panel=_SETTINGS,
        autocompletion=_preset_names,
    ),
]
Set = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override any setting, e.g. -s model.hidden_size=96 -s data.spacing=[3,3,4]. Repeatable.",
        rich_help_panel=_SETTINGS,
    ),
]

# Model
FeatureSize = Annotated[
    int | None, typer.Option(help="UNETR feature size (16 or 32 in the paper).", rich_help_panel=_MODEL)
]
ImgSize = Annotated[
    int | None,
    typer.Option(
        "--img-size",
        "--roi-size",
        help="Cubic input window in voxels (reference --roi_x/y/z).",
        rich_help_panel=_MODEL,
    ),
]
PosEmbed = Annotated[
    str | None, typer.Option(help="Patch embedding: perceptron or conv.", rich_help_panel=_MODEL)
]
OutChannels = Annotated[
    int | None, typer.Option(help="Classes including background.", rich_help_panel=_MODEL)
]

# Data
DataDir = Annotated[
    Path | None,
    typer.Option(help="Dataset folder holding the datalist JSON.", rich_help_panel=_DATA, file_okay=False),
]
JsonList = Annotated[str | None, typer.Option(help="Datalist file inside --data-dir.", rich_help_panel=_DATA)]
Fold = Annotated[
    int | None,
    typer.Option(help="Validation fold (datalist entries with a 'fold' field).", rich_help_panel=_DATA),
]
Workers = Annotated[int | None, typer.Option(help="Data loader worker processes.", rich_help_panel=_DATA)]
CacheRate = Annotated[
    float | None, typer.Option(help="Fraction of volumes cached after preprocessing.", rich_help_panel=_DATA)
]

# Optimisation
Lr = Annotated[
    float | None, typer.Option("--lr", "--optim-lr", help="Learning rate.", rich_help_panel=_OPTIM)
]
Optimizer = Annotated[
    str | None,
    typer.Option("--optimizer", "--optim-name", help="adamw, adam or sgd.", rich_help_panel=_OPTIM),
]
LrSchedule = Annotated[
    str | None, typer.Option(help="warmup_cosine, cosine_anneal or constant.", rich_help_panel=_OPTIM)
]
WarmupEpochs = Annotated[
    int | None, typer.Option(help="Linear warmup length in epochs.", rich_help_panel=_OPTIM)
]
MaxEpochs = Annotated[int | None, typer.Option(help="Training length in epochs.", rich_help_panel=_OPTIM)]
BatchSize = Annotated[
    int | None, typer.Option(help="Volumes per step (each gives several crops).", rich_help_panel=_OPTIM)
]
ValEvery = Annotated[int | None, typer.Option(help="Validate every N epochs.", rich_help_panel=_OPTIM)]
Amp = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp", " /--noamp", help="Mixed precision (on by default).", rich_help_panel=_OPTIM
    ),
]

# Inference
InferOverlap = Annotated[
    float | None, typer.Option(help="Sliding-window overlap in [0, 1).", rich_help_panel=_INFER)
]
SwBatchSize = Annotated[int | None, typer.Option(help="Windows per forward pass.", rich_help_panel=_INFER)]
BlendMode = Annotated[
    str | None,
    typer.Option(
        "--mode", "--blend-mode", help="Window blending: gaussian or constant.", rich_help_panel=_INFER
    ),
]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel=_INFER)]
InferAmp = Annotated[
    bool | None,
    typer.Option("--amp/--no-amp", help="Autocast inference (on by default).", rich_help_panel=_INFER),
]
Tta = Annotated[
    bool | None,
    typer.Option("--tta/--no-tta", help="Average predictions over axis flips.", rich_help_panel=_INFER),
]

KeepLargest = Annotated[
    bool | None,
    typer.Option(
        "--keep-largest/--no-keep-largest",
        help="Keep only the largest connected component of each organ that is one piece.",
        rich_help_panel=_INFER,
    ),
]
MinSize = Annotated[
    float | None,
    typer.Option(
        "--min-size",
        help="Remove organ components smaller than this many ml.",
        min=0.0,
        rich_help_panel=_INFER,
    ),
]

# Run
Logdir = Annotated[
    Path | None,
    typer.Option(help="Run directory (default runs/<timestamp>).", rich_help_panel=_RUN, file_okay=False),
]
Seed = Annotated[
    int | None, typer.Option(help="Random seed; makes a CPU run reproducible.", rich_help_panel=_RUN)
]
SaveCheckpoint = Annotated[
    bool | None,
    typer.Option(
        "--save-checkpoint/--no-save-checkpoint",
        help="Write checkpoints (on by default).",
        rich_help_panel=_RUN,
    ),
]
Overwrite = Annotated[bool, typer.Option(help="Replace existing outputs.", rich_help_panel=_RUN)]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print results only, no progress.", rich_help_panel=_RUN)
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print JSON lines instead of tables and bars.", rich_help_panel=_RUN)
]
Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "--from",
        help="Weights: checkpoint, reference state dict, safetensors, TorchScript "
        "(with --trust-torchscript) or hub:OWNER/REPO/FILE.",
        rich_help_panel=_MODEL,
    ),
]
TrustTorchscript = Annotated[
    bool,
    typer.Option(
        help="Allow loading TorchScript files. They contain code that runs when loaded: trusted files only.",
        rich_help_panel=_MODEL,
    ),
]


def sources(config: Path | None, preset: str | None, assignments: list[str] | None) -> SettingsSources:
    """The --config, --preset and --set options as one typed value."""
    return SettingsSources(config, preset, tuple(assignments or ()))


@dataclass(frozen=True)
class InferenceFlags:
    """The sliding-window and post-processing options that predict and evaluate share; None: not given.
    Each is the `inference` settings field of its name."""

    infer_overlap: float | None = None
    sw_batch_size: int | None = None
    blend_mode: str | None = None
    tta: bool | None = None
    resample: str | None = None
    amp: bool | None = None
    device: str | None = None
    keep_largest: bool | None = None
    min_size_ml: float | None = None

    def settings(self) -> dict:
        """As settings flags: `{"inference.<field>": value}`."""
        return {f"inference.{name}": value for name, value in dataclasses.asdict(self).items()}


def output_mode(quiet: bool, json_output: bool) -> str:
    """The Reporter mode chosen by --quiet / --json."""
    return "json" if json_output else "quiet" if quiet else "rich"


# Training runs
Resume = Annotated[
    bool,
    typer.Option(
        help="Continue the run in --logdir (default: the newest under runs/) from checkpoint_latest.",
        rich_help_panel=_RUN,
    ),
]
StopAfter = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="End this invocation after N epochs (saving checkpoint_latest); continue later with --resume.",
        rich_help_panel=_RUN,
    ),
]
PretrainedDir = Annotated[
    Path | None,
    typer.Option(
        help="Folder of pretrained weights (reference --pretrained_dir).",
        rich_help_panel=_MODEL,
        file_okay=False,
    ),
]
PretrainedModelName = Annotated[
    str | None,
    typer.Option(
        help="File inside --pretrained-dir (reference --pretrained_model_name).", rich_help_panel=_MODEL
    ),
]

SavedCheckpoint = Annotated[
    str | None,
    typer.Option(
        help="Reference spelling: ckpt or torchscript; checked against the file (TorchScript still "
        "needs --trust-torchscript).",
        rich_help_panel=_MODEL,
    ),
]

# Distributed launch (torchrun, in-process)
_DIST = "Distributed"
NprocPerNode = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Processes on this node (one per GPU); relaunches through torchrun.",
        rich_help_panel=_DIST,
    ),
]
Distributed = Annotated[
    bool, typer.Option(help="One process per visible GPU (reference --distributed).", rich_help_panel=_DIST)
]
Nnodes = Annotated[
    str | None, typer.Option(help="Nodes, or MIN:MAX for elastic jobs.", rich_help_panel=_DIST)
]
NodeRank = Annotated[int | None, typer.Option(help="This node's rank (multi-node).", rich_help_panel=_DIST)]
RdzvEndpoint = Annotated[
    str | None, typer.Option(help="HOST:PORT every node meets at (multi-node).", rich_help_panel=_DIST)
]
MaxRestarts = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Restart the group this often when a rank dies; it resumes from checkpoint_latest.",
        rich_help_panel=_DIST,
    ),
]
ScaleLr = Annotated[
    bool | None,
    typer.Option(
        "--scale-lr/--no-scale-lr", help="Multiply --lr by the number of processes.", rich_help_panel=_DIST
    ),
]
Resample = Annotated[
    str | None,
    typer.Option(
        help="Back to the scan's grid: probabilities (classical, default) or labels (least memory).",
        rich_help_panel=_INFER,
    ),
]
