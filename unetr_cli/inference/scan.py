"""One scan, end to end: decode it, preprocess it like validation, segment it, and carry the labels back onto
the scan's own grid.

On a GPU the scan crosses to the device once, right after decoding (`_to_device`): reorientation, resampling,
the HU window and the body crop run there (MONAI's transforms on CUDA tensors), then the windows, then the
probabilities are carried back to the scan's grid and arg-maxed there in slabs, and only the uint8 label
map comes back (`resample.probabilities_to_labels_on_device`). On the CPU, or when the GPU runs out of memory
for a scan, the host path runs: the same steps on the CPU, resampling only where neighbouring labels
disagree (`resample.resample_labels`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unetr_cli.errors import InputError
from unetr_cli.inference.resample import SLAB, probabilities_to_labels_on_device, resample_labels
from unetr_cli.inference.segmenter import Segmenter
from unetr_cli.inference.stages import StageTimes
from unetr_cli.settings import Settings
from unetr_cli.volumes import VolumeInfo, check_resampled_size, load_scan


@dataclass
class Scan:
    """A decoded scan: its voxels as stored (int16 HU for most CTs), its header, and the format's own header
    object (a nibabel image, a DICOM series' slice headers, or None), which outputs in that format copy."""

    image: np.ndarray
    info: VolumeInfo
    header: object = None

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def affine(self) -> np.ndarray:
        return self.info.affine


@dataclass
class ScanPrediction:
    """A label map on the scan's own grid, with the scan it belongs to."""

    labels: np.ndarray
    scan: Scan


def read_scan(source) -> Scan:
    """Decode and check a scan on the CPU: a NIfTI, NRRD or MetaImage file (for .nii.gz the whole stream, so
    its CRC is checked) or a `dicom.DicomSeries`."""
    image, info, header = load_scan(source, dtype=None)
    return Scan(image, info, header)


def predict_scan(source, segmenter: Segmenter) -> ScanPrediction:
    """Segment one scan: a file, a `dicom.DicomSeries`, or one in memory (a `Scan`, a nibabel image, or an
    (array, affine) pair); the label map has the scan's own shape and affine. Nothing is written."""
    scan = as_scan(source)
    return ScanPrediction(segment_scan(scan, segmenter), scan)


def in_memory(image: np.ndarray, affine: np.ndarray, header=None) -> Scan:
    """A scan already in memory (voxels x, y, z in HU and their RAS affine), checked like a file."""
    from unetr_cli.volumes import checked_header

    image = np.asarray(image)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise InputError("<memory>", "the volume contains NaN or infinite voxels")
    info = checked_header(Path("<memory>"), image.shape, affine, str(image.dtype))
    return Scan(image.reshape(info.shape), info, header)


def as_scan(source) -> Scan:
    """A scan from a file or DICOM series (read), a `Scan` (as is), a nibabel image or an (array, affine)
    pair (in memory)."""
    if isinstance(source, Scan):
        return source
    if isinstance(source, tuple) and len(source) == 2:
        return in_memory(*source)
    if hasattr(source, "affine") and hasattr(source, "dataobj"):  # a nibabel image
        return in_memory(np.asanyarray(source.dataobj), source.affine, source)
    return read_scan(source)


def segment_scan(scan: Scan, segmenter: Segmenter, stages: StageTimes | None = None) -> np.ndarray:
    """The uint8 label map of `scan` on its own grid: on the segmenter's GPU when it has one (falling back to
    the host path for this scan if the GPU runs out of memory), else on the CPU. `stages` collects the
    seconds of preprocessing, the windows and the way back to the scan's grid."""
    settings = segmenter.settings
    check_resampled_size(scan.info, settings.data.spacing, settings.model.out_channels + 2)
    stages = stages if stages is not None else StageTimes()
    if segmenter.device.type == "cuda":
        try:
            return _segment_on_device(scan, segmenter, stages)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            segmenter.note(f"GPU out of memory for {scan.path.name}: it ran on the CPU path instead")
    return _segment_on_host(scan, segmenter, stages)


def load_segmenter(settings: Settings, device: torch.device, read_weights, reporter=None) -> Segmenter:
    """The model with its weights (`read_weights()`, a `checkpoint.LoadedWeights`) on `device`, ready to
    segment; on a GPU the stages that need no model warm up meanwhile (`warm_up_stages`). With a `reporter`,
    the `ready` line and event."""
    from unetr_cli.devices import warming_up
    from unetr_cli.model import model_with_weights

    with warming_up(device, lambda: warm_up_stages(settings, device)):
        weights = read_weights()
        model = model_with_weights(settings.model, weights.state_dict, weights.source)
    segmenter = Segmenter(model, settings, device)
    if reporter is not None:
        from unetr_cli.inference.predict import report_ready

        report_ready(reporter, device)
    return segmenter


def warm_up_stages(settings: Settings, device: torch.device) -> np.ndarray:
    """The device path's stages that need no model, on a blank int16 scan of water stored LPS at 1 mm:
    preprocessing, and blank scores carried back to the scan's grid. On a GPU it runs while the model is
    built (`devices.warming_up`), so that their kernels are loaded when the first real scan comes. Returns
    the label map."""
    blank = torch.zeros(BLANK_SHAPE, dtype=torch.int16, device=device)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    model_input = preprocess_scan(blank, affine, settings)
    scores = torch.zeros((settings.model.out_channels, *model_input.shape[1:]), device=device)
    return probabilities_to_labels_on_device(scores, _affine_of(model_input), BLANK_SHAPE, affine)


def warm_up(segmenter: Segmenter) -> None:
    """On a GPU, run one batch of blank windows in a helper thread (`Segmenter.blank_windows`), so that the
    model's kernels load and cuDNN chooses its algorithms while the first real scan is preprocessed: a
    process's first windows take about 20 times as long as the next. The real windows wait for it; a failure
    there is left for the real scan to meet."""
    if segmenter.device.type == "cuda":
        segmenter.run_beside(lambda: _quietly(segmenter.blank_windows))


BLANK_SHAPE = (40, 40, 40)


def _quietly(task, *args) -> None:
    with contextlib.suppress(Exception):
        task(*args)


def preprocess_scan(image, affine: np.ndarray, settings: Settings):
    """Validation preprocessing of an in-memory scan (a numpy array, or a tensor on any device): returns the
    model-grid MetaTensor (1, X, Y, Z) on the same device."""
    from monai import transforms as T
    from monai.data import MetaTensor

    from unetr_cli.data import to_model_space

    voxels = image if isinstance(image, torch.Tensor) else _to_device(image, torch.device("cpu"))
    # In its stored dtype: reorientation copies it, resampling makes it float32.
    tensor = MetaTensor(voxels[None], affine=torch.as_tensor(affine, dtype=torch.float64))
    return T.Compose(to_model_space(settings, keys=("image",)))({"image": tensor})["image"]


def _segment_on_device(scan: Scan, segmenter: Segmenter, stages: StageTimes) -> np.ndarray:
    with stages.stage("preprocess"):
        model_input = preprocess_scan(
            _to_device(scan.image, segmenter.device), scan.info.affine, segmenter.settings
        )
        model_affine = _affine_of(model_input)
    with stages.stage("windows"):
        logits = segmenter.logits(model_input.as_tensor()[None])[0]
    del model_input
    with stages.stage("to_scan_grid"):
        if logits.device.type == "cpu":  # the windows were aggregated in host memory (GPU out of memory)
            return _back_to_scan_on_host(logits, model_affine, scan, segmenter.settings)
        if segmenter.settings.inference.resample == "labels":
            labels = _to_host(torch.argmax(logits, dim=0).to(torch.uint8)).numpy()
            return resample_labels(labels, model_affine, scan.info.shape, scan.info.affine)
        return probabilities_to_labels_on_device(logits, model_affine, scan.info.shape, scan.info.affine)


def _segment_on_host(scan: Scan, segmenter: Segmenter, stages: StageTimes) -> np.ndarray:
    with stages.stage("preprocess"):
        model_input = preprocess_scan(scan.image, scan.info.affine, segmenter.settings)
        model_affine = _affine_of(model_input)
    with stages.stage("windows"):
        logits = _to_host(segmenter.logits(model_input.as_tensor()[None])[0])  # a no-op on the CPU
    del model_input
    with stages.stage("to_scan_grid"):
        return _back_to_scan_on_host(logits, model_affine, scan, segmenter.settings)


def _back_to_scan_on_host(logits: torch.Tensor, model_affine, scan: Scan, settings: Settings) -> np.ndarray:
    labels = torch.argmax(logits, dim=0).to(torch.uint8).numpy()
    probabilities = class_probabilities(logits) if settings.inference.resample == "probabilities" else None
    del logits
    return resample_labels(labels, model_affine, scan.info.shape, scan.info.affine, probabilities)


def class_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax over the class axis of (C, X, Y, Z) host scores as float16, a slab at a time (no full-size fp32
    temporary besides the scores themselves)."""
    probabilities = np.empty(tuple(logits.shape), dtype=np.float16)
    for start in range(0, logits.shape[1], SLAB):
        block = torch.softmax(logits[:, start : start + SLAB].float(), dim=0)
        probabilities[:, start : start + SLAB] = block.to(torch.float16).numpy()
    return probabilities


def _affine_of(model_input) -> np.ndarray:
    return model_input.affine.detach().cpu().numpy().astype(np.float64)


# The two places where a scan crosses between host and GPU memory.


def _to_device(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """The decoded voxels, in their stored dtype, as a C-ordered tensor on `device` (the CPU too). A volume in
    Fortran order (as nibabel decodes NIfTI) crosses as it lies in memory and torch reorders it there, on the
    GPU or on every CPU core: numpy's reordering took 0.46-0.73 s of a 512 x 512 x 200 CT on 2 cores, torch's
    0.26 s."""
    if image.ndim == 3 and image.flags.f_contiguous and not image.flags.c_contiguous:
        return torch.from_numpy(image.T).to(device).permute(2, 1, 0).contiguous()
    return torch.from_numpy(np.ascontiguousarray(image)).to(device)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A result back in host memory: the uint8 label map on the GPU path, the scores on the host path."""
    return tensor.cpu()
