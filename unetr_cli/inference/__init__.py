"""Inference: sliding windows at model resolution (`segmenter`), back to the scan's grid (`resample`), one
scan end to end (`scan`), batches with their sidecars (`batch`, `reports`) and scoring (`evaluate`).

Library use: `predict_scan(path, Segmenter(model, settings, device))` returns the label map on the scan's
own grid.
"""

from unetr_cli.inference.scan import predict_scan
from unetr_cli.inference.segmenter import Segmenter

__all__ = ["Segmenter", "predict_scan"]
