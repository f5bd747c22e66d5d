"""DICOM series in (folders, nested, .zip, any file order, oblique, tilted; bad series named) and DICOM-SEG
out, each prediction equal to the NIfTI path's on the same scan."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import dicom_errors, invoke, predict, tiny_train, write_scan
from unetr_cli.dicom import DicomSeries, find_series, read_segmentation, read_series
from unetr_cli.phantoms import make_phantom
from unetr_cli.phantoms.dicom_series import reading_order, write_ct_series

SHAPE = (64, 56, 20)


def _labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _shifted(slices: int) -> np.ndarray:
    shift = np.eye(4)
    shift[2, 3] = slices
    return shift


def _tilted(affine: np.ndarray, degrees: float) -> np.ndarray:
    """The grid of a gantry-tilted acquisition: each slice shifted along y as it steps along z."""
    sheared = np.array(affine, dtype=np.float64)
    sheared[1, 2] = affine[2, 2] * np.tan(np.radians(degrees))
    return sheared


@pytest.mark.parametrize(
    ("orientation", "oblique", "tilt", "shuffle"),
    [("LPS", 0.0, 0.0, False), ("LAS", 14.0, 0.0, True), ("RAS", 0.0, 12.0, True)],
)
def test_a_dicom_series_is_segmented_like_the_same_scan_in_nifti(
    trained_run, tmp_path, orientation, oblique, tilt, shuffle
):
    phantom = make_phantom(11, SHAPE, orientation=orientation, oblique_degrees=oblique)
    affine = _tilted(phantom.affine, tilt) if tilt else phantom.affine
    files = write_ct_series(phantom.image, affine, tmp_path / "patient" / "study" / "ct")
    if shuffle:  # file names in no particular order
        for index, path in enumerate(files):
            path.rename(path.with_name(f"{(index * 7919) % 1000:04d}_{index}.dcm"))
    nifti = write_scan(tmp_path / "scan.nii.gz", phantom.image, affine)
    checkpoint = trained_run / "checkpoint_final.pt"
    assert predict(checkpoint, tmp_path / "patient", "-o", tmp_path / "dicom_seg.nii.gz", "-q").exit_code == 0
    assert predict(checkpoint, nifti, "-o", tmp_path / "nifti_seg.nii.gz", "-q").exit_code == 0
    from_dicom, from_nifti = nib.load(tmp_path / "dicom_seg.nii.gz"), nib.load(tmp_path / "nifti_seg.nii.gz")
    expected, expected_affine = reading_order(_labels(tmp_path / "nifti_seg.nii.gz"), from_nifti.affine)
    assert np.allclose(from_dicom.affine, expected_affine, atol=1e-4)  # the patient's geometry, tilt included
    assert (np.asanyarray(from_dicom.dataobj) == expected).mean() > 0.9999
    assert (expected > 0).mean() > 0.02


def test_several_series_in_one_folder_each_become_a_case(trained_run, tmp_path):
    folder = tmp_path / "export"
    first, second = make_phantom(12, SHAPE), make_phantom(13, SHAPE)
    write_ct_series(first.image, first.affine, folder, series_number=3, description="venous")
    for path in write_ct_series(second.image, second.affine, folder / "b", series_number=5):
        path.rename(folder / f"b_{path.name}")
    mr = write_ct_series(first.image, first.affine, tmp_path / "mr", series_number=7)
    for path in mr:  # a non-CT series beside them
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(folder / f"mr_{path.name}")
    listing = {s.number: s for s in find_series(folder)[0]}
    assert sorted(listing) == [3, 5, 7] and listing[3].description == "venous"
    checkpoint = trained_run / "checkpoint_final.pt"
    result = predict(checkpoint, folder, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"found series {listing[3].uid} 'venous' (CT, 20 files)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == [
        "export_s3_seg.nii.gz",
        "export_s5_seg.nii.gz",
    ]
    assert (
        "skipped series" in result.stderr and "(MR, 20 files)" in result.stderr and "not CT" in result.stderr
    )
    picked = predict(checkpoint, folder, "-o", tmp_path / "one", "--series", listing[5].uid, "-q")
    assert picked.exit_code == 0 and [p.name for p in (tmp_path / "one").glob("*.nii.gz")] == [
        "export_s5_seg.nii.gz"
    ]


def test_a_zipped_series_is_read_like_the_folder(trained_run, tmp_path):
    phantom = make_phantom(14, SHAPE)
    files = write_ct_series(phantom.image, phantom.affine, tmp_path / "ct")
    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as bundle:
        for path in files:
            bundle.write(path, f"DICOM/{path.name}")
    checkpoint = trained_run / "checkpoint_final.pt"
    assert predict(checkpoint, tmp_path / "ct.zip", "-o", tmp_path / "zip_seg.nii.gz", "-q").exit_code == 0
    assert predict(checkpoint, tmp_path / "ct", "-o", tmp_path / "dir_seg.nii.gz", "-q").exit_code == 0
    assert np.array_equal(_labels(tmp_path / "zip_seg.nii.gz"), _labels(tmp_path / "dir_seg.nii.gz"))


def test_dicom_seg_references_the_series_and_reads_back_voxel_exact(trained_run, tmp_path):
    import highdicom as hd

    phantom = make_phantom(15, SHAPE, orientation="LPS")
    write_ct_series(phantom.image, phantom.affine, tmp_path / "ct")
    checkpoint = trained_run / "checkpoint_final.pt"
    out = tmp_path / "seg.dcm"
    result = predict(checkpoint, tmp_path / "ct", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert predict(checkpoint, tmp_path / "ct", "-o", tmp_path / "seg.nii.gz", "-q").exit_code == 0
    series = find_series(tmp_path / "ct")[0][0]
    volume = read_series(series, headers_only=True)
    labels, affine, notes = read_segmentation(out)
    expected = nib.load(tmp_path / "seg.nii.gz")
    first, last = np.flatnonzero(np.asanyarray(expected.dataobj).any(axis=(0, 1)))[[0, -1]]
    assert np.array_equal(labels, _labels(tmp_path / "seg.nii.gz")[:, :, first : last + 1]) and not notes
    assert np.allclose(affine, expected.affine @ _shifted(first), atol=1e-4)  # frames' extent on its grid
    segmentation = hd.seg.segread(out)
    source = volume.slices[0]
    assert segmentation.StudyInstanceUID == source.StudyInstanceUID
    assert segmentation.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    liver = segmentation.get_segment_description(6)
    assert liver.segment_label == "liver" and liver.segmented_property_type.value == "10200004"
    kidney = segmentation.get_segment_description(2)
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert kidney.segmented_property_type.value == "64033007" and modifier.CodeMeaning == "Right"
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert "unetr" in algorithm.AlgorithmName and algorithm.AlgorithmSource == checkpoint.name
    assert json.loads((tmp_path / "seg.json").read_text())["labels"]["6"] == "liver"
    assert dicom_errors(out) == []


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda files: files[8].unlink(), "missing slice(s): a gap of"),
        (lambda files: [f.unlink() for f in files[1:]], "has 1 image slice(s): a 3D scan needs several"),
        (
            lambda files: files[3].write_bytes(files[3].read_bytes()[:200]),
            "unreadable DICOM file",
        ),
    ],
)
def test_bad_series_get_one_line_and_the_batch_goes_on(trained_run, tmp_path, breakage, expected):
    good = make_phantom(16, SHAPE)
    write_ct_series(good.image, good.affine, tmp_path / "in" / "good")
    broken = write_ct_series(good.image, good.affine, tmp_path / "in" / "broken")
    breakage(broken)
    result = predict(
        trained_run / "checkpoint_final.pt",
        tmp_path / "in" / "good",
        tmp_path / "in" / "broken",
        "-o",
        tmp_path / "out",
        "-q",
    )
    assert result.exit_code == 1
    assert expected in result.stderr and "broken" in result.stderr
    assert (tmp_path / "out" / "good_seg.nii.gz").is_file()
    assert "Traceback" not in result.output


def test_format_errors_come_before_the_model_loads(tmp_path):
    phantom = make_phantom(17, SHAPE)
    nifti = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    no_model = tmp_path / "no_such_model.pt"
    cases = [
        ((nifti, "-o", tmp_path / "s.dcm"), "dicom-seg needs DICOM input", 2),
        ((tmp_path / "notes.txt", "-o", tmp_path / "o.nii.gz"), "notes.txt: not a scan file", 1),
        ((tmp_path / "empty", "-o", tmp_path / "o"), "empty: holds no scans", 2),
    ]
    for args, expected, code in cases:
        result = predict(no_model, *args)
        assert result.exit_code == code, result.output
        assert expected in result.stderr and "no_such_model" not in result.stderr


def test_synth_writes_dicom_phantoms_that_train(tmp_path):
    data = tmp_path / "data"
    result = invoke("synth", data, "--cases", "2", "--shape", "48", "48", "16", "--format", "dicom", "-q")
    assert result.exit_code == 0, result.output
    listing = json.loads((data / "dataset_0.json").read_text())
    image = data / listing["training"][0]["image"]
    assert image.is_dir() and len(list(image.glob("*.dcm"))) == 16
    assert dicom_errors(next(image.glob("*.dcm"))) == []  # Type 2 attributes present, if empty
    [series], _ = find_series(image)
    assert isinstance(series, DicomSeries) and series.modality == "CT"
    trained = tiny_train(data, tmp_path / "run")
    assert trained.exit_code == 0, trained.output


def test_predict_scan_takes_a_volume_in_memory(trained_run, tmp_path):
    import torch

    from unetr_cli.checkpoint import read_weights
    from unetr_cli.inference import Segmenter, predict_scan
    from unetr_cli.model import model_with_weights
    from unetr_cli.settings import Settings

    weights = read_weights(trained_run / "checkpoint_final.pt")
    settings = Settings.from_dict(weights.settings)
    segmenter = Segmenter(
        model_with_weights(settings.model, weights.state_dict), settings, torch.device("cpu")
    )
    phantom = make_phantom(18, SHAPE)
    path = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    from_file = predict_scan(path, segmenter).labels
    stored_affine = nib.load(path).affine  # the float32 precision a NIfTI header keeps
    assert np.array_equal(predict_scan((phantom.image, stored_affine), segmenter).labels, from_file)
    assert np.array_equal(predict_scan(nib.load(path), segmenter).labels, from_file)
    assert not list(tmp_path.glob("*seg*"))  # nothing written


def test_a_copied_dicom_folder_keeps_its_name(tmp_path):
    phantom = make_phantom(19, (32, 32, 6))
    write_ct_series(phantom.image, phantom.affine, tmp_path / "a" / "CT_venous")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert [s.name for s in find_series(tmp_path / "b")[0]] == ["CT_venous"]


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless", "JPEGLSLossless"])
def test_compressed_series_are_decoded(tmp_path, syntax):
    import pydicom.uid

    from unetr_cli.volumes import load_volume

    phantom = make_phantom(25, (32, 32, 6))
    for path in write_ct_series(phantom.image, phantom.affine, tmp_path):
        ds = pydicom.dcmread(path)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(path)
    voxels, _ = load_volume(find_series(tmp_path)[0][0], dtype=None)
    assert np.array_equal(voxels, phantom.image)


def test_reports_and_presentation_states_beside_a_series_are_skipped_with_one_line(trained_run, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "study"
    phantom = make_phantom(27, (48, 48, 16))
    write_ct_series(phantom.image, phantom.affine, folder / "ct")
    for name, sop_class, modality in [
        ("dose", "1.2.840.10008.5.1.4.1.1.88.67", "SR"),  # X-Ray Radiation Dose SR
        ("gsps", "1.2.840.10008.5.1.4.1.1.11.1", "PR"),  # Grayscale Softcopy Presentation State
    ]:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = generate_uid(), modality, 99
        ds.preamble = b"\0" * 128
        ds.save_as(folder / name, enforce_file_format=True)
    result = predict(trained_run / "checkpoint_final.pt", folder, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    errors = " ".join(result.stderr.split())
    assert "(SR, 1 files) in " in errors and ": radiation dose report" in errors
    assert "(PR, 1 files) in " in errors and ": presentation state" in errors
    assert [p.name for p in (tmp_path / "out").glob("*.nii.gz")] == ["ct_seg.nii.gz"]


def _deflated(path: Path, pixel_bytes: bytes | None = None) -> None:
    ds = pydicom.dcmread(path)
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes  # more than its 16 x 16 pixels
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def test_deflated_files_are_inflated_within_bounds(tmp_path, monkeypatch):
    import tracemalloc

    from unetr_cli.dicom import reading
    from unetr_cli.errors import InputError
    from unetr_cli.volumes import load_volume

    phantom = make_phantom(29, (16, 16, 3))
    files = write_ct_series(phantom.image, phantom.affine, tmp_path / "fine")
    for path in files:
        _deflated(path)
    voxels, _ = load_volume(find_series(tmp_path / "fine")[0][0], dtype=None)
    assert np.array_equal(voxels, phantom.image)  # a deflated series reads as any other
    bomb = write_ct_series(phantom.image, phantom.affine, tmp_path / "bomb")
    for path in bomb:
        _deflated(path, bytes(32 << 20))  # 32 MiB of zeros: about 32 KiB on disk
    monkeypatch.setattr(reading, "HEADER_LIMIT", 1 << 20)
    tracemalloc.start()
    try:
        [series], _ = find_series(tmp_path / "bomb")  # the listing reads every header
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(series.files) == 3 and peak < 8 << 20  # not the 32 MiB per file that pydicom would inflate
    with pytest.raises(InputError, match="inflates to more than 1 MB, more than its header declares"):
        read_series(series)
