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
A64_USER_TOP = 1 << 52  # arm64 VA_BITS is at most 52 (arch/arm64/Kconfig, ARM64_VA_BITS)
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
    Addresses are int64: the code must lie in an AArch64 user address space (below
    2^52, the widest VA_BITS), so that no address or target overflows.
    """
    if vaddr < 0 or vaddr + size > A64_USER_TOP:
        raise ValueError(f"A64 code [{vaddr:#x}, {vaddr + size:#x}) lies outside any "
                         f"AArch64 user address space (2^52)")
    out: list[tuple[np.ndarray, np.ndarray, int]] = []
    step = CHUNK - CHUNK % 4
    for pos in range(0, size - size % 4, step):
        length = min(step, size - size % 4 - pos)
        data = _read_exact(stream, offset + pos, length)
        words = np.frombuffer(data, dtype="<u4")
        # Classify by the top byte alone (one byte per word: cheap), then widen and
        # decode only the candidates.
        top = np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8)[3::4])
        masks = ((top & 0x7C) == 0x14,  # B, BL
                 (top == 0x54) | ((top & 0x7E) == 0x34) | ((top & 0x3B) == 0x18),
                 (top & 0x7E) == 0x36,  # TBZ/TBNZ
                 (top & 0x9F) == 0x10,  # ADR
                 (top & 0x9F) == 0x90)  # ADRP
        base = vaddr + pos
        for form, mask in enumerate(masks):
            sel = np.flatnonzero(mask)
            w = words[sel].astype(np.int64)
            if form == 1:  # B.cond must have bit 4 clear (bit 4 set is BC.cond/reserved)
                keep = ((w >> 24) != 0x54) | ((w & 0x10) == 0)
                sel, w = sel[keep], w[keep]
            pcs = sel.astype(np.int64) * 4 + base
            if form == 0:  # B, BL: imm26
                out.append((pcs, pcs + _sext(w & 0x3FFFFFF, 26) * 4, 0))
            elif form == 1:  # B.cond, CBZ/CBNZ, LDR (literal): imm19
                out.append((pcs, pcs + _sext((w >> 5) & 0x7FFFF, 19) * 4, 1))
            elif form == 2:  # TBZ/TBNZ: imm14
                out.append((pcs, pcs + _sext((w >> 5) & 0x3FFF, 14) * 4, 2))
            else:  # ADR, ADRP: immhi (bits 5-23) : immlo (bits 29-30)
                imm = _sext((((w >> 5) & 0x7FFFF) << 2) | ((w >> 29) & 3), 21)
                if form == 3:
                    out.append((pcs, pcs + imm, 3))
                else:
                    out.append((pcs, (pcs & ~0xFFF) + imm * 4096, 4))
    return out


def a64_section_refs(
    stream: BinaryIO, offset: int, size: int, vaddr: int, starts: list[int], ends: list[int],
    limits: list[tuple[int, int]], *, own: int, sample: int = 32,
) -> tuple[dict[tuple[int, int], list[int]], list[tuple[int, int]]]:
    """A64 PC-relative references from a code region into other sections, aggregated.

    ``starts``/``ends`` are the sorted sections' bounds, ``own`` the index of the code's
    own section (references within it are skipped), ``limits[form]`` the (disp_min,
    disp_max) of each form of A64_FORMS. Returns, per (form, target section index),
    ``[count, up, up_pc, up_target, down, down_pc, down_target]`` with ``up`` the least
    ``disp_max - d`` and ``down`` the least ``d - disp_min``, and a sample of (pc, target)
    pairs to confirm with a real decoder. ADRP names a page: it counts against every
    section that page overlaps.
    """
    lo_arr = np.asarray(starts, dtype=np.int64)
    hi_arr = np.asarray(ends, dtype=np.int64)
    result: dict[tuple[int, int], list[int]] = {}
    picked: list[tuple[int, int]] = []
    own_lo, own_hi = starts[own], ends[own]
    for all_pcs, all_targets, form in a64_pcrel(stream, offset, size, vaddr):
        if not len(all_pcs):
            continue
        picked.extend(zip(all_pcs[:sample].tolist(), all_targets[:sample].tolist(), strict=True))
        pcs, targets = all_pcs, all_targets
        span = 4096 if A64_FORMS[form] == "adrp+add" else 1
        # Most branches stay inside their own section: drop those first (cheap).
        away = (targets < own_lo) | (targets + (span - 1) >= own_hi)
        if not away.all():
            pcs, targets = pcs[away], targets[away]
        if not len(pcs):
            continue
        first = np.searchsorted(lo_arr, targets, side="right") - 1
        last = np.searchsorted(lo_arr, targets + (span - 1), side="right") - 1
        dmin, dmax = limits[form]
        disp = targets - pcs
        for shift in range(int((last - first).max(initial=0)) + 1):
            idx = first + shift
            ok = (idx >= 0) & (idx <= last) & (idx != own) & (idx < len(lo_arr))
            safe = np.clip(idx, 0, len(lo_arr) - 1)
            # The section overlaps [target, target + span): the byte or the ADRP page.
            ok &= (hi_arr[safe] > targets) & (lo_arr[safe] < targets + span)
            if not ok.any():
                continue
            for dst in np.unique(idx[ok]).tolist():
                sel = ok & (idx == dst)
                up = dmax - disp[sel]
                down = disp[sel] - dmin
                iu, idn = int(up.argmin()), int(down.argmin())
                sel_pcs, sel_tg = pcs[sel], targets[sel]
                entry = result.get((form, dst))
                new = [int(sel.sum()), int(up[iu]), int(sel_pcs[iu]), int(sel_tg[iu]),
                       int(down[idn]), int(sel_pcs[idn]), int(sel_tg[idn])]
                if entry is None:
                    result[(form, dst)] = new
                else:
                    entry[0] += new[0]
                    if new[1] < entry[1]:
                        entry[1:4] = new[1:4]
                    if new[4] < entry[4]:
                        entry[4:7] = new[4:7]
    return result, picked
