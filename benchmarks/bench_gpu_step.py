"""Is the GPU training step launch-bound? The pure step of `bench_gpu_train.py` (forward, DiceCE, backward,
AdamW on crops already on the GPU, bf16 autocast) three ways: eager with PyTorch's default (foreach) AdamW,
eager with unetr's fused AdamW, and with the model run through CUDA graphs as `unetr train` runs it on one
GPU (`unetr_cli.training.graphs`). Per preset: seconds per step and the host's seconds to queue it (near the
step itself: the GPU waits for Python).

    python benchmarks/bench_gpu_step.py [--presets btcv demo]
"""

from __future__ import annotations

import argparse
import sys

from bench_gpu_train import pure_step_seconds
from common import write_result

VARIANTS = {"eager": {"foreach_adamw": True}, "fused_adamw": {}, "graphed": {"graphed": True}}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["btcv", "demo"])
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_gpu_step.py needs a CUDA GPU")
    result: dict = {"steps": {}}
    for preset in args.presets:
        for variant, options in VARIANTS.items():
            step = pure_step_seconds("bf16", "cuda", preset, steps=20, **options)
            result["steps"][f"{preset}_{variant}"] = step
            print(f"{preset:>6} {variant:>12}: {step['seconds']:.4f} s/step", flush=True)
    print(f"wrote {write_result('gpu_step', result)}")


if __name__ == "__main__":
    main()
