"""Real scans from real scanners and archives (tests/fixtures/realdata, none written by unetr) through
predict, report and evaluate: CD layouts, de-identified series, enhanced multi-frame CT, other modalities,
non-HU values, and DICOM-SEG that dicom3tools' validator accepts."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import REALDATA, dicom_errors, invoke, json_events, predict, write_scan
from unetr_cli.dicom import find_series, read_series, write_segmentation
from unetr_cli.dicom.identity import completed_headers
from unetr_cli.grid import on_grid
from unetr_cli.labels import label_colour
from unetr_cli.phantoms import make_phantom
from unetr_cli.phantoms.dicom_series import write_ct_series
from unetr_cli.volumes import load_volume

GE = REALDATA / "ge_tilt_anonymised" / "series"
UIDS = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


@pytest.fixture
def checkpoint(trained_run) -> Path:
    return trained_run / "checkpoint_final.pt"


def emptied_uids(tmp_path: Path) -> Path:
    """The real GE series as a de-identification tool that empties UIDs leaves it, JPEG 2000 compressed."""
    folder = tmp_path / "anonymised"
    folder.mkdir()
    for path in sorted(GE.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.compress(pydicom.uid.JPEG2000Lossless)  # (this makes a new SOPInstanceUID: emptied below)
        for keyword in UIDS:
            setattr(ds, keyword, "")
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(folder / path.name)
    return folder


def placed(seg: Path, series_folder: Path) -> np.ndarray:
    """A DICOM-SEG's labels on the grid of the series it references."""
    labels, info = load_volume(seg, dtype=None)
    [series] = [s for s in find_series(series_folder)[0] if s.is_ct]
    grid = read_series(series, headers_only=True)
    result = on_grid(labels, info.affine, grid.shape, grid.affine)
    assert result is not None, "the SEG's voxels are not the series' voxels"
    return result


def test_a_series_with_emptied_uids_gets_a_valid_dicom_seg(checkpoint, tmp_path):
    import highdicom as hd

    folder = emptied_uids(tmp_path)
    out = tmp_path / "seg.dcm"
    result = predict(checkpoint, folder, "-o", out)
    assert result.exit_code == 0, result.output
    line = " ".join(result.stderr.split())
    assert "the series lacks StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, SOPInstanceUID" in line
    assert "generated UIDs" in line and "Traceback" not in result.output
    seg = hd.seg.segread(out)
    referenced = seg.ReferencedSeriesSequence[0]
    instances = [item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence]
    assert seg.StudyInstanceUID and referenced.SeriesInstanceUID and seg.FrameOfReferenceUID
    assert len(set(instances)) == 3 and all(instances)
    assert {item.ReferencedSOPClassUID for item in referenced.ReferencedInstanceSequence} == {
        "1.2.840.10008.5.1.4.1.1.2"
    }
    assert dicom_errors(out) == []
    again = predict(checkpoint, folder, "-o", tmp_path / "again.dcm", "-q")
    assert again.exit_code == 0
    second = hd.seg.segread(tmp_path / "again.dcm")  # the same generated UIDs on every run
    assert second.StudyInstanceUID == seg.StudyInstanceUID
    assert second.ReferencedSeriesSequence[0].SeriesInstanceUID == referenced.SeriesInstanceUID


def test_a_series_without_type2_attributes_gets_a_valid_dicom_seg_with_colours(checkpoint, tmp_path):
    import highdicom as hd

    out = tmp_path / "seg.dcm"
    result = predict(checkpoint, GE, "-o", out)
    assert result.exit_code == 0, result.output
    assert "the series lacks DeidentificationMethod, PatientBirthDate, PatientSex" in " ".join(
        result.stderr.split()
    )
    seg = hd.seg.segread(out)
    assert (
        seg.PatientBirthDate == ""
        and seg.PatientSex == ""
        and seg.PatientID == pydicom.dcmread(next(GE.glob("*.dcm"))).get("PatientID", "")
    )
    assert dicom_errors(out) == []
    liver = seg.get_segment_description(6)
    assert liver.RecommendedDisplayCIELabValue == list(hd.color.CIELabColor.from_rgb(*label_colour(6)).value)
    assert len({tuple(d.RecommendedDisplayCIELabValue) for d in seg.SegmentSequence}) == 13


def test_a_cd_layout_is_segmented_and_its_index_files_are_no_failure(checkpoint, tmp_path):
    result = predict(checkpoint, REALDATA / "philips_cd", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").glob("*.nii.gz")] == ["S2010_seg.nii.gz"]
    errors = " ".join(result.stderr.split())
    assert "(CT, 1 files) in " in errors and "S1000: localizer (scout) images" in errors
    assert "'Exam Summary' (CT, 1 files)" in errors and "S4010: secondary capture" in errors
    assert (
        "DICOMDIR" not in errors and "DIRFILE" not in errors and "failed" not in result.stdout.split(", ")[2]
    )
    assert "front/back" not in errors  # a head phantom: its skull lies around the centre, no spine behind it


def test_a_standard_dicomdir_names_each_series_and_refuses_a_gap_before_the_model(checkpoint, tmp_path):
    result = predict(checkpoint, REALDATA / "dicomdir_tiny", "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1
    events = json_events(result.stdout)
    kinds = [e["event"] for e in events]
    failed = next(e for e in events if e["event"] == "failed")
    assert "missing slice(s): a gap of 202.50 mm" in failed["error"] and "CT2" in failed["input"]
    assert kinds.index("failed") < kinds.index("ready")  # refused before the model loaded
    assert [p.name for p in (tmp_path / "out").glob("*.nii.gz")] == ["CT5N_seg.nii.gz"]
    warnings = " ".join(e["message"] for e in events if e["event"] == "warning")
    for skipped in ("(MR, 3 files)", "(CR, 1 files)", "(SEG, 1 files)", "'Scout' (CT, 2 files)"):
        assert skipped in warnings
    assert "not a volume (Computed Radiography Image Storage)" in warnings and ": segmentation" in warnings


def one_slice(tmp_path: Path) -> Path:
    folder = tmp_path / "one_slice"
    folder.mkdir()
    shutil.copy(next(GE.glob("*.dcm")), folder)
    return folder


def uneven(tmp_path: Path) -> Path:
    folder = tmp_path / "uneven"
    shutil.copytree(GE, folder)
    shutil.copy(REALDATA / "ge_tilt_anonymised" / "thick" / "15.dcm", folder)
    return folder


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (one_slice, "has 1 image slice(s): a 3D scan needs several"),
        (lambda _: REALDATA / "dicomdir_tiny" / "77654033" / "CT2", "missing slice(s): a gap of 202.50 mm"),
        (uneven, "unevenly spaced slices (1.08 to 4.00 mm)"),  # along the tilted normal
        (lambda _: REALDATA / "mr_mosaic", "(MR, 1 files) in"),
        (lambda _: REALDATA / "nifti_ct_pitch" / "CT_pitch.nii.gz", "stored as uint8 without scaling"),
        (lambda _: REALDATA / "enhanced_ct", "its RescaleType is US, not HU"),
        (lambda tmp: tmp / "no_such_scan.nii.gz", "no_such_scan.nii.gz: file not found"),
        (
            lambda _: REALDATA / "dicomdir_tiny" / "SEG" / "seg_image_ct_binary.dcm",
            "is a DICOM-SEG (a label map)",
        ),
    ],
)
def test_refusals_that_need_no_model_come_before_it_loads(tmp_path, make, expected):
    result = invoke(
        "predict", make(tmp_path), "-o", tmp_path / "out", "--checkpoint", tmp_path / "no_model.pt"
    )
    assert result.exit_code == (2 if "(MR" in expected else 1), result.output  # MR: skipped, nothing to do
    assert expected in " ".join(result.stderr.split()) and "no_model" not in result.stderr
    assert "Traceback" not in result.output


def test_an_mr_folder_alone_or_beside_ct_gets_the_same_line(checkpoint, tmp_path):
    mixed = tmp_path / "mixed"
    phantom = make_phantom(31, (48, 48, 16))
    write_ct_series(phantom.image, phantom.affine, mixed / "ct")
    shutil.copy(REALDATA / "mr_mosaic" / "9.dcm", mixed / "mr.dcm")
    alone = predict(checkpoint, REALDATA / "mr_mosaic", "-o", tmp_path / "a")
    beside = predict(checkpoint, mixed, "-o", tmp_path / "b")
    assert alone.exit_code == 2 and beside.exit_code == 0, beside.output
    line = "'ax_asc_35sl' (MR, 1 files) in {}: not CT (--allow-non-ct segments it anyway)"
    assert line.format(REALDATA / "mr_mosaic") in " ".join(alone.stderr.split())
    assert line.format(mixed) in " ".join(beside.stderr.split())


def mr_nifti(tmp_path: Path) -> Path:
    """The real MR mosaic as the 64 x 64 x 35 NIfTI a converter writes from it."""
    ds = pydicom.dcmread(REALDATA / "mr_mosaic" / "9.dcm")
    tiles = ds.pixel_array.reshape(6, 64, 6, 64).transpose(0, 2, 1, 3).reshape(36, 64, 64)[:35]
    volume = np.ascontiguousarray(tiles.transpose(2, 1, 0)).astype(np.int16)
    path = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([-3.25, -3.25, 3.6, 1.0])), path)
    return path


def test_an_mr_nifti_is_refused_by_its_values_unless_allowed(checkpoint, tmp_path):
    scan = mr_nifti(tmp_path)
    result = predict(checkpoint, scan, "-o", tmp_path / "mr_seg.nii.gz", "--json")
    assert result.exit_code == 1
    events = json_events(result.stdout)
    failed = next(e for e in events if e["event"] == "failed")
    assert "not a CT in Hounsfield units: its lowest value is 0: no air" in failed["error"]
    assert "--allow-non-ct" in failed["error"]
    assert "ready" not in [e["event"] for e in events]  # the model was never built
    assert not (tmp_path / "mr_seg.nii.gz").exists()
    allowed = predict(checkpoint, scan, "-o", tmp_path / "mr_seg.nii.gz", "--allow-non-ct", "-q")
    assert allowed.exit_code == 0 and (tmp_path / "mr_seg.nii.gz").is_file()


def test_enhanced_multiframe_ct_is_read_from_its_functional_groups(checkpoint, tmp_path):
    [series], unreadable = find_series(REALDATA / "enhanced_ct")
    assert not unreadable and series.duplicates == 1 and len(series.files) == 1
    voxels, info = load_volume(series, dtype=None)
    assert voxels.shape == (512, 512, 2) and info.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    centres = info.affine @ np.array([[0, 0, 0, 1], [0, 0, 1, 1]]).T
    assert sorted(centres[2]) == pytest.approx([-159.0, -149.0])  # the frames' positions, 10 mm apart
    out = tmp_path / "seg.dcm"
    result = predict(checkpoint, REALDATA / "enhanced_ct", "-o", out, "--allow-non-ct")
    assert result.exit_code == 0, result.output
    assert "1 file(s) left out: the same image (SOPInstanceUID) as another file" in result.stderr
    assert (
        predict(
            checkpoint, REALDATA / "enhanced_ct", "-o", tmp_path / "seg.nii.gz", "--allow-non-ct"
        ).exit_code
        == 0
    )
    labels = np.asanyarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert np.array_equal(placed(out, REALDATA / "enhanced_ct"), labels)
    assert dicom_errors(out) == []


def test_nifti_seg_nrrd_and_dicom_seg_agree_on_a_real_tilted_series(checkpoint, tmp_path):
    outputs = {
        fmt: tmp_path / f"seg{suffix}"
        for fmt, suffix in [("nifti", ".nii.gz"), ("seg-nrrd", ".seg.nrrd"), ("dicom-seg", ".dcm")]
    }
    for path in outputs.values():
        assert predict(checkpoint, GE, "-o", path, "-q").exit_code == 0
    [series] = find_series(GE)[0]
    grid = read_series(series, headers_only=True)
    nifti = nib.load(outputs["nifti"])
    assert np.allclose(nifti.affine, grid.affine, atol=1e-4) and abs(grid.affine[2, 1]) > 0.1  # tilt kept
    labels = np.asanyarray(nifti.dataobj)
    nrrd, nrrd_info = load_volume(outputs["seg-nrrd"], dtype=None)
    assert np.array_equal(nrrd, labels) and np.allclose(nrrd_info.affine, grid.affine, atol=1e-4)
    assert np.array_equal(placed(outputs["dicom-seg"], GE), labels)


def test_a_dicom_seg_on_a_real_tilted_grid_is_reported_and_scored(tmp_path):
    [series] = find_series(GE)[0]
    grid = read_series(series, headers_only=True)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[150:350, 120:330, 1:] = 6  # a "liver" on the upper two slices: the SEG spans only those
    labels[300:340, 300:340, 1] = 1  # a "spleen" on the middle slice only: its other frames are left out
    seg = tmp_path / "pred" / "case_seg.dcm"
    seg.parent.mkdir()
    write_segmentation(labels, grid, seg, 14, {"checkpoint": "test"})
    assert np.array_equal(placed(seg, GE), labels)
    truth = write_scan(tmp_path / "truth" / "case.nii.gz", labels, grid.affine)
    scores = tmp_path / "scores.json"
    result = invoke("evaluate", "--pred-dir", seg.parent, "--gt-dir", truth.parent, "--output", scores)
    assert result.exit_code == 0, result.output
    import json

    organs = json.loads(scores.read_text())["summary"]["organs"]
    assert organs["liver"]["dice"] == pytest.approx(1.0) and organs["spleen"]["dice"] == pytest.approx(1.0)
    report = invoke("report", seg, "--scan", GE, "--json")
    assert report.exit_code == 0, report.output
    event = next(e for e in json_events(report.stdout) if e["event"] == "report")
    liver = next(o for o in event["organs"] if o["organ"] == "liver")
    assert liver["voxels"] == int((labels == 6).sum()) and liver["mean_hu"] is not None


def test_another_tools_dicom_seg_is_read_as_a_label_map(tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    theirs = invoke(
        "report", REALDATA / "dicomdir_tiny" / "SEG" / "seg_image_ct_binary.dcm", "-o", tmp_path, "--json"
    )
    assert theirs.exit_code == 0, theirs.output
    event = next(e for e in json_events(theirs.stdout) if e["event"] == "report")
    assert any("label ids are the segment numbers" in note for note in event["notes"])
    assert event["organs"][0]["voxels"] == 638  # its one segment, as segment number 1
    # A tool that numbers its segments its own way but codes them in SNOMED CT: BTCV ids by the codes.
    [series] = find_series(GE)[0]
    grid = read_series(series, headers_only=True)
    sources, _ = completed_headers(grid.slices, grid.series_uid)  # highdicom needs PatientBirthDate
    mask = np.zeros((3, 512, 512), dtype=np.uint8)
    mask[:, 100:200, 100:200] = 1
    mask[:, 300:400, 300:400] = 2
    algorithm = hd.AlgorithmIdentificationSequence("other", codes.cid7162.ArtificialIntelligence, "1")
    segments = [
        hd.seg.SegmentDescription(n, name, codes.SCT.AnatomicalStructure, code, "AUTOMATIC", algorithm)
        for n, name, code in [(1, "Liver", codes.SCT.Liver), (2, "Spleen", codes.SCT.Spleen)]
    ]
    other = hd.seg.Segmentation(
        sources, mask, "BINARY", segments, hd.UID(), 1, hd.UID(), 1, "other", "other", "1", "1"
    )
    other.save_as(tmp_path / "other.dcm")
    labels, _ = load_volume(tmp_path / "other.dcm", dtype=None)
    assert set(np.unique(labels)) == {0, 6, 1}  # liver 6, spleen 1 in BTCV ids
    assert int((labels == 6).sum()) == int((mask == 1).sum())
