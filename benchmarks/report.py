"""Print the benchmark tables (Markdown) from benchmarks/results/*.json, each row with the command that
reproduces it. benchmarks/README.md holds the latest output.

    python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import json

from common import ROOT

RESULTS = ROOT / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    for name in ("predict_200", "options", "train_bf16", "window_loop", "scaling"):
        result = _load(name)
        if result:
            m = result["machine"]
            return (
                f"{m['cpu']}, {m['cores']} cores, no GPU; Python {m['python']}, torch {m['torch']}, "
                f"MONAI {m['monai']}"
            )
    return "no results yet"


def predict_table() -> str:
    result = _load("predict_200")
    if not result:
        return "(run bench_predict.py)"
    s, ratios, agree = result["summary"], result["ratios"], result["agreement"]
    runs = len(result["runs"]["unetr"])
    command = f"`python benchmarks/bench_predict.py --runs {runs}`"
    rows = [
        [
            "reference-style baseline (fp32, sw_batch 4, constant, invert 14 channels)",
            f"{s['baseline']['median_seconds']:.1f}",
            f"{s['baseline']['median_peak_rss_mb'] / 1024:.2f}",
            "1.00 / 1.00",
            command,
        ],
        [
            "`unetr predict` (defaults)",
            f"{s['unetr']['median_seconds']:.1f}",
            f"{s['unetr']['median_peak_rss_mb'] / 1024:.2f}",
            f"**{ratios['time']:.2f} / {ratios['peak_rss']:.2f}**",
            command,
        ],
    ]
    timing = _table(
        ["pipeline (512x512x200 CT, standard UNETR)", "wall s", "peak RSS GB", "ratio time / RSS", "command"],
        rows,
    )
    labels = {
        "unetr_vs_baseline": "unetr defaults vs baseline",
        "unetr_reference_settings_vs_baseline": (
            "unetr with the baseline's settings (`--mode constant --no-amp`) vs baseline"
        ),
        "unetr_bf16_vs_fp32": "unetr bf16 vs unetr fp32 (`--no-amp`)",
        "unetr_labels_vs_probabilities": "unetr `--resample labels` vs default (probabilities)",
        "unetr_vs_truth": "unetr defaults vs phantom truth",
        "unetr_fp32_vs_truth": "unetr fp32 vs phantom truth",
        "unetr_labels_vs_truth": "unetr `--resample labels` vs phantom truth",
        "unetr_reference_settings_vs_truth": "unetr with the baseline's settings vs phantom truth",
        "baseline_vs_truth": "baseline vs phantom truth",
    }
    agreement = _table(
        ["label maps compared (trained demo model, same scan)", "mean organ Dice", "command"],
        [[labels.get(k, k), f"{v:.4f}", command] for k, v in agree.items()],
    )
    return timing + "\n\n" + agreement


def options_table() -> str:
    result = _load("options")
    if not result:
        return "(run bench_options.py)"
    command = f"`python benchmarks/bench_options.py --repeats {result['repeats']}`"
    base = next(r["seconds_per_window"] for r in result["rows"] if r["variant"] == "fp32, batch 1")
    rows = [
        [
            r["variant"],
            f"{r['seconds_per_window']:.3f}",
            f"{r['seconds_per_window'] / base:.2f}",
            f"{r['argmax_agreement']:.4f}",
            command,
        ]
        for r in result["rows"]
    ]
    return _table(
        ["variant (one 96³ window, standard UNETR)", "s/window", "vs fp32", "argmax = fp32", "command"], rows
    )


def window_loop_table() -> str:
    result = _load("window_loop")
    if not result:
        return "(run bench_window_loop.py)"
    command = "`python benchmarks/bench_window_loop.py`"
    rows = [
        [
            r["precision"],
            f"{r['seconds_per_window']:.3f}",
            f"{r['achieved_gflops']:.0f}",
            f"{r['gemm_ceiling_gflops']:.0f}",
            f"{r['fraction_of_ceiling']:.2f}",
            command,
        ]
        for r in result["rows"]
    ]
    head = f"{result['gflop_per_window']:.1f} GFLOP per window."
    table = _table(
        ["precision", "s/window", "achieved GFLOP/s", "GEMM ceiling GFLOP/s", "fraction", "command"], rows
    )
    return head + "\n\n" + table


def train_table() -> str:
    rows = []
    for precision in ("bf16", "fp32"):
        result = _load(f"train_{precision}")
        if not result:
            continue
        flag = "" if precision == "bf16" else " --no-amp"
        rows.append(
            [
                precision,
                f"{result['seconds_per_step']:.2f}",
                f"{result['pure_seconds_per_step']:.2f}",
                f"**{result['ratio']:.2f}**",
                f"{result['peak_rss_mb'] / 1024:.2f}",
                f"`python benchmarks/bench_train.py{flag}`",
            ]
        )
    header = ["precision", "unetr train s/step", "pure fwd+bwd+opt s/step", "ratio", "peak RSS GB", "command"]
    return _table(header, rows) if rows else "(run bench_train.py)"


def scaling_table() -> str:
    result = _load("scaling")
    if not result:
        return "(run bench_scaling.py)"
    slices = " ".join(str(r["slices"]) for r in result["rows"])
    command = f"`python benchmarks/bench_scaling.py --slices {slices}`"
    rows = [
        [f"512x512x{r['slices']}", f"{r['seconds']:.1f}", f"{r['peak_rss_mb'] / 1024:.2f}", command]
        for r in result["rows"]
    ]
    fit = result["rss_fit_mb"]
    tail = (
        f"Peak RSS ≈ {fit['intercept']:.0f} MB + {fit['per_slice']:.2f} MB per 512x512 slice: the largest "
        f"scan that fits in 8 GB is about 512x512x{result['largest_slices_in_8gb']}."
    )
    return _table(["scan", "wall s", "peak RSS GB", "command"], rows) + "\n\n" + tail


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    sections = [
        ("Machine", machine()),
        ("Predict: unetr vs the reference-style pipeline", predict_table()),
        ("Inference options", options_table()),
        ("Window-loop efficiency", window_loop_table()),
        ("Training step", train_table()),
        ("Scaling with scan size (unetr predict, defaults)", scaling_table()),
    ]
    print("\n\n".join(f"### {title}\n\n{body}" for title, body in sections))


if __name__ == "__main__":
    main()
