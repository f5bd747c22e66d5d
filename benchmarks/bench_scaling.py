"""How the time and peak RSS of `unetr predict` grow with the scan: 512 x 512 x {128, 200, 400, 800} slices,
and the largest scan that fits in 8 GB of RAM (a linear fit of peak RSS against voxels, extrapolated).

    python benchmarks/bench_scaling.py [--slices 128 200 400 800]
"""

from __future__ import annotations

import argparse
import sys

from common import DATA, benchmark_scan, run_measured, standard_checkpoint, write_result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, nargs="+", default=[128, 200, 400, 800])
    args = parser.parse_args()

    import numpy as np

    rows = []
    for slices in args.slices:
        scan = benchmark_scan(slices)
        measured = run_measured(
            [
                sys.executable,
                "-m",
                "unetr_cli",
                "predict",
                str(scan),
                "-o",
                str(DATA / f"scaling_{slices}.nii.gz"),
                "--checkpoint",
                str(standard_checkpoint()),
                "--overwrite",
                "-q",
            ]
        )
        voxels = 512 * 512 * slices
        rows.append(
            {
                "slices": slices,
                "voxels": voxels,
                "seconds": measured["seconds"],
                "peak_rss_mb": measured["peak_rss_mb"],
            }
        )
        print(
            f"{slices:4d} slices: {measured['seconds']:6.1f} s, peak RSS {measured['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    voxels = np.array([r["voxels"] for r in rows], dtype=float)
    rss = np.array([r["peak_rss_mb"] for r in rows])
    slope, intercept = np.polyfit(voxels, rss, 1)
    largest_slices = int((8192 - intercept) / slope / (512 * 512))
    print(
        f"peak RSS ~ {intercept:.0f} MB + {slope * 512 * 512:.2f} MB per 512x512 slice; "
        f"largest 512x512 scan within 8 GB: ~{largest_slices} slices (extrapolated)"
    )
    write_result(
        "scaling",
        {
            "rows": rows,
            "rss_fit_mb": {"intercept": intercept, "per_slice": slope * 512 * 512},
            "largest_slices_in_8gb": largest_slices,
        },
    )


if __name__ == "__main__":
    main()
