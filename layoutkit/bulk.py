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


# A64 PC-relative encodings (Arm ARM DDI 0487, C4.1): (name, mask, value, immediate
# layout). Each decodes to a byte displacement from the instruction's address.
A64_FORMS = ("b/bl", "b.cond/cbz/ldr-literal", "tbz/tbnz", "adr", "adrp+add")


def _sext(values: np.ndarray, bits: int) -> np.ndarray:
    values = values.astype(np.int64)
    sign = np.int64(1) << np.int64(bits - 1)
    result: np.ndarray = (values ^ sign) - sign
    return result


def a64_pcrel(stream: BinaryIO, offset: int, size: int, vaddr: int,
              ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Every A64 PC-relative branch or reference in a code region, vectorised.

    Returns, per chunk and form, (instruction addresses, target addresses, form index
    into A64_FORMS). ADRP's target is the page it names (pc & ~0xfff plus the offset).
    """
    out: list[tuple[np.ndarray, np.ndarray, int]] = []
    step = CHUNK - CHUNK % 4
    for pos in range(0, size - size % 4, step):
        length = min(step, size - size % 4 - pos)
        words = np.frombuffer(_read_exact(stream, offset + pos, length), dtype="<u4")
        pcs = np.arange(length // 4, dtype=np.int64) * 4 + (vaddr + pos)
        w = words.astype(np.int64)
        # B, BL: 0b?00101 imm26
        m = (words & 0x7C000000) == 0x14000000
        out.append((pcs[m], pcs[m] + _sext(w[m] & 0x3FFFFFF, 26) * 4, 0))
        # B.cond (0x54, bit 4 clear), CBZ/CBNZ (0b?011010), LDR literal (0b??011?00): imm19
        m = ((words & 0xFF000010) == 0x54000000) | ((words & 0x7E000000) == 0x34000000) | \
            ((words & 0x3B000000) == 0x18000000)
        out.append((pcs[m], pcs[m] + _sext((w[m] >> 5) & 0x7FFFF, 19) * 4, 1))
        # TBZ/TBNZ: 0b?011011 imm14
        m = (words & 0x7E000000) == 0x36000000
        out.append((pcs[m], pcs[m] + _sext((w[m] >> 5) & 0x3FFF, 14) * 4, 2))
        # ADR (op 0) and ADRP (op 1): immhi (bits 5-23) : immlo (bits 29-30)
        imm = _sext((((w >> 5) & 0x7FFFF) << 2) | ((w >> 29) & 3), 21)
        m = (words & 0x9F000000) == 0x10000000
        out.append((pcs[m], pcs[m] + imm[m], 3))
        m = (words & 0x9F000000) == 0x90000000
        out.append((pcs[m], (pcs[m] & ~0xFFF) + imm[m] * 4096, 4))
    return out
