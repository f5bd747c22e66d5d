"""Reading one DICOM file with pydicom, except for the transfer syntax that compresses the whole dataset
(Deflated Explicit VR Little Endian): pydicom inflates all of it, even to read one tag, so a few kilobytes of
zeros could take gigabytes of memory. Those files are inflated here within bounds: a header read stops after
the image attributes (HEADER_LIMIT at most), and a full read may inflate no more than the header declares for
the pixels plus HEADER_LIMIT."""

from __future__ import annotations

import zlib
from pathlib import Path

from unetr_cli.errors import InputError

DEFLATED = "1.2.840.10008.1.2.1.99"
HEADER_LIMIT = 16 << 20
LAST_HEADER_GROUP = 0x0028  # Image Pixel module: everything a listing or a geometry check reads


def read_dicom(
    path: Path, headers_only: bool = False, specific_tags: list[str] | None = None, force: bool = False
):
    """A file's dataset (a header without pixel data with `headers_only`)."""
    import pydicom

    meta = _file_meta(path)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
        return _read_deflated(path, meta, headers_only)
    return pydicom.dcmread(path, stop_before_pixels=headers_only, specific_tags=specific_tags, force=force)


def _file_meta(path: Path):
    import pydicom

    try:
        return pydicom.filereader.read_file_meta_info(path)
    except Exception:  # no file meta (a bare dataset) or not DICOM: pydicom's own reader decides
        return None


def _read_deflated(path: Path, meta, headers_only: bool):
    """The dataset of a deflated file, inflated no further than needed (header) or declared (pixels)."""
    header = _parse(path, meta, _inflate(path, meta, HEADER_LIMIT)[0], headers_only=True)
    if headers_only:
        return header
    allowed = _declared_pixel_bytes(header) + HEADER_LIMIT
    data, more = _inflate(path, meta, allowed)
    if more:
        raise InputError(
            path,
            f"inflates to more than {allowed / 2**20:.0f} MB, more than its header declares for "
            f"{header.get('Rows')} x {header.get('Columns')} pixels: refused",
        )
    return _parse(path, meta, data, headers_only=False)


def _inflate(path: Path, meta, limit: int) -> tuple[bytes, bool]:
    """At most `limit` inflated bytes of the dataset after the file meta, and whether more would follow."""
    start = 132 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, the group length element
    with open(path, "rb") as handle:
        handle.seek(start)
        packed = handle.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(packed, limit + 1)
    except zlib.error as err:
        raise InputError(path, f"damaged deflated data ({err})") from None
    return data[:limit], len(data) > limit or bool(inflater.unconsumed_tail)


def _parse(path: Path, meta, data: bytes, headers_only: bool):
    import pydicom
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import ExplicitVRLittleEndian

    def past_header(tag, vr, length) -> bool:
        return headers_only and tag.group > LAST_HEADER_GROUP

    try:
        dataset = pydicom.filereader.read_dataset(
            DicomBytesIO(data), is_implicit_VR=False, is_little_endian=True, stop_when=past_header
        )
    except Exception as err:  # a header longer than HEADER_LIMIT, or damaged
        raise InputError(path, f"unreadable deflated DICOM header ({err})") from None
    meta = meta.copy()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
    return FileDataset(str(path), dataset, preamble=b"\0" * 128, file_meta=meta)


def _declared_pixel_bytes(header) -> int:
    values = [header.get(k) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated")]
    rows, columns, samples, bits = (int(v) if v not in (None, "") else 1 for v in values)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    return rows * columns * samples * frames * max(bits, 8) // 8
