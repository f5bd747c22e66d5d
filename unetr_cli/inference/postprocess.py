"""Connected-component post-processing of label maps: keep each one-piece organ's largest component, drop
components below a size. Off by default; `unetr evaluate` scores with and without it so the choice is made
by measurement.

Components come from scipy.ndimage.label (26-connected, each organ in its own bounding box), the same
operation as MONAI's KeepLargestConnectedComponent and nnU-Net's post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unetr_cli.organ_norms import ONE_PIECE_ORGANS

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class PostProcessing:
    """What to remove: every component of a one-piece organ but its largest, and components below
    `min_size_ml` (any organ)."""

    keep_largest: bool = False
    min_size_ml: float | None = None

    @classmethod
    def of(cls, inference) -> PostProcessing:
        """From the inference settings (`keep_largest`, `min_size_ml`)."""
        return cls(inference.keep_largest, inference.min_size_ml)

    def __bool__(self) -> bool:
        return self.keep_largest or bool(self.min_size_ml)

    def describe(self) -> str:
        parts = (["largest component per one-piece organ"] if self.keep_largest else []) + (
            [f"components under {self.min_size_ml:g} ml removed"] if self.min_size_ml else []
        )
        return ", ".join(parts) or "none"


def organ_components(labels: np.ndarray, label: int) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(bounding box, component ids in the box: 0 outside the organ, 1.. by decreasing size) of one organ;
    None if the organ is absent."""
    from scipy import ndimage

    box = ndimage.find_objects((labels == label).astype(np.uint8))
    if not box or box[0] is None:
        return None
    region = box[0]
    components, count = ndimage.label(labels[region] == label, structure=FULL_CONNECTIVITY)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    order = np.zeros(count + 1, dtype=np.int32)
    order[1 + np.argsort(-sizes, kind="stable")] = np.arange(1, count + 1)
    return region, order[components]


def postprocess(
    labels: np.ndarray, voxel_ml: float, settings: PostProcessing, num_classes: int
) -> tuple[np.ndarray, dict[int, int]]:
    """A copy of `labels` with the components `settings` names set to background, and the voxels removed per
    organ. Labels pass through untouched when post-processing is off."""
    if not settings:
        return labels, {}
    result = labels.copy()
    removed: dict[int, int] = {}
    min_voxels = (settings.min_size_ml or 0.0) / voxel_ml
    for label in range(1, num_classes):
        found = organ_components(labels, label)
        if found is None:
            continue
        region, ranked = found
        sizes = np.bincount(ranked.ravel())
        drop = np.zeros(len(sizes), dtype=bool)
        drop[1:] = sizes[1:] < min_voxels
        if settings.keep_largest and label in ONE_PIECE_ORGANS:
            drop[2:] = True
        if drop.any():
            view = result[region]
            view[drop[ranked]] = 0
            removed[label] = int(sizes[drop].sum())
    return result, removed
