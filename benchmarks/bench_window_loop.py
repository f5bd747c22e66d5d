"""Achieved GFLOP/s inside the sliding-window loop against the GEMM ceiling measured in the same run.

FLOPs per window are counted with torch's FlopCounterMode on the standard UNETR; the loop is `unetr`'s own
(Segmenter on the preprocessed 512 x 512 x 200 phantom); the ceiling is a large square matmul per precision.

    python benchmarks/bench_window_loop.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time

from common import benchmark_scan, median, standard_checkpoint, write_result


def gemm_ceiling(dtype, size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a size^3 matmul in `dtype` (median of repeats)."""
    import torch

    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * size**3 / median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unetr_cli.checkpoint import read_weights
    from unetr_cli.inference import Segmenter
    from unetr_cli.inference.scan import preprocess_scan
    from unetr_cli.model import model_with_weights
    from unetr_cli.settings import Settings
    from unetr_cli.volumes import load_volume

    weights = read_weights(standard_checkpoint())
    settings = Settings.from_dict(weights.settings)
    size = settings.model.img_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model_with_weights(settings.model, weights.state_dict)(torch.zeros(1, 1, size, size, size))
    gflop_per_window = counter.get_total_flops() / 1e9
    image, info = load_volume(benchmark_scan(200))
    volume = preprocess_scan(image, info.affine, settings).as_tensor()[None]
    overlap = settings.inference.infer_overlap
    step = max(1, int(size * (1 - overlap)))
    windows = math.prod(max(1, math.ceil((d - size) / step) + 1) for d in volume.shape[2:])

    rows = []
    for precision, amp, dtype in (("fp32", False, torch.float32), ("bf16", True, torch.bfloat16)):
        ceiling = gemm_ceiling(dtype)
        run_settings = settings.model_copy(deep=True)
        run_settings.inference.amp = amp
        segmenter = Segmenter(
            model_with_weights(settings.model, weights.state_dict), run_settings, torch.device("cpu")
        )
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            segmenter.logits(volume)
            times.append(time.perf_counter() - started)
        seconds = median(times)
        achieved = windows * gflop_per_window / seconds
        rows.append(
            {
                "precision": precision,
                "windows": windows,
                "loop_seconds": seconds,
                "seconds_per_window": seconds / windows,
                "achieved_gflops": achieved,
                "gemm_ceiling_gflops": ceiling,
                "fraction_of_ceiling": achieved / ceiling,
            }
        )
        print(
            f"{precision}: {windows} windows in {seconds:.1f} s ({seconds / windows:.3f} s/window), "
            f"{achieved:.0f} GFLOP/s = {achieved / ceiling:.2f} of the {ceiling:.0f} GFLOP/s GEMM ceiling",
            flush=True,
        )
    print(f"{gflop_per_window:.1f} GFLOPs per {size}^3 window")
    write_result("window_loop", {"gflop_per_window": gflop_per_window, "rows": rows})


if __name__ == "__main__":
    main()
