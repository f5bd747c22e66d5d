"""The reading layer: NIfTI, NRRD and MetaImage in (recognised by content, the same checks), label maps out in
each format with the scan's geometry; Slicer's seg.nrrd carries organ names and colours."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import invoke, write_scan
from unetr_cli.phantoms import make_phantom
from unetr_cli.volumes import file_kind, load_volume, save_itk

SHAPE = (64, 56, 20)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_metaimage_scans_are_segmented_like_nifti(trained_run, tmp_path, suffix):
    phantom = make_phantom(21, SHAPE, orientation="LPS", oblique_degrees=9.0)
    nifti = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    other = save_itk(phantom.image, nib.load(nifti).affine, tmp_path / f"scan{suffix}")
    voxels, info = load_volume(other, dtype=None)
    assert info.kind == ("nrrd" if suffix == ".nrrd" else "metaimage") and voxels.dtype == np.int16
    assert np.array_equal(voxels, phantom.image) and np.allclose(
        info.affine, nib.load(nifti).affine, atol=1e-5
    )
    checkpoint = trained_run / "checkpoint_final.pt"
    for source, out in ((nifti, "a.nii.gz"), (other, f"b{suffix}")):
        result = invoke("predict", source, "-o", tmp_path / out, "--checkpoint", checkpoint, "-q")
        assert result.exit_code == 0, result.output
    as_nifti = np.asanyarray(nib.load(tmp_path / "a.nii.gz").dataobj)
    written, written_info = load_volume(tmp_path / f"b{suffix}", dtype=None)
    assert np.array_equal(written, as_nifti) and np.allclose(written_info.affine, info.affine, atol=1e-5)


def test_seg_nrrd_carries_names_colours_and_label_values(trained_run, tmp_path):
    import SimpleITK as sitk

    phantom = make_phantom(22, SHAPE)
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    checkpoint = trained_run / "checkpoint_final.pt"
    result = invoke(
        "predict", scan, "-o", tmp_path / "out", "--output-format", "seg-nrrd", "--checkpoint", checkpoint
    )
    assert result.exit_code == 0, result.output
    assert (
        invoke("predict", scan, "-o", tmp_path / "ref.nii.gz", "--checkpoint", checkpoint, "-q").exit_code
        == 0
    )
    out = tmp_path / "out" / "scan_seg.seg.nrrd"
    image = sitk.ReadImage(str(out))
    names = {
        image.GetMetaData(f"Segment{i}_Name"): int(image.GetMetaData(f"Segment{i}_LabelValue"))
        for i in range(13)
    }
    assert names["liver"] == 6 and names["right kidney"] == 2 and len(names) == 13
    assert image.GetMetaData("Segment5_Color").count(" ") == 2
    labels, _ = load_volume(out, dtype=None)
    assert np.array_equal(labels, np.asanyarray(nib.load(tmp_path / "ref.nii.gz").dataobj))


def test_formats_are_recognised_by_content_not_name(tmp_path):
    phantom = make_phantom(23, (32, 32, 8))
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    renamed = tmp_path / "scan.data"
    shutil.copy(scan, renamed)
    assert file_kind(renamed) == "nifti"
    voxels, info = load_volume(renamed, dtype=None)
    assert np.array_equal(voxels, phantom.image) and info.kind == "nifti"
    (tmp_path / "fake.nrrd").write_text("just text\n")
    assert file_kind(tmp_path / "fake.nrrd") == "unknown"


def test_label_maps_in_other_formats_are_scored(tmp_path):
    truth = np.zeros((20, 20, 10), np.uint8)
    truth[5:15, 5:15, 2:8] = 6
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    save_itk(truth, affine, tmp_path / "pred" / "case1_seg.nrrd")
    save_itk(truth, affine, tmp_path / "truth" / "case1.mha")
    result = invoke("evaluate", "--pred-dir", tmp_path / "pred", "--gt-dir", tmp_path / "truth", "--json")
    assert result.exit_code == 0, result.output
    assert '"mean_dice": 1.0' in result.stdout


def test_output_names_choose_the_format(trained_run, tmp_path):
    phantom = make_phantom(24, (48, 48, 12))
    scan = write_scan(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    checkpoint = trained_run / "checkpoint_final.pt"
    for name, kind in (
        ("a.mha", "metaimage"),
        ("b.nrrd", "nrrd"),
        ("c.seg.nrrd", "nrrd"),
        ("d.nii", "nifti"),
    ):
        assert invoke("predict", scan, "-o", tmp_path / name, "--checkpoint", checkpoint, "-q").exit_code == 0
        assert file_kind(tmp_path / name) == kind, name
        assert (tmp_path / Path(name).name.split(".")[0]).with_suffix(".json").is_file()
    clash = invoke(
        "predict", scan, "-o", tmp_path / "e.mha", "--output-format", "nrrd", "--checkpoint", checkpoint
    )
    assert clash.exit_code == 2 and "the name asks for mha, --output-format for nrrd" in clash.stderr


@pytest.mark.parametrize("shape", [(150, 70, 9), (3, 200, 2)])
def test_volumes_are_reordered_for_nifti_block_by_block(shape):
    """A C-ordered volume comes back in Fortran order with every voxel in place, whatever its size against the
    blocks; a Fortran-ordered one is handed on as it is."""
    from unetr_cli.volumes import fortran_ordered

    volume = np.arange(np.prod(shape), dtype=np.int32).reshape(shape) % 251
    ordered = fortran_ordered(volume)
    assert ordered.flags.f_contiguous and np.array_equal(ordered, volume)
    assert fortran_ordered(ordered) is ordered
