"""What an adult's abdominal organs are like, as plausibility bounds for the report's flags: on which side of
the body's midline a lateral organ lies, whether it is one piece, and volume and mean-HU ranges.

The ranges are deliberately wide: they bound what an adult abdomen can plausibly hold (normal variation plus
common disease such as splenomegaly, hepatomegaly, steatosis, aneurysm), so a flag means "look at this", not
"abnormal". Normal values they were widened from:

- Liver: CT volumetry of adults, about 1,000-2,000 ml (Heinemann et al., "Standard liver volume in the
  Caucasian population", Liver Transpl Surg 1999; Urata et al., Hepatology 1995). Unenhanced 50-65 HU,
  lower with steatosis (below 0 HU when severe); portal venous phase about 100-130 HU.
- Spleen: CT, mean about 215 ml, range about 107-314 ml (Prassopoulos et al., "Determination of normal
  splenic volume on computed tomography in relation to age, gender and body habitus", Eur Radiol 1997);
  splenomegaly reaches 1,000-2,000 ml.
- Kidneys: MRI, about 100-250 ml each (Cheong et al., "Normal values for renal length and volume as measured
  by magnetic resonance imaging", Clin J Am Soc Nephrol 2007). Nephrographic phase 150-200 HU, excretory
  phase higher (contrast in the collecting system).
- Pancreas: adults about 70 ml, less with age (Saisho et al., "Pancreas volumes in humans from birth to age
  one hundred", Clin Anat 2007); fatty replacement lowers its HU.
- Gallbladder: fasting volume about 15-60 ml (Everson et al., "Gallbladder function in the human female",
  Gastroenterology 1980); bile 0-20 HU, sludge and vicarious excretion up to about 50 HU.
- Adrenal glands: about 4-5 g each (Gray's Anatomy); lipid-rich adenomas below 10 HU unenhanced.
- Aorta: abdominal diameter about 2 cm, aneurysm from 3 cm (Chaikof et al., Society for Vascular Surgery
  practice guidelines, J Vasc Surg 2018); unenhanced blood 35-50 HU, arterial phase 200-400 HU and more.
- Portal vein: diameter up to about 13 mm (Weinreb et al., "Portal vein measurements by real-time
  sonography", AJR 1982).
- Tubular organs (aorta, inferior vena cava, esophagus, veins) have a volume that depends on how much of them
  the scan covers; their bounds follow from the diameters above over a 40 cm abdominal scan.
- HU of blood pool and organs by phase: standard body CT texts (e.g. Lee, Sagel, Stanley, Heiken: Computed
  Body Tomography with MRI Correlation).

The contrast phase is judged from the aorta's mean HU (below 100 HU: unenhanced).
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRAST_AORTA_HU = 100.0


@dataclass(frozen=True)
class OrganNorm:
    """Plausibility bounds of one organ.

    side: "right" or "left" for organs on one side of the midline (for the liver, stomach and spleen: mostly).
    one_piece: a healthy organ is one connected piece.
    crosses_scan: routinely extends beyond an abdominal scan (touching its ends is no cut worth a flag).
    """

    side: str | None
    one_piece: bool
    volume_ml: tuple[float, float]
    hu_unenhanced: tuple[float, float]
    hu_contrast: tuple[float, float]
    crosses_scan: bool = False


NORMS: dict[int, OrganNorm] = {
    1: OrganNorm("left", True, (40, 2000), (20, 80), (60, 260)),  # spleen
    2: OrganNorm("right", True, (20, 500), (10, 70), (50, 600)),  # right kidney
    3: OrganNorm("left", True, (20, 500), (10, 70), (50, 600)),  # left kidney
    4: OrganNorm("right", True, (2, 250), (-30, 80), (-30, 80)),  # gallbladder
    5: OrganNorm(None, True, (1, 150), (-250, 120), (-250, 150), crosses_scan=True),  # esophagus
    6: OrganNorm("right", True, (600, 4000), (-40, 90), (20, 220)),  # liver
    7: OrganNorm("left", True, (30, 3000), (-500, 200), (-500, 250)),  # stomach (with gas and food)
    8: OrganNorm(None, True, (5, 800), (15, 80), (80, 700), crosses_scan=True),  # aorta
    9: OrganNorm(None, True, (5, 500), (15, 80), (40, 400), crosses_scan=True),  # inferior vena cava
    10: OrganNorm(None, False, (2, 120), (15, 80), (50, 400)),  # portal and splenic veins (a branching tree)
    11: OrganNorm(None, True, (15, 250), (-60, 80), (10, 250)),  # pancreas
    12: OrganNorm("right", True, (0.5, 30), (-80, 80), (-60, 200)),  # right adrenal gland
    13: OrganNorm("left", True, (0.5, 30), (-80, 80), (-60, 200)),  # left adrenal gland
}

ONE_PIECE_ORGANS = frozenset(label for label, norm in NORMS.items() if norm.one_piece)


def hu_range(label: int, phase: str) -> tuple[float, float]:
    """The plausible mean-HU range of an organ in a contrast phase ("unenhanced", "contrast" or "unknown":
    the union of both)."""
    norm = NORMS[label]
    if phase == "unenhanced":
        return norm.hu_unenhanced
    if phase == "contrast":
        return norm.hu_contrast
    return (
        min(norm.hu_unenhanced[0], norm.hu_contrast[0]),
        max(norm.hu_unenhanced[1], norm.hu_contrast[1]),
    )
