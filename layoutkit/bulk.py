"""Streamed scans over large file regions in bounded memory; the only module importing numpy.

Symbol tables of large binaries hold hundreds of thousands of entries; walking them
one parsed entry at a time (pyelftools: about 45k symbols/s) takes seconds. These
helpers read a region in fixed-size chunks and match with bytes.find or numpy, so time
is linear in bytes and memory stays at one chunk whatever the file size.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import BinaryIO

import numpy as np

CHUNK = 4 << 20  # bytes read per step


def _read_exact(stream: BinaryIO, offset: int, size: int) -> bytes:
    stream.seek(offset)
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"short read at {offset:#x}: wanted {size} bytes, got {len(data)}")
    return data


def find_all(stream: BinaryIO, offset: int, size: int, needle: bytes) -> list[int]:
    """Every position (relative to ``offset``) where ``needle`` starts in the region."""
    if not needle:
        raise ValueError("empty needle")
    found: list[int] = []
    # Each chunk after the first starts len(needle) - 1 bytes early, so a match across
    # the seam is seen; a match found there cannot lie wholly in the previous chunk.
    overlap = len(needle) - 1
    pos = 0
    while pos < size:
        length = min(CHUNK, size - pos)
        start = max(0, pos - overlap)
        chunk = _read_exact(stream, offset + start, pos + length - start)
        hit = chunk.find(needle)
        while hit != -1:
            found.append(start + hit)
            hit = chunk.find(needle, hit + 1)
        pos += length
    return found


def match_u32(
    stream: BinaryIO,
    offset: int,
    count: int,
    record_size: int,
    wanted: Collection[int],
    *,
    little_endian: bool,
    field_offset: int = 0,
) -> list[int]:
    """Indexes of the fixed-size records whose 32-bit field equals one of ``wanted``."""
    if not wanted or count == 0:
        return []
    dtype = np.dtype(
        {
            "names": ["field"],
            "formats": ["<u4" if little_endian else ">u4"],
            "offsets": [field_offset],
            "itemsize": record_size,
        }
    )
    keys = np.fromiter(wanted, dtype=np.uint32, count=len(wanted))
    per_chunk = max(1, CHUNK // record_size)
    hits: list[int] = []
    for first in range(0, count, per_chunk):
        n = min(per_chunk, count - first)
        data = _read_exact(stream, offset + first * record_size, n * record_size)
        fields = np.frombuffer(data, dtype=dtype)["field"]
        hits.extend(int(i) + first for i in np.flatnonzero(np.isin(fields, keys)))
    return hits
