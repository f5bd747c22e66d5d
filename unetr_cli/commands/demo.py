"""`unetr demo`: the whole job on generated phantoms, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.commands import options as opt
from unetr_cli.commands.demo_recipe import DEMO_CASES
from unetr_cli.console import Reporter

NEXT_STEPS = """next, on real data:
  unetr train --data-dir /dataset/dataset0 --preset btcv            # the BTCV recipe (GPU)
  unetr finetune --from pretrained_models/UNETR_model_best_acc.pth --data-dir /dataset/dataset0
  unetr predict scan.nii.gz -o seg.nii.gz --checkpoint runs/<run>/checkpoint_best.pt --stats --preview
  unetr evaluate --data-dir /dataset/dataset0 --checkpoint runs/<run>/checkpoint_best.pt"""


def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything the demo writes.", file_okay=False)
    ] = Path("unetr-demo"),
    minutes: Annotated[
        float | None,
        typer.Option(
            min=0.5,
            help="Cap on the training time (default: none; the demo trains a fixed number of epochs, so its "
            "result does not depend on the machine's speed). A cap says how many epochs it cut.",
        ),
    ] = None,
    cases: Annotated[int, typer.Option(min=4, help="Phantoms to generate (1 in 6 held out).")] = DEMO_CASES,
    seed: opt.Seed = 0,
    device: opt.Device = "auto",
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Run the whole job on generated phantoms: synthesise a BTCV-layout dataset, train a small UNETR (the
    demo preset), score the held-out phantoms per organ, and segment a held-out scan in its own space with
    organ statistics and a preview picture. A fixed number of epochs: about 6 minutes on a 2-core CPU, and
    the same result however busy the machine is.

    Examples:
      unetr demo
      unetr demo --out /tmp/unetr-demo --overwrite
      unetr demo --minutes 3            # a quicker, weaker model on a slow machine
    """
    from unetr_cli.commands.demo_recipe import run_demo

    reporter = Reporter(opt.output_mode(quiet, json_output))
    result = run_demo(
        out=out,
        minutes=minutes,
        cases=cases,
        seed=seed or 0,
        device=device or "auto",
        overwrite=overwrite,
        reporter=reporter,
    )
    reporter.event(
        "demo",
        mean_dice=result.mean_dice,
        held_out_dice=result.held_out_dice,
        epochs=result.epochs,
        minutes=result.minutes,
        artefacts={k: str(v) for k, v in result.artefacts.items()},
    )
    reporter.result(
        f"mean organ Dice on the held-out phantoms: {result.mean_dice:.3f} (held-out scan "
        f"{result.held_out_dice:.3f}) after {result.epochs} epochs, {result.minutes:.1f} minutes in all"
    )
    for name, path in result.artefacts.items():
        reporter.result(f"  {name:17s} {path}")
    reporter.result(NEXT_STEPS)
