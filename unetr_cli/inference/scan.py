"""One scan, end to end: read it, preprocess it like validation, segment it, and map the labels back onto
the scan's own grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetr_cli.inference.resample import SLAB, resample_labels
from unetr_cli.inference.segmenter import Segmenter
from unetr_cli.settings import Settings


@dataclass
class ScanPrediction:
    """A label map on the scan's own grid, with the scan it belongs to."""

    labels: np.ndarray
    image: np.ndarray
    nifti: object
    path: Path


def preprocess_scan(image: np.ndarray, affine: np.ndarray, settings: Settings):
    """Validation preprocessing of an in-memory scan: returns the model-grid MetaTensor (1, X, Y, Z)."""
    from monai import transforms as T
    from monai.data import MetaTensor

    from unetr_cli.data import to_model_space

    tensor = MetaTensor(  # in its stored dtype: reorientation copies it, resampling makes it float32
        torch.from_numpy(np.ascontiguousarray(image))[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )
    return T.Compose(to_model_space(settings, keys=("image",)))({"image": tensor})["image"]


def class_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax over the class axis of (C, X, Y, Z) scores as float16, a slab at a time (no full-size fp32
    temporary besides the scores themselves)."""
    probabilities = np.empty(tuple(logits.shape), dtype=np.float16)
    for start in range(0, logits.shape[1], SLAB):
        block = torch.softmax(logits[:, start : start + SLAB].float(), dim=0)
        probabilities[:, start : start + SLAB] = block.to(torch.float16).numpy()
    return probabilities


def predict_scan(path: str | Path, segmenter: Segmenter) -> ScanPrediction:
    """Segment one scan file and return the label map on the scan's own grid (shape and affine)."""
    from unetr_cli.volumes import load_volume, read_info

    nifti, _ = read_info(path)
    image, info = load_volume(path)
    model_input = preprocess_scan(image, info.affine, segmenter.settings)
    model_affine = model_input.affine.numpy().astype(np.float64)
    logits = segmenter.logits(model_input.as_tensor()[None])[0]
    del model_input
    labels = torch.argmax(logits, dim=0).to(torch.uint8).numpy()
    probabilities = None
    if segmenter.settings.inference.resample == "probabilities":
        probabilities = class_probabilities(logits)
    del logits
    native = resample_labels(labels, model_affine, info.shape, info.affine, probabilities)
    return ScanPrediction(native, image, nifti, Path(path))
