"""One `unetr predict` invocation of one scan, taken apart: start-up (interpreter, imports, weights, model on
the device), each stage of the scan (`stages` of the `predicted` event), and the exit; beside it what any
process pays before unetr does anything (`common.platform_floors`).

Standard UNETR with random weights, the 512 x 512 x N CT of the other predict benchmarks; the median of
`--runs` invocations per part. On a GPU, `bench_gpu_predict.py` records the same breakdown of its single
invocation.

    python benchmarks/bench_startup.py [--device cpu] [--slices 24] [--runs 3]
"""

from __future__ import annotations

import argparse
import sys

from common import (
    DATA,
    benchmark_scan,
    invocation_breakdown,
    median,
    platform_floors,
    run_measured,
    standard_checkpoint,
    write_result,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    scan, checkpoint = benchmark_scan(args.slices), standard_checkpoint()
    command = [sys.executable, "-m", "unetr_cli", "predict", str(scan), "-o", str(DATA / "startup.nii.gz")]
    command += ["--checkpoint", str(checkpoint), "--device", args.device, "--overwrite", "--json"]
    runs = [invocation_breakdown(run_measured(command)) for _ in range(args.runs)]
    parts = {name: round(median([run[name] for run in runs]), 3) for name in runs[0]}
    floors = platform_floors(args.device, args.runs)
    for name, seconds in {**parts, **floors}.items():
        print(f"{name:>30}: {seconds:6.2f} s")
    result = {
        "device": args.device,
        "scan": f"512x512x{args.slices} int16 CT, 0.8x0.8x2.5 mm, LPS; standard UNETR, random weights",
        "median_of_runs": args.runs,
        "seconds": parts,
        "platform_floors": floors,
        "runs": runs,
    }
    name = f"startup_{args.device.split(':')[0]}_{args.slices}"
    print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
