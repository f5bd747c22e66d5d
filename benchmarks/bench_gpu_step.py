"""Is the GPU training step launch-bound? The pure step (forward, DiceCE, backward, AdamW on tensors already
on the GPU, bf16 autocast) three ways: eager with the foreach AdamW (PyTorch's default), eager with the fused
AdamW (unetr's optimiser on a GPU), and with the model's forward and backward replayed as CUDA graphs
(`make_graphed_callables`, as `unetr train` does on one GPU) and the fused AdamW. Per preset: seconds per
step and the host's seconds to queue it (near the step itself: the GPU waits for Python).

    python benchmarks/bench_gpu_step.py [--presets btcv demo]
"""

from __future__ import annotations

import argparse
import sys
import time

from common import write_result


def step_seconds(preset: str, variant: str, steps: int = 20) -> dict:
    import torch

    from unetr_cli.model import build_model
    from unetr_cli.settings import SettingsSources, resolve_settings
    from unetr_cli.training.recipe import loss_for

    settings = resolve_settings(SettingsSources(preset=preset))
    crops, size = settings.data.num_samples * settings.optimisation.batch_size, settings.model.img_size
    torch.manual_seed(0)
    model = build_model(settings.model).cuda().train()
    image = torch.randn(crops, 1, size, size, size, device="cuda")
    label = torch.randint(0, settings.model.out_channels, (crops, 1, size, size, size), device="cuda")
    loss_fn = loss_for(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5, fused=variant != "eager")
    if variant == "graphed":
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            model = torch.cuda.make_graphed_callables(model, (image,))

    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            logits = model(image)
        loss_fn(logits.float(), label).backward()
        optimizer.step()

    for _ in range(5):
        one()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        one()
    queued = time.perf_counter() - began
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / steps
    return {"seconds": seconds, "queued_seconds": queued / steps, "crops": crops}


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
        for variant in ("eager", "fused_adamw", "graphed"):
            step = step_seconds(preset, variant)
            result["steps"][f"{preset}_{variant}"] = step
            print(f"{preset:>6} {variant:>12}: {step['seconds']:.4f} s/step", flush=True)
    print(f"wrote {write_result('gpu_step', result)}")


if __name__ == "__main__":
    main()
