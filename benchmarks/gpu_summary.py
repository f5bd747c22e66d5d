"""The summary table of `gpu_check.sh`: test counts, and each GPU benchmark number against its target.

python benchmarks/gpu_summary.py RESULTS_DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def tests(path: Path) -> str:
    if not path.exists():
        return "did not run"
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def row(what: str, value, target: str, ok: bool | None) -> str:
    mark = "" if ok is None else ("yes" if ok else "NO")
    return f"| {what} | {value} | {target} | {mark} |"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/.data/gpu_check")
    predict, train = load("gpu_predict"), load("gpu_train")
    gpu = (predict or train).get("machine", {}).get("gpu")
    lines = [f"GPU: {gpu}", "", "| what | measured | target | met |", "| --- | --- | --- | --- |"]
    lines.append(row("gpu tests", tests(out / "gpu_tests.xml"), "all pass", None))
    lines.append(row("rest of the suite (CPU)", tests(out / "cpu_suite.xml"), "all pass", None))
    log = out / "gpu_tests.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith(("demo on CUDA:", "resume on CUDA:")):
            lines.append(row(line.split(":")[0], line.split(":", 1)[1].strip(), "", None))
    if predict:
        per_scan, single = predict["unetr_seconds_per_scan_in_batch"], predict["unetr_single_wall_seconds"]
        peak = predict["peak_gpu_memory_gb"]["unetr_batch"]
        agree = predict["agreement_mean_organ_dice_gpu_vs_cpu"]["fp32_constant"]
        ratio = predict["ratio_per_scan_to_baseline"]
        lines += [
            row("predict, s per scan in a batch", f"{per_scan:.2f}", "<= 3", per_scan <= 3),
            row("predict, one invocation incl. start-up (s)", f"{single:.1f}", "<= 8", single <= 8),
            row("reference-style GPU pipeline (s)", f"{predict['baseline_wall_seconds']:.1f}", "", None),
            row("per scan / reference-style", f"{ratio:.3f}", "<= 0.1", ratio <= 0.1),
            row("peak GPU memory, predict (GB)", f"{peak:.2f}", "<= 8", peak <= 8),
            row(
                "labels GPU vs CPU (fp32, constant), mean organ Dice",
                f"{agree:.4f}",
                ">= 0.999",
                agree >= 0.999,
            ),
        ]
    if train:
        ratio, crops = train["unetr_ratio_to_pure_bf16"], train["crops_per_second_ratio"]
        dice_time = train["demo_seconds_to_dice_0_75"]
        lines += [
            row("train, s/step vs pure bf16 step", f"{ratio:.2f}x", "<= 1.15x", ratio <= 1.15),
            row("train, crops/s vs reference-style loop", f"{crops:.2f}x", ">= 2.5x", crops >= 2.5),
            row("demo preset, s to validation Dice 0.75", dice_time, "", None),
        ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
