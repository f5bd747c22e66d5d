"""`unetr predict` on a GPU against the reference-style GPU pipeline, on the same 512 x 512 x 200 CT.

Measured in one run, on the standard UNETR with random weights (the same file for both pipelines):
- the reference-style pipeline (`baseline_predict.py --device cuda`: MONAI transforms on the CPU, windows on
  the GPU, Invertd of the 14-channel output on the CPU), wall time including start-up;
- `unetr predict` (defaults, `--device cuda`) as a single invocation, start-up included, taken apart (the
  median of `--single-runs`; the scan's read overlaps start-up), and what any process pays before it
  (`common.platform_floors`: the interpreter, imports, CUDA context, cuDNN);
- `unetr predict` on a batch of the same scan under N names: seconds per scan in the steady state (the mean
  interval between consecutive scans finishing);
- peak GPU memory (the allocator's reserve) and peak host RSS of each;
- label agreement of the GPU path with the CPU path at identical settings (fp32, constant blending), and at
  the defaults, with the trained `unetr demo` model (labels from random weights are ill-defined); left out
  with `--skip-agreement`.

    python benchmarks/bench_gpu_predict.py [--batch 10] [--single-runs 3] [--skip-agreement]
    python benchmarks/bench_gpu_predict.py --device cpu --batch 2 --slices 24    # tries the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from common import (
    DATA,
    ROOT,
    benchmark_scan,
    invocation_breakdown,
    json_events,
    mean_dice,
    median,
    platform_floors,
    run_measured,
    standard_checkpoint,
    trained_checkpoint,
    write_result,
)

UNETR = [sys.executable, "-m", "unetr_cli", "predict"]
GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--single-runs", type=int, default=3, help="single invocations (the median is kept)")
    parser.add_argument(
        "--skip-agreement", action="store_true", help="leave out the agreement with the CPU path (minutes)"
    )
    args = parser.parse_args()
    # a trial on the CPU must not overwrite the GPU's numbers
    results_name = "gpu_predict" if args.device.startswith("cuda") else "gpu_predict_trial_" + args.device

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_predict.py needs a CUDA GPU")
    scan, standard = benchmark_scan(args.slices), standard_checkpoint()
    batch = DATA / "gpu_batch"
    shutil.rmtree(batch, ignore_errors=True)
    batch.mkdir()
    for index in range(args.batch):
        os.link(scan, batch / f"scan{index:02d}.nii.gz")

    result: dict = {
        "device": args.device,
        "scan": f"512x512x{args.slices} int16 CT, 0.8x0.8x2.5 mm, LPS; standard UNETR, random weights",
    }

    def unetr(inputs, output, checkpoint, device, *flags) -> dict:
        command = [
            *UNETR,
            str(inputs),
            "-o",
            str(output),
            "--checkpoint",
            str(checkpoint),
            "--device",
            device,
        ]
        return run_measured([*command, "--overwrite", "--json", *flags])

    def peak(run: dict) -> float:
        return (json_events(run["stdout"], "summary")[0]["peak_gpu_memory_bytes"] or 0) / GIB

    batch_run = unetr(batch, DATA / "gpu_out", standard, args.device)
    predicted = json_events(batch_run["stdout"], "predicted")
    done = [e["time"] for e in predicted]
    stage_names = predicted[0]["stages"] if predicted else {}
    stage_medians = {k: median([e["stages"][k] for e in predicted[1:] or predicted]) for k in stage_names}
    result.update(
        batch_size=len(done),
        unetr_seconds_per_scan_in_batch=(done[-1] - done[0]) / (len(done) - 1),
        unetr_batch_wall_seconds=batch_run["seconds"],
        unetr_batch_stage_medians=stage_medians,  # read and write overlap the GPU work on CUDA
        peak_gpu_memory_gb={"unetr_batch": peak(batch_run)},
        peak_rss_gb={"unetr_batch": batch_run["peak_rss_mb"] / 1024},
    )
    write_result(results_name, result)  # after every stage: a run cut short keeps what it measured
    print(
        f"unetr predict, batch of {len(done)}: {result['unetr_seconds_per_scan_in_batch']:.2f} s/scan",
        flush=True,
    )
    print(f"  stage medians (s): {stage_medians}", flush=True)

    singles = [
        unetr(scan, DATA / "gpu_single.nii.gz", standard, args.device) for _ in range(args.single_runs)
    ]
    single = sorted(singles, key=lambda run: run["seconds"])[len(singles) // 2]  # the median run
    result["unetr_single_wall_seconds"] = single["seconds"]
    result["unetr_single_breakdown"] = invocation_breakdown(single)  # read overlaps start-up
    result["unetr_single_runs"] = [invocation_breakdown(run) for run in singles]
    result["peak_gpu_memory_gb"]["unetr_single"] = peak(single)
    result["peak_rss_gb"]["unetr_single"] = single["peak_rss_mb"] / 1024
    write_result(results_name, result)
    walls = ", ".join(f"{run['seconds']:.1f}" for run in singles)
    print(f"unetr predict, one scan: {walls} s wall (median {single['seconds']:.1f} s)", flush=True)
    print(f"  peak GPU memory {peak(single):.2f} GB", flush=True)
    print(f"  where the median run's time went (s): {result['unetr_single_breakdown']}", flush=True)
    result["platform_floors"] = platform_floors(args.device, runs=2)
    write_result(results_name, result)
    print(f"  what any process pays first (s): {result['platform_floors']}", flush=True)

    reference = [
        sys.executable,
        str(ROOT / "baseline_predict.py"),
        str(scan),
        "-o",
        str(DATA / "gpu_baseline.nii.gz"),
    ]
    baseline = run_measured([*reference, "--checkpoint", str(standard), "--device", args.device])
    baseline_peak = json.loads((baseline["stdout"].strip().splitlines() or ["{}"])[-1]).get(
        "peak_gpu_memory_bytes"
    )
    result.update(
        baseline_wall_seconds=baseline["seconds"],
        ratio_single_to_baseline=single["seconds"] / baseline["seconds"],
        ratio_per_scan_to_baseline=result["unetr_seconds_per_scan_in_batch"] / baseline["seconds"],
    )
    result["peak_gpu_memory_gb"]["baseline"] = (baseline_peak or 0) / GIB
    result["peak_rss_gb"]["baseline"] = baseline["peak_rss_mb"] / 1024
    write_result(results_name, result)
    print(f"reference-style GPU pipeline: {baseline['seconds']:.1f} s wall", flush=True)

    if args.skip_agreement:
        return
    trained, agreement = trained_checkpoint(), {}
    for name, flags in (("fp32_constant", ["--no-amp", "--mode", "constant"]), ("defaults", [])):
        outputs = {device: DATA / f"agree_{name}_{device}.nii.gz" for device in (args.device, "cpu")}
        for device, output in outputs.items():
            unetr(scan, output, trained, device, *flags)
        agreement[name] = mean_dice(outputs[args.device], outputs["cpu"])
        result["agreement_mean_organ_dice_gpu_vs_cpu"] = agreement
        write_result(results_name, result)
        print(f"labels GPU path vs CPU path ({name}): mean organ Dice {agreement[name]:.4f}", flush=True)


if __name__ == "__main__":
    main()
