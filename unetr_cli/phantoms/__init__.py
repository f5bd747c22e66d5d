"""Synthetic abdominal CT phantoms in the BTCV layout (`generator`, over the patient model in `anatomy`), and
`demo`: the whole job on them, start to finish."""

from unetr_cli.phantoms.generator import make_phantom, scanner_affine, write_dataset

__all__ = ["make_phantom", "scanner_affine", "write_dataset"]
