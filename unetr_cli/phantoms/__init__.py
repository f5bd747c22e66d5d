"""Synthetic abdominal CT phantoms in the BTCV layout (`generator`, over the patient model in `anatomy`;
`dicom_series` writes them as DICOM)."""

from unetr_cli.phantoms.generator import make_phantom, scanner_affine, write_dataset

__all__ = ["make_phantom", "scanner_affine", "write_dataset"]
