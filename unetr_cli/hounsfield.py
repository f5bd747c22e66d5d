"""Whether a scan is CT in Hounsfield units, the only input the model has learnt: an MR, a CT stored without
its rescale (raw detector values), or a derived map (perfusion, a uint8 export) gives label maps that look
like organs and mean nothing.

Two looks: the header before any voxel is read (`header_problem`: the DICOM modality and rescale type, a
stored type that cannot hold negative values) and the voxels once decoded (`value_problem`: every CT in HU has
air somewhere, around the body, in the lungs or bowel, or as the padding outside the reconstructed circle).
`--allow-non-ct` skips both.
"""

from __future__ import annotations

import numpy as np

AIR_HU = -500.0  # below fat (-100) and any tissue: only air, lung, gas or padding lie below it
ALLOW_HINT = "--allow-non-ct segments it anyway"


def header_problem(info, header) -> str | None:
    """What the header of a scan (`volumes.read_info`'s pair) says against Hounsfield units, or None."""
    if info.kind == "dicom":
        modality = str(header.slices[0].get("Modality", "")).strip()
        if modality != "CT":
            return f"its Modality is {modality or 'empty'}, not CT"
        rescale = header.rescale_type()
        if rescale not in (None, "HU"):
            return f"its RescaleType is {rescale}, not HU: the values are not Hounsfield units"
        return None
    scaled = info.kind == "nifti" and _nifti_scaled(header)
    if _unsigned(info.dtype) and not scaled:
        return (
            f"its voxels are stored as {info.dtype} without scaling, so none is below 0: "
            "no air at about -1000 HU"
        )
    return None


def value_problem(image: np.ndarray) -> str | None:
    """What the decoded voxels say against Hounsfield units, or None."""
    low, high = float(image.min()), float(image.max())
    if low == high:
        return f"every voxel is {low:g}: no image"
    if low > AIR_HU:
        return f"its lowest value is {low:g}: no air (about -1000 HU) anywhere, so not Hounsfield units"
    return None


def refusal(problem: str) -> str:
    """The line a refused scan gets after its path."""
    return f"not a CT in Hounsfield units: {problem}; {ALLOW_HINT}"


def _nifti_scaled(image) -> bool:
    """A NIfTI whose scl_slope/scl_inter map the stored values elsewhere (they may then be negative)."""
    slope = getattr(image.dataobj, "slope", 1.0)
    inter = getattr(image.dataobj, "inter", 0.0)
    return not (slope in (None, 1.0) or np.isnan(slope)) or not (inter in (None, 0.0) or np.isnan(inter))


def _unsigned(dtype: str) -> bool:
    """numpy's name (uint8) or SimpleITK's (8-bit unsigned integer) of an unsigned integer type."""
    return "unsigned" in dtype or dtype.startswith("uint")
