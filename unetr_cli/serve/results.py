"""A done job's results: its label map in the format asked for (NIfTI as made; seg.nrrd and DICOM-SEG made
from it on the first request, then kept), and the volumes the web page draws (the scan and its labels turned
to RAS, at most `VIEW_VOXELS` per axis, the scan in an abdominal window as bytes)."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from unetr_cli.files import write_bytes, write_text
from unetr_cli.serve.jobs import Job
from unetr_cli.serve.uploads import SERIES, source_of

FORMATS = {"nifti": "seg.nii.gz", "seg-nrrd": "seg.seg.nrrd", "dicom-seg": "seg.dcm"}
VIEW_VOXELS = 256
WINDOW_HU = (-160.0, 240.0)  # soft tissue: what the organs are judged in
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


class NoSuchResult(Exception):
    """A format the job cannot give (DICOM-SEG of a scan that was not DICOM)."""


def formats(job: Job) -> list[str]:
    """The formats a done job's result can be had in."""
    return [*FORMATS] if (job.input / SERIES).is_file() else ["nifti", "seg-nrrd"]


def result_file(job: Job, fmt: str) -> Path:
    """The job's label map as `fmt`, made once from the NIfTI it was written as."""
    if fmt not in formats(job):
        raise NoSuchResult(f"{fmt}: this job's result comes as {', '.join(formats(job))}")
    path = job.folder / FORMATS[fmt]
    with _making(job, fmt):
        if not path.is_file():
            _convert(job, fmt, path)
    return path


def _convert(job: Job, fmt: str, path: Path) -> None:
    labels, info = _labels(job)
    classes = len(json.loads((job.folder / "seg.json").read_text())["labels"])
    if fmt == "seg-nrrd":
        from unetr_cli.volumes import save_segmentation_nrrd

        save_segmentation_nrrd(labels, info.affine, path, classes)
    else:
        from unetr_cli.dicom import read_series, write_segmentation

        volume = read_series(source_of(job), headers_only=True)
        write_segmentation(labels, volume, path, classes, {"checkpoint": "unetr serve"})


def view(job: Job) -> tuple[dict, Path, Path]:
    """What the web page draws: a description (shape, spacing, organ names and colours) and two files of
    bytes, the windowed scan and the labels, each (z, y, x) in RAS at most VIEW_VOXELS per axis. Made once."""
    meta_path, image_path, labels_path = (job.folder / f"view_{n}" for n in ("meta.json", "image", "labels"))
    with _making(job, "view"):  # the page asks for the three at once: one makes them, the others wait
        if not meta_path.is_file():
            _make_view(job, meta_path, image_path, labels_path)
    return json.loads(meta_path.read_text()), image_path, labels_path


def _make_view(job: Job, meta_path: Path, image_path: Path, labels_path: Path) -> None:
    import nibabel as nib

    from unetr_cli.labels import label_colour, label_names
    from unetr_cli.volumes import load_scan

    image, info, _ = load_scan(source_of(job), dtype=np.float32)
    labels, _ = _labels(job)
    oriented = [nib.as_closest_canonical(nib.Nifti1Image(volume, info.affine)) for volume in (image, labels)]
    step = max(1, -(-max(info.shape) // VIEW_VOXELS))  # ceil
    sample = (slice(None, None, step),) * 3
    low, high = WINDOW_HU
    scan = np.asanyarray(oriented[0].dataobj)[sample]
    windowed = np.clip((scan - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    mapped = np.asanyarray(oriented[1].dataobj)[sample].astype(np.uint8)
    write_bytes(image_path, np.ascontiguousarray(windowed.transpose(2, 1, 0)).tobytes())
    write_bytes(labels_path, np.ascontiguousarray(mapped.transpose(2, 1, 0)).tobytes())
    classes = len(json.loads((job.folder / "seg.json").read_text())["labels"])
    spacing = [float(v) * step for v in oriented[0].header.get_zooms()[:3]]
    meta = {
        "shape": [int(v) for v in windowed.shape],  # x, y, z
        "spacing_mm": spacing,
        "names": label_names(classes),
        "colours": {label: label_colour(label) for label in range(classes)},
    }
    write_text(meta_path, json.dumps(meta))  # last: its presence means the view is complete


@contextmanager
def _making(job: Job, what: str):
    """One thread at a time makes a job's `what`."""
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault((job.id, what), threading.Lock())
    with lock:
        yield


def _labels(job: Job):
    from unetr_cli.volumes import load_volume

    labels, info = load_volume(job.labels, dtype=None)
    return labels.astype(np.uint8), info
