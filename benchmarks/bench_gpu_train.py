"""`unetr train` on a GPU: seconds per step against the model's pure step and a reference-style loop.

Measured in one run on the same phantoms (256 x 256 x 100; by default 24 for training, the BTCV training set's
size, so an epoch has the reference recipe's 24 steps; standard config: 4 crops of 96^3 per step):
- the pure step: forward + backward + AdamW on random tensors already on the GPU (bf16 autocast; fp16 with
  GradScaler too, the reference's precision), and the host's seconds to queue it (launch-bound when they are
  near the step's); the same for the `demo` preset's small model, whose steps set the demo's pace;
- `unetr train` (defaults: bf16, the data pipeline `auto` picks): median seconds per step over the epochs
  after the first, the share of it spent waiting for data, crops per second, peak GPU memory and host RSS;
- the reference-style loop (`baseline_train.py`: CPU transforms, a DataLoader with 4 worker processes, fp16 +
  GradScaler): the same numbers;
- time to a validation mean Dice of 0.75 with the `demo` preset, from the `unetr demo` run of
  `common.trained_checkpoint()` (wall seconds since its training started, validation included).

    python benchmarks/bench_gpu_train.py [--epochs 4] [--training-cases 24] [--skip-demo]
    python benchmarks/bench_gpu_train.py --device cpu --preset tiny-cpu --epochs 2 --training-cases 3  # trial
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import (
    DATA,
    ROOT,
    json_events,
    median,
    run_measured,
    standard_checkpoint,
    trained_checkpoint,
    write_result,
)

GIB = 2**30


def pure_step_seconds(
    dtype_name: str,
    device_name: str,
    preset: str,
    steps: int = 10,
    foreach_adamw: bool = False,
    graphed: bool = False,
) -> dict:
    """fwd + bwd + AdamW of the preset's UNETR on one step's random crops already on the device: the median
    seconds per step, and of them the seconds the host took to queue the step's work (on a GPU, a step whose
    queueing takes as long as the step itself is bound by Python and kernel launches, not by the GPU).

    By default the optimiser is unetr's (fused AdamW on a GPU) and the model runs eagerly; `foreach_adamw`
    takes PyTorch's default AdamW instead, `graphed` runs the model through CUDA graphs as `unetr train` does.
    """
    import torch

    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.graphs import GraphedTraining
    from unetr_cli.training.recipe import loss_for, optimizer_for

    settings = resolve_settings(SettingsSources(preset=preset))
    device = torch.device(device_name)
    size, crops = settings.model.img_size, settings.optimisation.batch_size * settings.data.num_samples
    model = build_model(settings.model).to(device).train()
    opt, loss_fn = settings.optimisation, loss_for(settings)
    optimizer = (
        torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        if foreach_adamw
        else optimizer_for(model, settings)
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    forward = GraphedTraining(model, dtype, on_failure=sys.exit) if graphed else model
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    image = torch.rand(crops, 1, size, size, size, device=device)
    label = torch.randint(0, settings.model.out_channels, (crops, 1, size, size, size), device=device).float()
    times, queued = [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(steps + 3):
        sync()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            logits = forward(image)
        loss = loss_fn(logits.float(), label)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        launched = time.perf_counter()
        sync()
        if step >= 3:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - started)
            queued.append(launched - started)
    return {"seconds": median(times), "queued_seconds": median(queued), "crops": crops}


def time_to_dice(metrics: list[dict], target: float) -> float | None:
    return next((r["elapsed_s"] for r in metrics if (r.get("mean_dice") or 0) >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="btcv")
    parser.add_argument("--training-cases", type=int, default=24)
    parser.add_argument(
        "--skip-demo", action="store_true", help="leave out the time to Dice 0.75 (runs `unetr demo`)"
    )
    args = parser.parse_args()
    # a trial on the CPU must not overwrite the GPU's numbers
    results_name = "gpu_train" if args.device.startswith("cuda") else "gpu_train_trial_" + args.device

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_train.py needs a CUDA GPU")
    data = DATA / f"gpu_train_phantoms_{args.training_cases}"
    if not (data / "dataset_0.json").exists():
        from unetr_cli.phantoms import write_dataset

        cases = args.training_cases + 1
        write_dataset(
            data, cases=cases, seed=5, shape=(256, 256, 100), validation_fraction=1 / cases, workers=8
        )
    dtypes = ("bf16", "fp16") if args.device == "cuda" else ("bf16",)
    pure_steps = {name: pure_step_seconds(name, args.device, args.preset) for name in dtypes}
    pure = {name: step["seconds"] for name, step in pure_steps.items()}
    queued = {name: step["queued_seconds"] for name, step in pure_steps.items()}
    demo_step = pure_step_seconds("bf16", args.device, "demo")
    print(f"pure step: {', '.join(f'{k} {v:.3f} s' for k, v in pure.items())}", flush=True)
    print(f"  of it queueing the work on the host: {queued}", flush=True)
    print(f"demo preset's pure step (bf16): {demo_step}", flush=True)

    command = [
        sys.executable,
        "-m",
        "unetr_cli",
        "train",
        "--data-dir",
        str(data),
        "--logdir",
        str(DATA / "gpu_train_run"),
    ]
    command += [
        "--overwrite",
        "--max-epochs",
        str(args.epochs),
        "--val-every",
        "1000",
        "--json",
        "--seed",
        "0",
    ]
    command += ["--no-save-checkpoint", "--device", args.device, "--preset", args.preset]
    unetr = run_measured(command)
    start = json_events(unetr["stdout"], "start")[0]
    epochs = json_events(unetr["stdout"], "epoch")
    finish = json_events(unetr["stdout"], "finish")[0]
    steps = start["steps_per_epoch"]
    unetr_step = median([e["seconds"] / steps for e in epochs[1:]])
    data_wait = median([e["data_wait_s"] / e["seconds"] for e in epochs[1:]])
    crops = start["effective_batch"]  # crops per step
    print(
        f"unetr train: {unetr_step:.3f} s/step ({start['data']}); "
        f"{unetr_step / pure['bf16']:.2f}x the pure step, {data_wait:.0%} of it waiting for data",
        flush=True,
    )
    result = {
        "device": args.device,
        "preset": args.preset,
        "data": f"{args.training_cases} training + 1 validation phantoms of 256x256x100",
        "pure_seconds_per_step": pure,
        "pure_queued_seconds_per_step": queued,  # the host's share: near the step itself = launch-bound
        "demo_preset_pure_step": demo_step,
        "unetr_seconds_per_step": unetr_step,
        "unetr_ratio_to_pure_bf16": unetr_step / pure["bf16"],
        "unetr_data_wait_share": data_wait,
        "unetr_crops_per_second": crops / unetr_step,
        "unetr_pipeline": start["data"],
        "unetr_peak_gpu_memory_gb": (finish.get("peak_gpu_memory_bytes") or 0) / GIB,
        "unetr_peak_rss_gb": unetr["peak_rss_mb"] / 1024,
        "unetr_epochs": epochs,
    }
    write_result(results_name, result)  # after every stage: a run cut short keeps what it measured

    baseline = run_measured(
        [
            sys.executable,
            str(ROOT / "baseline_train.py"),
            str(data),
            "--checkpoint",
            str(standard_checkpoint(args.preset)),
            "--epochs",
            str(args.epochs),
            "--device",
            args.device,
        ]
    )
    records = [json.loads(x) for x in baseline["stdout"].splitlines() if x.startswith("{")]
    baseline_step = median([r["seconds"] / r["steps"] for r in records if "epoch" in r][1:])
    baseline_peak = records[-1]["peak_gpu_memory_bytes"]
    print(f"reference-style loop: {baseline_step:.3f} s/step", flush=True)

    result.update(
        {
            "baseline_seconds_per_step": baseline_step,
            "baseline_crops_per_second": 4 / baseline_step,
            "baseline_peak_gpu_memory_gb": baseline_peak / GIB,
            "baseline_peak_rss_gb": baseline["peak_rss_mb"] / 1024,
            "crops_per_second_ratio": (crops / unetr_step) / (4 / baseline_step),
        }
    )
    write_result(results_name, result)
    print(f"crops per second: {result['crops_per_second_ratio']:.2f}x the reference-style loop's", flush=True)
    if args.skip_demo:
        return

    demo_metrics = DATA / "demo" / "run" / "metrics.jsonl"
    trained_checkpoint()  # runs `unetr demo` unless it ran already
    metrics = [json.loads(x) for x in demo_metrics.read_text().splitlines() if x.strip()]
    to_075 = time_to_dice(metrics, 0.75)
    print(f"demo preset: validation mean Dice 0.75 after {to_075} s", flush=True)
    result.update({"demo_seconds_to_dice_0_75": to_075, "demo_metrics": metrics})
    print(f"wrote {write_result(results_name, result)}")


if __name__ == "__main__":
    main()
