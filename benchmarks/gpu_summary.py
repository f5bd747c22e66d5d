"""The summary table of `gpu_check.sh`: test counts, and each GPU benchmark number against its target, from
what that call measured (the JUnit files and the gpu_*.json copies in its RESULTS_DIR).

python benchmarks/gpu_summary.py RESULTS_DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def tests(path: Path) -> str:
    if not path.exists():
        return "did not run"
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"


def load(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def row(what: str, value, target: str, ok: bool | None) -> str:
    mark = "" if ok is None else ("yes" if ok else "NO")
    return f"| {what} | {value} | {target} | {mark} |"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/.data/gpu_check")
    predict, train = load(out, "gpu_predict"), load(out, "gpu_train")
    gpu = (predict or train).get("machine", {}).get("gpu")
    lines = [f"GPU: {gpu}", "", "| what | measured | target | met |", "| --- | --- | --- | --- |"]
    lines.append(row("gpu tests", tests(out / "gpu_tests.xml"), "all pass", None))
    lines.append(row("rest of the suite (CPU)", tests(out / "cpu_suite.xml"), "all pass", None))
    log = out / "gpu_tests.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith(("demo on CUDA:", "resume on CUDA:")):
            lines.append(row(line.split(":")[0], line.split(":", 1)[1].strip(), "", None))
    checks = [
        (
            predict,
            "unetr_seconds_per_scan_in_batch",
            "predict, s per scan in a batch of 10",
            "<= 3",
            lambda v: v <= 3,
        ),
        (
            predict,
            "unetr_single_wall_seconds",
            "predict, one invocation incl. start-up (s)",
            "<= 8",
            lambda v: v <= 8,
        ),
        (predict, "baseline_wall_seconds", "reference-style GPU pipeline (s)", "", None),
        (predict, "ratio_per_scan_to_baseline", "per scan / reference-style", "<= 0.1", lambda v: v <= 0.1),
        (
            predict.get("peak_gpu_memory_gb", {}),
            "unetr_batch",
            "peak GPU memory, predict (GB)",
            "<= 8",
            lambda v: v <= 8,
        ),
        (
            predict.get("agreement_mean_organ_dice_gpu_vs_cpu", {}),
            "fp32_constant",
            "labels GPU vs CPU (fp32, constant), mean organ Dice",
            ">= 0.999",
            lambda v: v >= 0.999,
        ),
        (train, "unetr_ratio_to_pure_bf16", "train, s/step / pure bf16 step", "<= 1.15", lambda v: v <= 1.15),
        (
            train,
            "crops_per_second_ratio",
            "train, crops/s / reference-style loop",
            ">= 2.5",
            lambda v: v >= 2.5,
        ),
        (train, "demo_seconds_to_dice_0_75", "demo preset, s to validation Dice 0.75", "", None),
    ]
    for numbers, key, what, target, met in checks:
        value = numbers.get(key)
        if value is None:
            lines.append(row(what, "not measured", target, None))
        else:
            lines.append(row(what, f"{value:.3g}", target, met(value) if met else None))
    for key, what in (
        ("unetr_single_breakdown", "one predict invocation"),
        ("platform_floors", "what any process pays first"),
        ("unetr_batch_stage_medians", "per scan in the batch"),
    ):
        if predict.get(key):
            parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in predict[key].items())
            lines.append(f"\n{what}, seconds: {parts}")
    if train.get("pure_queued_seconds_per_step"):
        pure, queued = train["pure_seconds_per_step"]["bf16"], train["pure_queued_seconds_per_step"]["bf16"]
        demo = train.get("demo_preset_pure_step") or {"seconds": float("nan"), "queued_seconds": float("nan")}
        lines.append(
            f"\npure bf16 step {pure:.3f} s, {queued:.3f} s of it queueing on the host; "
            f"demo preset {demo['seconds']:.3f} s, {demo['queued_seconds']:.3f} s"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
