"""`unetr config show` and `unetr config presets`: the resolved settings and the shipped presets."""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from unetr_cli.commands import command
from unetr_cli.commands import options as opt
from unetr_cli.console import stdout

config_app = typer.Typer(help="Show the resolved settings and the shipped presets.", no_args_is_help=True)


@command(config_app, "show")
def config_show(
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
    feature_size: opt.FeatureSize = None,
    img_size: opt.ImgSize = None,
    data_dir: opt.DataDir = None,
    lr: opt.Lr = None,
    batch_size: opt.BatchSize = None,
    json_output: opt.JsonOutput = False,
) -> None:
    """Print the settings every command would use, after defaults < preset < config file < UNETR_* < flags.

    Examples:
      unetr config show
      unetr config show --json --config train.toml --lr 4e-4
      UNETR_MODEL__FEATURE_SIZE=32 unetr config show --preset btcv
    """
    from unetr_cli.settings import resolve_settings

    settings = resolve_settings(
        opt.sources(config, preset, set_),
        {
            "model.feature_size": feature_size,
            "model.img_size": img_size,
            "data.data_dir": data_dir,
            "optimisation.lr": lr,
            "optimisation.batch_size": batch_size,
        },
    )
    if json_output:
        print(json.dumps(settings.to_dict(), indent=2))
        return
    from rich.table import Table

    for group, values in settings.to_dict().items():
        table = Table(title=group, title_justify="left", show_header=False, box=None, padding=(0, 2))
        for key, value in values.items():
            table.add_row(key, json.dumps(value))
        stdout.print(table)


@command(config_app, "presets")
def config_presets() -> None:
    """List the named presets shipped with unetr and what each one changes.

    Examples:
      unetr config presets
      unetr config show --preset tiny-cpu
    """
    from unetr_cli.settings import preset_names, read_preset

    for name in preset_names():
        changes = ", ".join(
            f"{g}.{k}={json.dumps(v)}" for g, vals in read_preset(name).items() for k, v in vals.items()
        )
        stdout.print(f"[bold]{name}[/]: {escape(changes or '(the defaults)')}", soft_wrap=True)
