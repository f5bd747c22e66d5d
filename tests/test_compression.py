import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from unetr_cli.compression import write_gzip
from unetr_cli.volumes import save_nifti


def test_one_gzip_member_that_zlib_reads_whole_and_the_same_every_time(tmp_path):
    data = np.random.default_rng(0).integers(0, 14, 50_000, dtype=np.uint8).tobytes()
    write_gzip(tmp_path / "a.gz", data)
    write_gzip(tmp_path / "b.gz", data)
    packed = (tmp_path / "a.gz").read_bytes()
    reader = zlib.decompressobj(wbits=31)  # one gzip member: stops at its end
    assert reader.decompress(packed) == data
    assert reader.eof and reader.unused_data == b""
    assert packed == (tmp_path / "b.gz").read_bytes()  # no time stamp: reproducible files


@pytest.mark.parametrize("size", [0, 1, 1024, 3000])
def test_edge_sizes_round_trip(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    write_gzip(tmp_path / "d.gz", data)
    assert gzip.decompress((tmp_path / "d.gz").read_bytes()) == data


def test_a_damaged_byte_fails_the_stored_checksum(tmp_path):
    path = tmp_path / "data.gz"
    write_gzip(path, bytes(5000))
    packed = bytearray(path.read_bytes())
    packed[-8] ^= 0xFF  # the CRC-32 in the trailer
    with pytest.raises(gzip.BadGzipFile, match="CRC"):
        gzip.decompress(bytes(packed))


def test_compressed_nifti_reads_back_in_nibabel_and_itk(tmp_path):
    import SimpleITK as sitk

    labels = np.random.default_rng(1).integers(0, 14, (40, 30, 20), dtype=np.uint8)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    path = save_nifti(labels, affine, tmp_path / "labels.nii.gz")
    image = nib.load(path)
    assert np.array_equal(np.asanyarray(image.dataobj), labels)
    assert np.allclose(image.affine, affine)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0), labels)
