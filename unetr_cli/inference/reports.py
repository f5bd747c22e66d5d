"""What travels with a label map: label sidecars, organ statistics, and a preview picture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from unetr_cli import __version__
from unetr_cli.files import atomic_output, write_text
from unetr_cli.labels import label_colour, label_names, slicer_colour_table


def output_stem(path: Path) -> Path:
    """`out/seg.nii.gz` -> `out/seg` (likewise .seg.nrrd, .nrrd, .mha, .dcm, ...): the base name for sidecar
    files."""
    from unetr_cli.volumes import OUTPUT_FORMATS, SCAN_SUFFIXES

    name = path.name
    for suffix in sorted({*SCAN_SUFFIXES, *OUTPUT_FORMATS.values()}, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)])
    return path.with_suffix("")


def write_label_sidecars(seg_path: Path, num_classes: int, provenance: dict[str, Any]) -> list[Path]:
    """`<stem>.json` (label ids and names, plus how the map was made) and a 3D Slicer colour table."""
    stem = output_stem(seg_path)
    names = label_names(num_classes)
    sidecar = {
        "written_by": f"unetr {__version__}",
        "labels": {str(k): v for k, v in names.items()},
        "colors": {str(k): list(label_colour(k)) for k in names},
        **provenance,
    }
    json_path, table_path = stem.with_suffix(".json"), stem.with_suffix(".ctbl")
    write_text(json_path, json.dumps(sidecar, indent=2) + "\n")
    write_text(table_path, slicer_colour_table(num_classes))
    return [json_path, table_path]


def written_by_unetr(seg_path: Path) -> bool:
    """Whether unetr wrote this label map's unit: its `<stem>.json` sidecar is unetr's."""
    try:
        sidecar = json.loads(output_stem(seg_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(sidecar, dict)
        and "labels" in sidecar
        and ("written_by" in sidecar or "settings" in sidecar)
    )


def write_preview(
    seg_path: Path,
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    num_classes: int,
    title: str = "",
) -> Path:
    """`<stem>_preview.png`: axial, coronal and sagittal slices through the organs, labels overlaid.

    The arrays are reoriented to RAS first so every scan is shown the same way (radiological convention:
    patient right on the left of the axial view, anterior up, superior up), with true physical aspect ratios.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ras_image, ras_labels, spacing = _to_ras(image, labels, affine)
    organ_voxels = np.argwhere(ras_labels > 0)
    centre = (
        organ_voxels.mean(axis=0).round().astype(int)
        if len(organ_voxels)
        else np.array(ras_labels.shape) // 2
    )
    colours = ListedColormap([np.array(label_colour(k)) / 255.0 for k in range(num_classes)])
    window = np.clip((ras_image + 160.0) / 400.0, 0, 1)  # abdominal window, W 400 L 40
    views = [
        (
            "axial",
            window[:, :, centre[2]].T[::-1, ::-1],
            ras_labels[:, :, centre[2]].T[::-1, ::-1],
            spacing[1] / spacing[0],
        ),
        (
            "coronal",
            window[:, centre[1], :].T[::-1, ::-1],
            ras_labels[:, centre[1], :].T[::-1, ::-1],
            spacing[2] / spacing[0],
        ),
        (
            "sagittal",
            window[centre[0], :, :].T[::-1, :],
            ras_labels[centre[0], :, :].T[::-1, :],
            spacing[2] / spacing[1],
        ),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.6), facecolor="black")
    for axis, (name, gray, overlay, aspect) in zip(axes, views, strict=True):
        axis.imshow(gray, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="bilinear")
        axis.imshow(
            np.ma.masked_equal(overlay, 0),
            cmap=colours,
            vmin=0,
            vmax=num_classes - 1,
            alpha=0.5,
            aspect=aspect,
            interpolation="nearest",
        )
        axis.set_title(name, color="white")
        axis.axis("off")
    present = [k for k in range(1, num_classes) if np.any(ras_labels == k)]
    names = label_names(num_classes)
    figure.legend(
        handles=[Patch(color=np.array(label_colour(k)) / 255.0, label=names[k]) for k in present],
        loc="lower center",
        ncol=min(7, max(1, len(present))),
        fontsize=8,
        frameon=False,
        labelcolor="white",
    )
    figure.suptitle(title, color="white")
    figure.tight_layout(rect=(0, 0.07, 1, 0.95))
    path = output_stem(seg_path)
    path = path.with_name(path.name + "_preview.png")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, dpi=80, facecolor="black")
    plt.close(figure)
    return path


def _to_ras(image: np.ndarray, labels: np.ndarray, affine: np.ndarray):
    """Both arrays reordered and flipped to RAS voxel order, and the voxel spacing in that order."""
    import nibabel as nib

    transform = nib.orientations.ornt_transform(
        nib.io_orientation(affine), nib.orientations.axcodes2ornt("RAS")
    )
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[transform[:, 0].astype(int).argsort()]
    return (
        nib.orientations.apply_orientation(image, transform),
        nib.orientations.apply_orientation(labels, transform),
        spacing,
    )
