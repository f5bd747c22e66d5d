"""A reference-style prediction pipeline, written from the published recipe and the MONAI tutorials.

MONAI transforms as in the reference validation pipeline, `sliding_window_inference` (overlap 0.5, sw_batch 4,
constant blending, fp32), softmax, then back to the original grid by inverting the transforms on the
14-channel output (`Invertd`), argmax, save. This is what `unetr predict` is measured against. With
`--device cuda` the windows run on the GPU and the inversion on the CPU, the way MONAI's tutorials do it; the
peak GPU memory is printed as a JSON line.

    python benchmarks/baseline_predict.py SCAN -o OUT --checkpoint CKPT [--device cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scan", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a unetr checkpoint (architecture inside)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import json

    import nibabel as nib
    import torch
    from monai import transforms as T
    from monai.inferers import sliding_window_inference

    from unetr_cli.checkpoint import read_weights
    from unetr_cli.model import model_with_weights
    from unetr_cli.settings import Settings

    weights = read_weights(args.checkpoint)
    settings = Settings.from_dict(weights.settings)
    device = torch.device(args.device)
    model = model_with_weights(settings.model, weights.state_dict).to(device)
    data = settings.data
    pre = T.Compose(
        [
            T.LoadImaged(keys="image"),
            T.EnsureChannelFirstd(keys="image"),
            T.Orientationd(keys="image", axcodes="RAS"),
            T.Spacingd(keys="image", pixdim=data.spacing, mode="bilinear"),
            T.ScaleIntensityRanged(
                keys="image", a_min=data.hu_min, a_max=data.hu_max, b_min=0.0, b_max=1.0, clip=True
            ),
            T.CropForegroundd(keys="image", source_key="image"),
        ]
    )
    sample = pre({"image": str(args.scan)})
    roi = (settings.model.img_size,) * 3
    with torch.no_grad():
        logits = sliding_window_inference(
            sample["image"][None].to(device), roi, 4, model, overlap=0.5, mode="constant"
        )
    sample["pred"] = torch.softmax(logits, dim=1)[0].cpu()
    post = T.Compose(
        [
            T.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            T.AsDiscreted(keys="pred", argmax=True),
        ]
    )
    labels = post(sample)["pred"][0].numpy().astype("uint8")
    source = nib.load(str(args.scan))
    nib.save(nib.Nifti1Image(labels, source.affine, source.header), str(args.output))
    if device.type == "cuda":
        print(json.dumps({"peak_gpu_memory_bytes": torch.cuda.max_memory_reserved(device)}))


if __name__ == "__main__":
    main()
