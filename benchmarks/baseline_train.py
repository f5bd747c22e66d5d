"""A reference-style training loop, written from the published BTCV recipe and the MONAI tutorials.

The reference trainer's data path: MONAI transforms on the CPU (load, RAS, 1.5 x 1.5 x 2.0 mm, HU window,
body crop cached by CacheDataset; RandCropByPosNegLabeld 4 x 96^3, flips, rot90, intensity scale/shift per
step), a MONAI DataLoader with 4 worker processes, fp16 autocast with GradScaler, AdamW, DiceCELoss. This is
what `unetr train` is measured against on a GPU. Prints one JSON line per epoch and the peak GPU memory.

    python benchmarks/baseline_train.py DATA_DIR --checkpoint CKPT [--epochs 6] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def transforms(settings):
    from monai import transforms as T

    keys, data, roi = ("image", "label"), settings.data, (settings.model.img_size,) * 3
    return T.Compose(
        [
            T.LoadImaged(keys=keys),
            T.EnsureChannelFirstd(keys=keys),
            T.Orientationd(keys=keys, axcodes="RAS"),
            T.Spacingd(keys=keys, pixdim=data.spacing, mode=("bilinear", "nearest")),
            T.ScaleIntensityRanged(
                keys="image", a_min=data.hu_min, a_max=data.hu_max, b_min=0.0, b_max=1.0, clip=True
            ),
            T.CropForegroundd(keys=keys, source_key="image"),
            T.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=roi,
                pos=1,
                neg=1,
                num_samples=4,
                image_key="image",
                image_threshold=0,
            ),
            T.RandFlipd(keys=keys, prob=0.2, spatial_axis=0),
            T.RandFlipd(keys=keys, prob=0.2, spatial_axis=1),
            T.RandFlipd(keys=keys, prob=0.2, spatial_axis=2),
            T.RandRotate90d(keys=keys, prob=0.2, max_k=3),
            T.RandScaleIntensityd(keys="image", factors=0.1, prob=0.1),
            T.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.1),
            T.ToTensord(keys=keys),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir", type=Path)
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a unetr checkpoint (architecture inside)"
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss

    from unetr_cli.checkpoint import read_weights
    from unetr_cli.model import model_with_weights
    from unetr_cli.settings import Settings

    weights = read_weights(args.checkpoint)
    settings = Settings.from_dict(weights.settings)
    device = torch.device(args.device)
    model = model_with_weights(settings.model, weights.state_dict).to(device).train()
    listing = json.loads((args.data_dir / "dataset_0.json").read_text())
    cases = [
        {k: str(args.data_dir / v) for k, v in e.items() if k in ("image", "label")}
        for e in listing["training"]
    ]
    dataset = CacheDataset(
        cases, transforms(settings), cache_rate=1.0, num_workers=args.workers, progress=False
    )
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=args.workers, pin_memory=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    for epoch in range(args.epochs):
        started, steps = time.perf_counter(), 0
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(
                device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16
            ):
                logits = model(image)
            loss = loss_fn(logits.float(), label)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        print(
            json.dumps({"epoch": epoch + 1, "steps": steps, "seconds": seconds, "loss": float(loss)}),
            flush=True,
        )
    peak = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else 0
    print(json.dumps({"peak_gpu_memory_bytes": peak}))


if __name__ == "__main__":
    main()
