"""BTCV label ids, names and display colours (ids 1..13 as in the challenge)."""

from __future__ import annotations

BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

# RGB colours, close to the ones 3D Slicer and TotalSegmentator use for these organs.
BTCV_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (157, 108, 162),
    2: (185, 102, 83),
    3: (212, 126, 151),
    4: (139, 150, 98),
    5: (211, 171, 143),
    6: (221, 130, 101),
    7: (216, 132, 105),
    8: (224, 97, 76),
    9: (0, 151, 206),
    10: (0, 112, 165),
    11: (249, 180, 111),
    12: (244, 214, 49),
    13: (200, 200, 235),
}


def label_names(num_classes: int) -> dict[int, str]:
    """Names for classes 0..num_classes-1: BTCV names where they apply, `class K` beyond them."""
    return {i: BTCV_LABELS.get(i, f"class {i}") for i in range(num_classes)}


def label_colour(label: int) -> tuple[int, int, int]:
    """The display colour of a class; classes beyond BTCV get a deterministic colour of their own."""
    if label in BTCV_COLOURS:
        return BTCV_COLOURS[label]
    return ((label * 97) % 256, (label * 57 + 80) % 256, (label * 31 + 160) % 256)


def slicer_colour_table(num_classes: int) -> str:
    """A 3D Slicer colour table (`.ctbl`): `id name R G B A` per line."""
    lines = ["# unetr label colour table", f"# Number of colors: {num_classes}"]
    for label, name in label_names(num_classes).items():
        r, g, b = label_colour(label)
        lines.append(f"{label} {name.replace(' ', '_')} {r} {g} {b} {0 if label == 0 else 255}")
    return "\n".join(lines) + "\n"
