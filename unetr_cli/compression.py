"""gzip on every core: one standard gzip member whose deflate stream is compressed in independent pieces by a
pool of threads (the way pigz does it), so writing a 50 MB label map takes a fraction of a single zlib call.

Each piece but the last ends with a sync flush, which leaves the stream byte-aligned and unfinished, so the
pieces join into one valid deflate stream; any gzip reader (zlib, Python, ITK, nibabel) reads the result.
zlib releases the interpreter lock while it compresses, so the threads run in parallel.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

PIECE_BYTES = 1 << 20
# gzip header: magic, deflate, no flags, no modification time (reproducible files), "fastest" (XFL 4),
# operating system unknown (255), as Python's gzip writes for level 1.
_HEADER = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x04\xff"


def gzip_pieces(data: bytes | memoryview, level: int = 1, threads: int | None = None) -> Iterator[bytes]:
    """The gzip file of `data`, in order, as its pieces are compressed in parallel."""
    view = memoryview(data).cast("B")
    starts = range(0, max(len(view), 1), PIECE_BYTES)
    last = starts[-1]

    def deflate(start: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = compressor.compress(view[start : start + PIECE_BYTES])
        return body + compressor.flush(zlib.Z_FINISH if start == last else zlib.Z_SYNC_FLUSH)

    with ThreadPoolExecutor(threads or os.cpu_count() or 1, thread_name_prefix="unetr-gzip") as pool:
        checksum = pool.submit(zlib.crc32, view)
        yield _HEADER
        yield from pool.map(deflate, starts)
        yield struct.pack("<II", checksum.result(), len(view) & 0xFFFFFFFF)


def write_gzip(path: str | os.PathLike, data: bytes | memoryview, level: int = 1) -> None:
    """Write `data` gzip-compressed to `path` (see `gzip_pieces`)."""
    with open(path, "wb") as handle:
        for piece in gzip_pieces(data, level):
            handle.write(piece)
