"""Per-window speed of the inference options on the standard UNETR, each with an accuracy check.

Every variant runs the same real phantom windows (96^3, preprocessed as for prediction); time is the median
over repeats, and accuracy is the share of voxels whose argmax equals fp32 eager's on those windows.

    python benchmarks/bench_options.py [--repeats 5] [--skip-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import time

from common import benchmark_scan, median, standard_checkpoint, write_result


def _windows(settings, count: int):
    import torch

    from unetr_cli.inference.scan import preprocess_scan
    from unetr_cli.volumes import load_volume

    image, info = load_volume(benchmark_scan(200))
    volume = preprocess_scan(image, info.affine, settings).as_tensor()
    size, (_, x, y, z) = settings.model.img_size, volume.shape
    starts = [
        (x // 2 - size // 2 + dx, y // 2 - size // 2, z // 2 - size // 2 + dz)
        for dx in (-40, 0, 40)
        for dz in (-50, 0, 50)
    ][:count]
    return torch.stack([volume[:, a : a + size, b : b + size, c : c + size] for a, b, c in starts])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()

    import torch

    from unetr_cli.checkpoint import read_weights
    from unetr_cli.model import for_inference, model_with_weights
    from unetr_cli.settings import Settings

    weights = read_weights(standard_checkpoint())
    settings = Settings.from_dict(weights.settings)
    model = model_with_weights(settings.model, weights.state_dict)
    windows = _windows(settings, 4)
    bf16 = torch.bfloat16

    def fresh():
        return model_with_weights(settings.model, weights.state_dict)

    def eager(batch: int, dtype=None, channels_last: bool = False, module=None):
        net = module if module is not None else model
        if channels_last:
            net = (module if module is not None else fresh()).to(memory_format=torch.channels_last_3d)

        def run(x):
            outputs = []
            for chunk in x.split(batch):
                if channels_last:
                    chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
                context = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
                with torch.no_grad(), context:
                    outputs.append(net(chunk).float())
            return torch.cat(outputs)

        return run

    variants = {
        "fp32, batch 1": eager(1),
        "fp32, batch 4": eager(4),
        "fp32, channels_last_3d": eager(1, channels_last=True),
        "bf16 autocast, batch 1": eager(1, bf16),
        "bf16 autocast, batch 4": eager(4, bf16),
        "bf16 autocast, channels_last_3d, batch 1": eager(1, bf16, True),
        "bf16 autocast, channels_last_3d, batch 2": eager(2, bf16, True),
        # unetr's default on CPU: InstanceNorm as the equivalent GroupNorm (model.for_inference)
        "GroupNorm swap, fp32": eager(1, module=for_inference(fresh())),
        "GroupNorm swap, bf16 autocast, channels_last_3d": eager(1, bf16, True, for_inference(fresh())),
    }
    scripted = torch.jit.script(fresh())
    variants["TorchScript, bf16 autocast"] = eager(1, bf16, module=scripted)
    if not args.skip_compile:
        compiled = torch.compile(fresh())
        variants["torch.compile, bf16 autocast"] = eager(1, bf16, module=compiled)
    with contextlib.suppress(ImportError):
        variants["ONNX Runtime fp32"] = _onnxruntime(model, settings)

    reference = eager(1)(windows).argmax(1)
    rows = []
    for name, run in variants.items():
        run(windows[:1])  # warm-up (and compilation)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            out = run(windows)
            times.append((time.perf_counter() - started) / len(windows))
        agreement = float((out.argmax(1) == reference).float().mean())
        rows.append({"variant": name, "seconds_per_window": median(times), "argmax_agreement": agreement})
        print(f"{name:45s} {median(times):6.3f} s/window  argmax agreement {agreement:.4f}", flush=True)
    fastest = min(rows, key=lambda r: r["seconds_per_window"])
    print(f"fastest: {fastest['variant']}")
    write_result("options", {"rows": rows, "repeats": args.repeats, "windows": len(windows)})


def _onnxruntime(model, settings):
    import tempfile

    import onnxruntime
    import torch

    path = tempfile.mkdtemp() + "/unetr.onnx"
    example = torch.zeros(1, 1, *(settings.model.img_size,) * 3)
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        dynamic_axes={"image": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.cat([torch.from_numpy(session.run(None, {"image": c.numpy()})[0]) for c in x.split(1)])

    return run


if __name__ == "__main__":
    main()
