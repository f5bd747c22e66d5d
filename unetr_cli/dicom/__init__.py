"""DICOM in and out: series found in folders, archives and CD layouts (`series`), read onto the patient's
grid (`volume`), and label maps written as DICOM-SEG and read back (`seg`); `identity` completes what
de-identified series lack for the objects derived from them."""

from unetr_cli.dicom.seg import is_segmentation, read_segmentation, write_segmentation
from unetr_cli.dicom.series import DicomSeries, choose_series, find_series, is_dicom_file
from unetr_cli.dicom.volume import LPS_TO_RAS, SeriesVolume, read_series

__all__ = [
    "LPS_TO_RAS",
    "DicomSeries",
    "SeriesVolume",
    "choose_series",
    "find_series",
    "is_dicom_file",
    "is_segmentation",
    "read_segmentation",
    "read_series",
    "write_segmentation",
]
