"""Phantoms as DICOM: a volume written as a CT series, one file per slice, that a validator (dciodvfy) finds
complete, and the grid a DICOM reader rebuilds from it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from unetr_cli.dicom.identity import CT_IMAGE_STORAGE
from unetr_cli.dicom.volume import LPS_TO_RAS


def write_ct_series(
    image: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    description: str = "phantom",
    series_number: int = 1,
    study_uid: str | None = None,
) -> list[Path]:
    """Write an int16 HU volume (x, y, z) with its RAS affine as a CT series, one file per slice, with the
    geometry of `affine` (oblique and sheared grids included). Returns the files in slice order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from unetr_cli.files import write_bytes

    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    column_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = np.concatenate([lps[:3, 0] / column_step, lps[:3, 1] / row_step])
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(image.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Unetr", "PHANTOM", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "unetr"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        # Type 2 attributes of the Frame of Reference, General Series, CT Image and General Image modules.
        ds.PositionReferenceIndicator, ds.PatientPosition, ds.KVP, ds.AcquisitionNumber = "", "HFS", "", 1
        ds.BodyPartExamined = "ABDOMEN"  # not a paired part: no Laterality (Type 2C) needed
        ds.SeriesDescription, ds.ImageType = description, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = int(image.shape[1]), int(image.shape[0])
        ds.PixelSpacing = [f"{row_step:.6f}", f"{column_step:.6f}"]
        ds.SliceThickness = f"{abs(np.linalg.norm(lps[:3, 2])):.6f}"
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(image[:, :, k].T.astype(np.int16)).tobytes()
        path = folder / f"slice{k:04d}.dcm"
        ds.preamble = b"\0" * 128
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        paths.append(write_bytes(path, buffer.getvalue()))
    return paths


def reading_order(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A volume and its RAS affine in the order a series written from them is read back (slices ascending
    along the normal of their rows and columns): left-handed grids come back with their slices reversed."""
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    if np.dot(np.cross(lps[:3, 0], lps[:3, 1]), lps[:3, 2]) > 0:
        return volume, affine
    flipped = np.array(affine, dtype=np.float64)
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 2] * (volume.shape[2] - 1)
    flipped[:3, 2] = -affine[:3, 2]
    return volume[:, :, ::-1], flipped
