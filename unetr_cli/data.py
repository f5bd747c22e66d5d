"""The BTCV datalist, checks of every case before training, and the MONAI transforms (deterministic
preprocessing and training augmentation); `training/pipeline.py` builds the training datasets from them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_cli.errors import DataError, InputError, UsageError
from unetr_cli.settings import Settings
from unetr_cli.volumes import check_resampled_size, load_volume, read_info, scan_source

# NIfTI's world frame: passing it explicitly keeps Orientationd's meaning fixed across MONAI versions.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass
class Datalist:
    """Training and validation cases (`{"image": abs path, "label": abs path}`) from a datalist JSON."""

    path: Path
    training: list[dict]
    validation: list[dict]


def read_datalist(data_dir: Path, json_list: str, fold: int | None = None) -> Datalist:
    """Read `data_dir/json_list`; with `fold`, that fold of the training entries is the validation set."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "data folder not found" if not data_dir.exists() else "not a folder")
    path = data_dir / json_list
    if not path.is_file():
        raise InputError(path, "datalist not found")
    try:
        listing = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(path, "not valid JSON (not text)") from None
    if not isinstance(listing, dict) or not isinstance(listing.get("training"), list):
        raise InputError(path, 'has no "training" list')
    training = [_entry(path, data_dir, "training", i, e) for i, e in enumerate(listing["training"])]
    validation = [
        _entry(path, data_dir, "validation", i, e) for i, e in enumerate(listing.get("validation", []))
    ]
    if fold is not None:
        folds = sorted({e["fold"] for e in training if "fold" in e})
        if not folds:
            raise UsageError(
                f"--fold {fold}: {path} has no 'fold' fields; drop --fold to use its 'validation' list"
            )
        if fold not in folds:
            raise UsageError(f"--fold {fold}: {path} has folds {folds}")
        validation = [e for e in training if e.get("fold") == fold]
        training = [e for e in training if e.get("fold") != fold]
    if not training:
        raise InputError(path, 'the "training" list is empty')
    return Datalist(path, training, validation)


def _entry(path: Path, data_dir: Path, split: str, index: int, entry) -> dict:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
        raise InputError(path, f'entry {index} of "{split}" needs "image" and "label" paths')
    resolved = {k: str((data_dir / entry[k]).resolve()) for k in ("image", "label")}
    if "fold" in entry:
        if isinstance(entry["fold"], bool) or not isinstance(entry["fold"], int):
            raise InputError(
                path, f'entry {index} of "{split}": "fold" must be an integer, not {entry["fold"]!r}'
            )
        resolved["fold"] = entry["fold"]
    return resolved


def check_cases(
    cases: list[dict], num_classes: int, spacing, progress: Callable[[int], None] | None = None
) -> None:
    """Check every case before any training starts, and report all problems at once.

    Checks: files exist (all missing ones are listed), each is a readable, finite 3D NIfTI, image and label
    agree in shape and affine, resampled to `spacing` the case fits in memory, and labels are integers in
    0..num_classes-1.
    """
    missing = [p for case in cases for p in (case["image"], case["label"]) if not Path(p).exists()]
    if missing:
        raise DataError(f"{len(missing)} file(s) in the datalist are missing:\n" + "\n".join(missing))
    problems = []
    for done, case in enumerate(cases, start=1):
        try:
            _check_case(case, num_classes, spacing)
        except InputError as err:
            problems.append(str(err))
        if progress is not None:
            progress(done)
    if problems:
        raise DataError("\n".join(problems))


def _check_case(case: dict, num_classes: int, spacing) -> None:
    image, label = scan_source(case["image"]), scan_source(case["label"])
    _, image_info = read_info(image)
    _, label_info = read_info(label)
    if image_info.shape != label_info.shape:
        raise InputError(
            case["label"], f"shape {label_info.shape} differs from its image's {image_info.shape}"
        )
    if not np.allclose(image_info.affine, label_info.affine, atol=1e-3, rtol=1e-4):
        raise InputError(case["label"], "affine differs from its image's (they must share one voxel grid)")
    check_resampled_size(image_info, spacing, 2)  # the cached image and label
    load_volume(image)
    label, _ = load_volume(label, dtype=None)
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        raise InputError(case["label"], "has non-integer label values")
    low, high = label.min(), label.max()
    if low < 0 or high > num_classes - 1:
        raise InputError(case["label"], f"has label values {low:g}..{high:g} outside 0..{num_classes - 1}")


# --- transforms -------------------------------------------------------------------------------------------


def preprocessing(settings: Settings, keys: tuple[str, ...] = ("image", "label")) -> list:
    """The deterministic part shared by training and validation: load the scans, then `to_model_space`."""
    return [load_scans(keys), *to_model_space(settings, keys)]


def load_scans(keys: tuple[str, ...]):
    """A transform loading each key's scan (`LoadScansd` below; MONAI is imported only when one is made)."""
    from monai.transforms import MapTransform

    class LoadScansd(MapTransform):
        """Load each key's scan through unetr's one reading layer (`volumes.load_volume`: NIfTI, NRRD,
        MetaImage, DICOM series; the same checks everywhere) as a channel-first float32 MetaTensor carrying
        its RAS affine: what MONAI's LoadImaged + EnsureChannelFirstd give for NIfTI, for every format."""

        def __call__(self, data):
            import torch
            from monai.data import MetaTensor

            loaded = dict(data)
            for key in self.key_iterator(loaded):
                voxels, info = load_volume(scan_source(loaded[key]))
                meta = {"filename_or_obj": str(loaded[key])}
                affine = torch.as_tensor(info.affine, dtype=torch.float64)
                loaded[key] = MetaTensor(torch.from_numpy(voxels)[None], affine=affine, meta=meta)
            return loaded

    return LoadScansd(keys)


def to_model_space(settings: Settings, keys: tuple[str, ...] = ("image", "label")) -> list:
    """Channel-first volumes to the model's space: RAS, resampled to the training spacing, HU window scaled
    to 0..1, cropped to the body. Prediction runs exactly these steps on an already loaded scan."""
    import torch
    from monai import transforms as T

    data = settings.data
    modes = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    return [
        T.Orientationd(keys=keys, axcodes="RAS", labels=RAS_LABELS),
        # float32 resampling: MONAI's float64 default costs 4x the memory for differences below 0.02 HU
        T.Spacingd(keys=keys, pixdim=data.spacing, mode=modes, dtype=torch.float32),
        T.ScaleIntensityRanged(
            keys="image", a_min=data.hu_min, a_max=data.hu_max, b_min=0.0, b_max=1.0, clip=True
        ),
        T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
    ]


def augmentation(settings: Settings) -> list:
    """The random part of training: crops of the model's window, flips, rotations, intensity jitter."""
    from monai import transforms as T

    keys, data, roi = ("image", "label"), settings.data, (settings.model.img_size,) * 3
    # The voxel indices a crop sampler draws from are computed once per volume and cached with it
    # (finding them again at every draw costs more than the crop itself).
    if data.crop_sampler == "class_balanced":
        indices = T.ClassesToIndicesd(
            keys="label", num_classes=settings.model.out_channels, image_key="image", image_threshold=0
        )
        crop = T.RandCropByLabelClassesd(
            keys=keys,
            label_key="label",
            spatial_size=roi,
            num_classes=settings.model.out_channels,
            num_samples=data.num_samples,
            indices_key="label_cls_indices",
            warn=False,
        )
    else:
        indices = T.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0)
        crop = T.RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=roi,
            pos=1,
            neg=1,
            num_samples=data.num_samples,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        )
    return [
        T.SpatialPadd(keys=keys, spatial_size=roi),  # small volumes: pad so every crop has the full window
        indices,
        crop,
        T.RandFlipd(keys=keys, prob=data.rand_flip_prob, spatial_axis=0),
        T.RandFlipd(keys=keys, prob=data.rand_flip_prob, spatial_axis=1),
        T.RandFlipd(keys=keys, prob=data.rand_flip_prob, spatial_axis=2),
        T.RandRotate90d(keys=keys, prob=data.rand_rotate90_prob, max_k=3),
        T.RandScaleIntensityd(keys="image", factors=0.1, prob=data.rand_scale_intensity_prob),
        T.RandShiftIntensityd(keys="image", offsets=0.1, prob=data.rand_shift_intensity_prob),
    ]
