"""The SVG picture and the terminal view, drawn from real Accounting values.

Real inputs: the kernel-model prediction for three fixture binaries and the accounting
of one real maps capture. The SVG is checked as XML (one element per occupant, labels
that do not overlap, the break where a huge stretch would dominate) and rendered to PNG
by rsvg-convert to prove it draws. The terminal view is checked line for line against a
hand-made accounting whose cells are worked out by arithmetic here.
"""

from __future__ import annotations

import json
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layoutkit.core.arches import by_name
from layoutkit.core.kinds import OccupantKind as K
from layoutkit.core.scenario import Demand, Scenario
from layoutkit.core.spans import Span
from layoutkit.elf import ElfReader
from layoutkit.output.geometry import CHAR_WIDTH, FONT, MIN_WIDTH
from layoutkit.output.legend import FREE_COLOUR, KIND_COLOURS, KIND_SYMBOLS, colour, symbol
from layoutkit.output.svg import svg
from layoutkit.output.terminal import _cell_of, _cells, terminal_view
from layoutkit.ranges import default_form
from layoutkit.read.maps import MappingKind, read_maps_file
from layoutkit.window.accounting import Accounting, Occupant, account, occupant_kind
from layoutkit.window.kernel import KernelConfig
from layoutkit.window.layout import predict
from layoutkit.window.profiles import JitWindow, jit_window, profile
from tests.support import ELF_DIR, MAPS_DIR, require

NS = "{http://www.w3.org/2000/svg}"
KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Case:
    name: str
    acc: Accounting
    anchor: Span
    jit_areas: tuple[Span, ...] = ()


@cache
def predicted(binary: str, jit: str) -> tuple[Accounting, Accounting, Span]:
    """Worst and best accounting of ``binary``'s lj_vm_exit_handler, 256 states."""
    reader = ElfReader(str(ELF_DIR / binary))
    image = reader.image()
    kernel = KernelConfig.for_arch(image.arch)
    bias, _ = kernel.nominal_bias(image, randomize=True)
    sym = reader.symbol("lj_vm_exit_handler")
    assert sym is not None
    anchor = sym.value + bias
    window = jit_window(jit, image.arch, anchor, kernel.user_space)
    p = predict(image, kernel, window, bias, Scenario(demand=Demand(states=256)))
    return p.worst, p.best, Span(anchor, anchor + max(sym.size, 1))


@cache
def from_maps() -> Case:
    """x86_64-nopie-jit4: the real maps, anonymous executable mappings as "jit"."""
    maps = read_maps_file(str(MAPS_DIR / "x86_64-nopie-jit4.maps"))
    meta = json.loads((MAPS_DIR / "x86_64-nopie-jit4.meta.json").read_text())
    occupants = [Occupant(K.JIT if m.kind is MappingKind.ANONYMOUS and m.executable
                          else occupant_kind(m.kind), m.span, m.path) for m in maps.mappings]
    anchor = int(meta["lj_vm_exit_handler"], 16)
    jit = jit_window("luajit-2.1", by_name("x86_64"), anchor, Span(0x10000, 0x7ffffffff000))
    areas = tuple(Span(int(a["address"], 16), int(a["address"], 16) + 64 * KiB)
                  for a in meta["jit_areas"])
    return Case("x86_64-nopie-jit4.maps", account(jit, occupants, states=256),
                Span(anchor, anchor + 1), areas)


def cases() -> list[Case]:
    a64_worst, _, a64_anchor = predicted("aarch64/nopie", "luajit-2.1")
    seg_worst, seg_best, seg_anchor = predicted("aarch64/nopie-bfd-textseg", "luajit-2.1")
    gen_worst, _, gen_anchor = predicted("x86_64/nopie", "generic")
    return [Case("aarch64/nopie worst", a64_worst, a64_anchor),
            Case("aarch64/nopie-bfd-textseg worst", seg_worst, seg_anchor),
            Case("aarch64/nopie-bfd-textseg best", seg_best, seg_anchor),
            Case("x86_64/nopie generic worst", gen_worst, gen_anchor),
            from_maps()]


CASES = cases()
IDS = [c.name for c in CASES]


def draw(case: Case) -> str:
    return svg(case.acc, case.anchor, title=case.name, jit_areas=case.jit_areas)


def elements(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == cls]


def texts(root: ET.Element, cls: str) -> list[str]:
    return ["".join(e.itertext()) for e in elements(root, cls)]


# --- the inputs are what the brief says they are ---------------------------------------------


def test_the_real_inputs_have_the_features_the_picture_must_handle() -> None:
    a64, _, _ = predicted("aarch64/nopie", "luajit-2.1")
    # Window clipped at the bottom by mmap_min_addr, most of it under the heap reserve.
    assert a64.jit.window.start == 0x1000
    assert [o.kind.value for o in a64.occupants][-1] == "heap-reserve"
    assert {o.kind.value for o in a64.occupants} == {"image", "heap-reserve"}
    gen, _, _ = predicted("x86_64/nopie", "generic")
    # About 1 GiB of window (the mutual-reach width 2^31 - 4 centred on the anchor,
    # clipped at the bottom) with a 32 KiB image.
    assert gen.jit.window.size > 1000 * MiB
    assert sum(o.span.size for o in gen.occupants if o.kind.value == "image") == 32 * KiB
    maps = from_maps().acc
    assert [o.kind.value for o in maps.occupants] == ["jit", *["image"] * 5, "heap"]


# --- SVG -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_svg_is_well_formed_and_carries_title_anchor_and_summary(case: Case) -> None:
    root = ET.fromstring(draw(case))
    assert root.tag == f"{NS}svg"
    assert root.findtext(f"{NS}title") == case.name
    assert texts(root, "title") == [case.name]
    assert texts(root, "anchor-label") == [f"anchor {case.anchor.start:#x}"]
    acc = case.acc
    (summary,) = texts(root, "summary")
    assert f"free slots {acc.free_slots} / {acc.slots}" in summary
    (verdict,) = texts(root, "verdict")
    cap = acc.capacity
    assert f"{cap.states_fit} JIT states fit, {cap.states_requested} requested" in verdict
    assert verdict.endswith(cap.verdict.value)
    assert ("miss probability" in verdict) == (acc.miss_probability is not None)
    ticks = texts(root, "tick-label")
    assert f"{acc.jit.window.start:#x}" in ticks
    assert f"{acc.jit.window.end:#x}" in ticks


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_svg_draws_every_occupant_and_free_run_visibly_in_address_order(case: Case) -> None:
    root = ET.fromstring(draw(case))
    occupants = elements(root, "occupant")
    assert [e.get("data-kind") for e in occupants] == [o.kind.value for o in case.acc.occupants]
    free = elements(root, "free")
    assert len(free) == len(case.acc.free)
    assert len(elements(root, "jit-area")) == len(case.jit_areas)
    for e in occupants + free:
        assert float(e.get("width", "0")) >= MIN_WIDTH - 0.05
    xs = [float(e.get("x", "0")) for e in occupants]
    assert xs == sorted(xs)
    for e, occ in zip(occupants, case.acc.occupants, strict=True):
        assert e.get("fill") == colour(occ.kind)
        assert occ.kind.value in "".join(e.itertext())  # the tooltip names it


def text_boxes(root: ET.Element) -> list[tuple[str, float, float, float]]:
    """(text, left, right, baseline) of every text element, widths estimated from the
    monospace advance the module also uses."""
    boxes = []
    for e in root.iter(f"{NS}text"):
        text = "".join(e.itertext())
        size = float(e.get("font-size", str(FONT)))
        width = len(text) * CHAR_WIDTH * size / FONT
        x = float(e.get("x", "0"))
        left = x - width / 2 if e.get("text-anchor") == "middle" else x
        boxes.append((text, left, left + width, float(e.get("y", "0"))))
    return boxes


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_svg_text_never_overlaps_and_stays_on_the_canvas(case: Case) -> None:
    root = ET.fromstring(draw(case))
    canvas = float(root.get("width", "0"))
    boxes = text_boxes(root)
    for text, left, right, _ in boxes:
        assert left >= 0 and right <= canvas, text
    for i, (a, a0, a1, ay) in enumerate(boxes):
        for b, b0, b1, by in boxes[i + 1:]:
            if abs(ay - by) < FONT:
                assert a1 <= b0 or b1 <= a0, (a, b)
    # Item labels keep clear of the anchor line.
    (line,) = elements(root, "anchor")
    ax = float(line.get("x1", "0"))
    for e in elements(root, "item-label"):
        text, left, right, _ = text_boxes(ET.fromstring(ET.tostring(e)))[0]
        assert not left < ax < right, text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_svg_labels_the_anchor_occupant_and_the_legend_names_every_kind(case: Case) -> None:
    root = ET.fromstring(draw(case))
    holder = next(o for o in case.acc.occupants if case.anchor.start in o.span)
    assert any(label.startswith(holder.kind.value) for label in texts(root, "item-label"))
    legend = root.find(f".//{NS}g[@class='legend']")
    assert legend is not None
    names = {"".join(t.itertext()) for t in legend.iter(f"{NS}text")}
    assert {o.kind.value for o in case.acc.occupants} <= names


def test_svg_breaks_a_dominating_stretch_and_draws_a_balanced_one_to_scale() -> None:
    by_name_ = {c.name: ET.fromstring(draw(c)) for c in CASES}
    # 1 GiB of window, a 32 KiB image: the 960 MiB free run above the heap reserve is
    # broken, and the image is wide enough to see.
    generic = by_name_["x86_64/nopie generic worst"]
    assert "≈ 960 MiB" in texts(generic, "break-label")
    assert len(elements(generic, "break")) == len(texts(generic, "break-label")) >= 1
    (image,) = elements(generic, "occupant")[:1]
    assert float(image.get("width", "0")) >= MIN_WIDTH
    # The heap reserve covers 94% of the aarch64/nopie window: one break, in it.
    a64 = by_name_["aarch64/nopie worst"]
    reserve = [e for e in elements(a64, "occupant") if e.get("data-kind") == "heap-reserve"]
    (cut,) = elements(a64, "break")
    xs = [float(p.split(",")[0]) for p in cut.get("points", "").split()]
    left = float(reserve[0].get("x", "0"))
    assert left < min(xs) and max(xs) < left + float(reserve[0].get("width", "0"))
    # Free run and heap reserve halve the textseg window: no break, drawn to scale.
    textseg = by_name_["aarch64/nopie-bfd-textseg worst"]
    assert elements(textseg, "break") == []
    free, reserve_ = elements(textseg, "free")[0], elements(textseg, "occupant")[-1]
    acc = next(c for c in CASES if c.name == "aarch64/nopie-bfd-textseg worst").acc
    assert reserve_.get("data-kind") == acc.occupants[-1].kind.value == "heap-reserve"
    reserve_in_window = acc.occupants[-1].span.overlap(acc.jit.window)
    ratio = float(free.get("width", "0")) / float(reserve_.get("width", "0"))
    assert ratio == pytest.approx(acc.free[0].size / reserve_in_window, rel=0.02)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_svg_is_deterministic(case: Case) -> None:
    assert draw(case) == draw(case)


def test_every_occupant_kind_has_a_colour_and_a_symbol() -> None:
    assert set(KIND_COLOURS) == set(K) == set(KIND_SYMBOLS)


def test_svg_escapes_labels() -> None:
    acc = hand_made()
    odd = Occupant(K.ANONYMOUS, Span(0x2800000, 0x2810000), 'a "b" & <c>\x01\udcff')
    acc2 = account(acc.jit, [*acc.occupants, odd])
    doc = svg(acc2, Span(0x2001234, 0x2001235), title='<script>&"x"</script>')
    root = ET.fromstring(doc)
    assert root.findtext(f"{NS}title") == '<script>&"x"</script>'
    (weird,) = [e for e in elements(root, "occupant") if "<c>" in "".join(e.itertext())]
    assert 'a "b" & <c>??' in "".join(weird.itertext())


# --- rendering -----------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct colours of an 8-bit RGB/RGBA PNG (no interlace)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    header = b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0) and ctype in (2, 6)
    bpp = 4 if ctype == 6 else 3
    raw, stride = zlib.decompress(idat), width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        kind_ = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # PNG spec section 9: filter types 0-4
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind_ == 1:
                line[i] = (line[i] + a) & 255
            elif kind_ == 2:
                line[i] = (line[i] + b) & 255
            elif kind_ == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind_ == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, colours


def rgb(hex_colour: str) -> bytes:
    return bytes.fromhex(hex_colour.removeprefix("#"))


@pytest.mark.toolchain
@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=[IDS[0], IDS[3], IDS[4]])
def test_svg_really_renders_with_rsvg_convert(case: Case, tmp_path: Path) -> None:
    tool = require("rsvg-convert")
    doc = draw(case)
    source = tmp_path / "picture.svg"
    source.write_text(doc, encoding="utf-8")
    target = tmp_path / "picture.png"
    subprocess.run([tool, "-o", str(target), str(source)], check=True, timeout=60)
    root = ET.fromstring(doc)
    width, height, colours = png_pixels(target.read_bytes())
    assert (width, height) == (int(root.get("width", "0")), int(root.get("height", "0")))
    # Not blank: the white page, the free runs and every occupant's colour are there.
    assert {rgb("#ffffff"), rgb(FREE_COLOUR)} <= colours
    assert {rgb(colour(o.kind)) for o in case.acc.occupants} <= colours
    assert len(colours) > 50  # anti-aliased text and lines


# --- terminal view -------------------------------------------------------------------------


def hand_made() -> Accounting:
    """A 40 MiB window [0x1000000, 0x3800000): 1 MiB per cell at width 40.

    usable [0x1010000, 0x3600000): the first 64 KiB and the top 2 MiB are not usable.
    """
    jit = JitWindow(profile("luajit-2.1"), default_form(by_name("x86_64")),
                    target=0x2000000, window=Span(0x1000000, 0x3800000),
                    usable=Span(0x1010000, 0x3600000), hint_lo=0x1000000,
                    hint_hi=0x3800000, slot=64 * KiB, random_probes=30)
    return account(jit, [
        Occupant(K.JIT, Span(0x1400000, 0x1410000)),  # 64 KiB in cell 4
        Occupant(K.ANONYMOUS, Span(0x1800000, 0x19C0000)),  # cells 8, 9 (768 KiB of 9)
        Occupant(K.IMAGE, Span(0x2000000, 0x2040000), "/bin/x"),  # 256 KiB in cell 16
        Occupant(K.HEAP, Span(0x2100000, 0x2300000), "[heap]"),  # cells 17, 18
        Occupant(K.HEAP_RESERVE, Span(0x2300000, 0x3300000), "[heap]"),  # cells 19-34
        Occupant(K.ANONYMOUS, Span(0x4000000, 0x4100000)),  # outside: not accounted
    ])


def test_terminal_view_of_a_hand_made_window_is_exact() -> None:
    acc = hand_made()
    anchor = Span(0x2001234, 0x2001235)
    lines = terminal_view(acc, anchor, width=40)
    cell = (0x3800000 - 0x1000000) // 40
    assert cell == MiB
    # Cell i covers [0x1000000 + i MiB, + 1 MiB).
    #  0-3   free (cell 0: 64 KiB unusable, 960 KiB free)            "...."
    #  4     64 KiB jit, 960 KiB free: free wins, but the jit area
    #        would vanish, so it takes the cell holding its middle     "J"
    #  5-7   free                                                      "..."
    #  8     anonymous; 9: 768 KiB anonymous, 256 KiB free             "aa"
    #  10-15 free                                                      "......"
    #  16    256 KiB image, 768 KiB free: forced like the jit area     "#"
    #  17-18 heap; 19-34 heap reserve                                  "hh" + "H" * 16
    #  35-37 free up to the end of the usable span                     "..."
    #  38-39 [0x3600000, 0x3800000): not usable                        "--"
    bar = "...." + "J" + "..." + "aa" + "......" + "#" + "hh" + "H" * 16 + "..." + "--"
    anchor_cell = (0x2001234 - 0x1000000) * 40 // 0x2800000
    assert anchor_cell == 16
    assert lines == [
        bar,
        " " * 16 + "^ anchor 0x2001234",
        "0x1000000" + " " * (40 - 18) + "0x3800000",
        ". free  # image/library  h heap",
        "H heap-reserve  J jit  a anonymous",
        "- unusable",
    ]
    assert all(len(line) <= 40 for line in lines)


def test_terminal_view_marks_jit_areas_and_an_anchor_near_the_right_edge() -> None:
    acc = hand_made()
    # A planned JIT area over free cells 36-37 outvotes the free bytes there; the
    # anchor in cell 37 has no room for its label on the right.
    area = Span(0x3400000, 0x3600000)
    lines = terminal_view(acc, Span(0x35FFFFF, 0x3600000), width=40, jit_areas=[area])
    assert lines[0][34:] == "H.JJ--"
    assert lines[1] == " " * (37 - 1 - len("anchor 0x35fffff")) + "anchor 0x35fffff ^"
    assert lines[1].index("^") == 37


@given(st.integers(0, 1 << 48), st.integers(1, 1 << 40), st.integers(40, 200))
def test_terminal_view_cells_agree_with_the_anchor_arithmetic(s: int, n: int, w: int) -> None:
    # The "^" goes under cell (a - s) * w // n; the bar must count address a in that
    # same cell, also when n is not a multiple of w.
    window = Span(s, s + n)
    cells = _cells(window, w)
    assert cells[0].start == window.start and cells[-1].end == window.end
    for i, cell in enumerate(cells):
        if i:
            assert cell.start == cells[i - 1].end
        if not cell.empty:
            assert _cell_of(window, w, cell.start) == i == _cell_of(window, w, cell.end - 1)


def test_terminal_view_needs_room_for_two_addresses() -> None:
    with pytest.raises(ValueError, match="at least 40"):
        terminal_view(hand_made(), Span(0x2001234, 0x2001235), width=39)


def test_terminal_view_anchor_outside_the_window_points_off_the_edge() -> None:
    acc = hand_made()
    assert terminal_view(acc, Span(0x100, 0x101), width=40)[1] == "< anchor 0x100"
    assert terminal_view(acc, Span(0x9000000, 0x9000001), width=40)[1] == (
        "anchor 0x9000000 >".rjust(40))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("width", [40, 72, 120])
def test_terminal_view_of_real_accounting_respects_width(case: Case, width: int) -> None:
    lines = terminal_view(case.acc, case.anchor, width=width, jit_areas=case.jit_areas)
    window = case.acc.jit.window
    assert len(lines[0]) == width
    assert all(len(line) <= width for line in lines)
    assert all(line.isascii() for line in lines)
    assert lines[1].index("^") == (case.anchor.start - window.start) * width // window.size
    assert lines[2].startswith(f"{window.start:#x} ") and lines[2].endswith(f"{window.end:#x}")
    # The anchor's occupant is never lost, however small (it is forced into a cell).
    holder = next(o for o in case.acc.occupants if case.anchor.start in o.span)
    assert symbol(holder.kind) in lines[0]
    assert set(lines[0]) <= set(".#hHJ-")


def test_terminal_view_of_the_maps_capture() -> None:
    case = from_maps()
    lines = terminal_view(case.acc, case.anchor, jit_areas=case.jit_areas)
    # 1 GiB in 72 cells (about 14.2 MiB each): cell 0 holds the jit areas, the image
    # (the anchor's, so it wins the cell) and free space; the 132 KiB heap at
    # 0x1a445000 is in cell (0x1a445000 - 0x10000) * 72 // 0x401f0000 = 29.
    window = case.acc.jit.window
    heap_cell = (0x1A445000 + 0x21000 // 2 - window.start) * 72 // window.size
    assert heap_cell == 29
    assert lines[0] == "#" + "." * 28 + "h" + "." * 42
    assert lines[1] == "^ anchor 0x4044a0"
    assert lines[2] == "0x10000" + " " * (72 - 17) + "0x40200000"
    assert lines[3] == ". free  # image/library  h heap"
