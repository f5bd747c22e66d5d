"""`unetr predict` against the reference-style pipeline on the same CT, in alternating runs.

Timing and memory use the standard UNETR (random weights, the same for both) on a 512 x 512 x 200 phantom
(int16, 0.8 x 0.8 x 2.5 mm, LPS). Agreement uses a trained model (the `unetr demo` one), since labels from
random weights are ill-defined: both pipelines segment the same scan and their label maps are compared,
with unetr's defaults and with the baseline's settings (constant blending, fp32), and each against the
phantom's truth.

    python benchmarks/bench_predict.py [--runs 3] [--slices 200]
"""

from __future__ import annotations

import argparse
import sys

from common import (
    DATA,
    benchmark_scan,
    mean_dice,
    median,
    run_measured,
    standard_checkpoint,
    trained_checkpoint,
    write_result,
)

BASELINE = [sys.executable, str(DATA.parent / "baseline_predict.py")]
UNETR = [sys.executable, "-m", "unetr_cli", "predict"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=200)
    args = parser.parse_args()

    scan, standard = benchmark_scan(args.slices), standard_checkpoint()
    timings: dict[str, list[dict]] = {"baseline": [], "unetr": []}
    for run in range(args.runs):
        for name in ("baseline", "unetr") if run % 2 == 0 else ("unetr", "baseline"):
            out = DATA / f"{name}_seg.nii.gz"
            command = (
                [*BASELINE, str(scan), "-o", str(out), "--checkpoint", str(standard)]
                if name == "baseline"
                else [*UNETR, str(scan), "-o", str(out), "--checkpoint", str(standard), "--overwrite", "-q"]
            )
            measured = run_measured(command)
            timings[name].append({"seconds": measured["seconds"], "peak_rss_mb": measured["peak_rss_mb"]})
            print(
                f"run {run + 1} {name:8s} {measured['seconds']:7.1f} s  {measured['peak_rss_mb']:7.0f} MB",
                flush=True,
            )

    trained = trained_checkpoint()
    variants = {  # name: extra flags of `unetr predict`
        "unetr": [],
        "unetr_fp32": ["--no-amp"],
        "unetr_labels": ["--resample", "labels"],
        "unetr_reference_settings": ["--mode", "constant", "--no-amp"],
    }
    run_measured(
        [*BASELINE, str(scan), "-o", str(DATA / "agree_baseline.nii.gz"), "--checkpoint", str(trained)]
    )
    for name, flags in variants.items():
        run_measured(
            [
                *UNETR,
                str(scan),
                "-o",
                str(DATA / f"agree_{name}.nii.gz"),
                "--checkpoint",
                str(trained),
                "--overwrite",
                "-q",
                *flags,
            ]
        )
    truth = scan.with_name(scan.name.replace("scan_", "truth_"))
    labels = {name: DATA / f"agree_{name}.nii.gz" for name in [*variants, "baseline"]}
    agreement = {
        "unetr_vs_baseline": mean_dice(labels["unetr"], labels["baseline"]),
        "unetr_reference_settings_vs_baseline": mean_dice(
            labels["unetr_reference_settings"], labels["baseline"]
        ),
        "unetr_bf16_vs_fp32": mean_dice(labels["unetr"], labels["unetr_fp32"]),
        "unetr_labels_vs_probabilities": mean_dice(labels["unetr_labels"], labels["unetr"]),
        **{f"{name}_vs_truth": mean_dice(path, truth) for name, path in labels.items()},
    }
    summary = {
        name: {
            "median_seconds": median([t["seconds"] for t in runs]),
            "median_peak_rss_mb": median([t["peak_rss_mb"] for t in runs]),
        }
        for name, runs in timings.items()
    }
    ratios = {
        "time": summary["unetr"]["median_seconds"] / summary["baseline"]["median_seconds"],
        "peak_rss": summary["unetr"]["median_peak_rss_mb"] / summary["baseline"]["median_peak_rss_mb"],
    }
    base, ours = summary["baseline"], summary["unetr"]
    print(
        f"median: baseline {base['median_seconds']:.1f} s / {base['median_peak_rss_mb']:.0f} MB, unetr "
        f"{ours['median_seconds']:.1f} s / {ours['median_peak_rss_mb']:.0f} MB; "
        f"ratios time {ratios['time']:.2f}, RSS {ratios['peak_rss']:.2f}"
    )
    for key, value in agreement.items():
        print(f"agreement {key}: mean Dice {value:.4f}")
    write_result(
        f"predict_{args.slices}",
        {
            "runs": timings,
            "summary": summary,
            "ratios": ratios,
            "agreement": agreement,
            "scan": str(scan.name),
        },
    )


if __name__ == "__main__":
    main()
