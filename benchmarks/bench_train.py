"""Seconds per training step of `unetr train` (standard config, 4 crops of 96^3) against the model's pure
forward + backward + optimiser step on ready tensors: the gap is what data loading and the loop cost.

    python benchmarks/bench_train.py [--epochs 4] [--no-amp]

Data loading uses `unetr train`'s default workers (none on a CPU-only machine, where worker processes
compete with the model for the same cores).
"""

from __future__ import annotations

import argparse
import sys
import time

from common import DATA, json_events, median, run_measured, write_result


def pure_step_seconds(amp: bool, steps: int = 4) -> float:
    """fwd + bwd + AdamW on random tensors already in memory (bf16 autocast when `amp`)."""
    import torch

    from unetr_cli.devices import autocast, autocast_dtype
    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.recipe import loss_for, optimizer_for

    settings = resolve_settings(SettingsSources(preset="btcv"))
    model = build_model(settings.model)
    optimizer, loss_fn = optimizer_for(model, settings), loss_for(settings)
    dtype = autocast_dtype(torch.device("cpu"), amp)
    image = torch.rand(4, 1, 96, 96, 96)
    label = torch.randint(0, 14, (4, 1, 96, 96, 96)).float()
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            logits = model(image)
        loss = loss_fn(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step allocates
            times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-amp", action="store_true")
    args = parser.parse_args()
    amp = not args.no_amp

    data = DATA / "train_phantoms"
    if not (data / "dataset_0.json").exists():
        from unetr_cli.phantoms import write_dataset

        write_dataset(data, cases=3, seed=5, shape=(256, 256, 100), validation_fraction=0.34)
    command = [
        sys.executable,
        "-m",
        "unetr_cli",
        "train",
        "--data-dir",
        str(data),
        "--logdir",
        str(DATA / "train_run"),
        "--overwrite",
        "--max-epochs",
        str(args.epochs),
        "--val-every",
        "1000",
        "--json",
        "--seed",
        "0",
        "--no-save-checkpoint",
    ]
    if not amp:
        command.append("--no-amp")
    measured = run_measured(command)
    epochs = json_events(measured["stdout"], "epoch")
    steps = epochs[0]["step"]
    per_step = median([e["seconds"] / steps for e in epochs[1:]])  # the first epoch warms up
    pure = pure_step_seconds(amp)
    ratio = per_step / pure
    print(
        f"unetr train: {per_step:.2f} s/step ({steps} steps per epoch, median of epochs 2..{len(epochs)}); "
        f"pure fwd+bwd+opt: {pure:.2f} s/step; ratio {ratio:.2f}; peak RSS {measured['peak_rss_mb']:.0f} MB"
    )
    write_result(
        f"train_{'bf16' if amp else 'fp32'}",
        {
            "seconds_per_step": per_step,
            "pure_seconds_per_step": pure,
            "ratio": ratio,
            "peak_rss_mb": measured["peak_rss_mb"],
            "epochs": epochs,
        },
    )


if __name__ == "__main__":
    main()
