"""Bad /proc/PID/maps input: a MapsError naming the source (and the line), never a traceback.

Covers :func:`parse_maps` on damaged text, :func:`read_maps_file` on files that are not
maps listings, :func:`read_process_maps` on processes that are gone, dying or not ours,
and valid-but-unusual listings (100k lines, paths with spaces, deleted files, named
anonymous memory) that must parse to exact values.

Some cases reproduce bugs this suite found (now fixed): they stay as regressions.
"""

from __future__ import annotations

import mmap
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layoutkit.core.model import Perm
from layoutkit.errors import MapsError
from layoutkit.read.maps import (
    Mapping,
    MappingKind,
    ProcessMaps,
    parse_maps,
    read_maps_file,
    read_process_maps,
)
from tests.support import ROOT

FIXTURES = ROOT / "fixtures"
MAPS_DIR = FIXTURES / "maps"
CAPTURES = sorted(MAPS_DIR.glob("*.maps"))
SAMPLE = MAPS_DIR / "x86_64-mapfiles.maps"  # has deleted files, spaces, memfd, [vsyscall]
NOBODY = 65534


def maps_line(start: int, end: int, perms: str = "r--p", *, offset: int = 0,
              device: str = "fe:00", inode: int = 0, path: str = "") -> str:
    """One line as fs/proc/task_mmu.c prints it (padding to column 73 before a path)."""
    head = f"{start:08x}-{end:08x} {perms} {offset:08x} {device} {inode} "
    return f"{head:<73}{path}" if path else head


GOOD = [
    maps_line(0x400000, 0x401000, "r--p", device="08:01", inode=1234, path="/usr/bin/prog"),
    maps_line(0x401000, 0x402000, "r-xp", offset=0x1000, device="08:01", inode=1234,
              path="/usr/bin/prog"),
    maps_line(0x1000000, 0x1021000, "rw-p", device="00:00", path="[heap]"),
    maps_line(0x7F0000000000, 0x7F0000001000, "rw-p"),
]


def listing(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def fields(m: Mapping) -> tuple[object, ...]:
    """Everything a line states (``kind`` is inferred from the whole listing)."""
    return (m.start, m.end, m.perms, m.shared, m.offset, m.device, m.inode, m.path, m.deleted)


def assert_line_error(err: MapsError, source: str, line: int | None, words: str) -> None:
    assert err.line == line
    where = source if line is None else f"{source}:{line}"
    assert str(err).startswith(f"{where}: "), str(err)
    if line is not None:
        assert f":{line}:" in str(err)
    assert words in err.message, err.message


def assert_well_formed(maps: ProcessMaps) -> None:
    """What a successful parse promises: non-empty, sorted, disjoint, half-open spans."""
    assert maps.mappings
    previous_end = -1
    for m in maps.mappings:
        assert 0 <= m.start < m.end <= 1 << 64
        assert m.start >= previous_end
        previous_end = m.end


# -- damaged text -------------------------------------------------------------------------

GARBAGE = {
    "words": "hello, world",
    "half-a-line": "00400000-00401000 r-xp",
    "no-inode": "00400000-00401000 r-xp 00000000 08:01",
    "address-17-digits": maps_line(0x10000000000000000, 0x10000000000001000),
    "end-17-digits": "00400000-" + "1" * 17 + " r--p 00000000 00:00 0 ",
    "perms-rwzp": maps_line(0x400000, 0x401000, "rwzp"),
    "perms-short": "00400000-00401000 rw 00000000 00:00 0 ",
    "perms-5": "00400000-00401000 rwxpp 00000000 00:00 0 ",
    "hex-prefix": "0x400000-0x401000 r--p 00000000 00:00 0 ",
    "negative": "-400000-401000 r--p 00000000 00:00 0 ",
    "device-no-colon": "00400000-00401000 r--p 00000000 0801 0 ",
    "inode-hex": "00400000-00401000 r--p 00000000 08:01 1a2b ",
    "arabic-digits": "\u0664\u0660\u0660-\u0665\u0660\u0660 r--p 00000000 00:00 0 ",
    "tab-separated": "00400000-00401000\tr--p\t00000000\t00:00\t0",
    "nul": "\0",
}


@pytest.mark.parametrize("garbage", list(GARBAGE.values()), ids=list(GARBAGE))
@pytest.mark.parametrize("line", [1, 2, 4])
def test_garbage_line_is_numbered(garbage: str, line: int) -> None:
    lines = [*GOOD[:line - 1], garbage, *GOOD[line - 1:]]
    if line == 4:
        lines[2] = ""  # blank lines are skipped but still counted
    with pytest.raises(MapsError) as info:
        parse_maps(listing(*lines), source="capture.maps")
    assert_line_error(info.value, "capture.maps", line, "not a maps line")


def test_garbage_is_quoted_shortened() -> None:
    with pytest.raises(MapsError) as info:
        parse_maps("x" * 1000)
    assert_line_error(info.value, "maps", 1, "not a maps line")
    assert len(str(info.value)) < 120


@pytest.mark.parametrize("text", ["", "\n", "\n\n\n", "   \n\t\n"], ids=repr)
def test_empty_listing(text: str) -> None:
    with pytest.raises(MapsError) as info:
        parse_maps(text, source="pid 7")
    assert_line_error(info.value, "pid 7", None, "no mappings")


SPAN_ERRORS = {
    "overlap": ([maps_line(0x1000, 0x3000), maps_line(0x2000, 0x4000)], 2, "overlaps"),
    "same-start": ([maps_line(0x1000, 0x3000), maps_line(0x1000, 0x2000)], 2, "overlaps"),
    "unsorted": ([maps_line(0x5000, 0x6000), maps_line(0x1000, 0x2000)], 2, "is below"),
    "unsorted-later": ([*GOOD, maps_line(0x500000, 0x501000)], 5, "is below"),
    "start-equals-end": ([maps_line(0x1000, 0x2000), maps_line(0x3000, 0x3000)], 2,
                         "empty or inverted"),
    "start-above-end": ([maps_line(0x3000, 0x2000)], 1, "empty or inverted"),
    "zero-zero": ([maps_line(0, 0)], 1, "empty or inverted"),
}


@pytest.mark.parametrize("case", list(SPAN_ERRORS.values()), ids=list(SPAN_ERRORS))
def test_bad_spans(case: tuple[list[str], int, str]) -> None:
    lines, line, words = case
    with pytest.raises(MapsError) as info:
        parse_maps(listing(*lines), source="s.maps")
    assert_line_error(info.value, "s.maps", line, words)


def test_adjacent_spans_are_fine() -> None:
    maps = parse_maps(listing(maps_line(0x1000, 0x2000), maps_line(0x2000, 0x3000, "rw-p")))
    assert [(m.start, m.end) for m in maps.mappings] == [(0x1000, 0x2000), (0x2000, 0x3000)]


def test_top_of_the_address_space() -> None:
    maps = parse_maps(maps_line(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", path="[vsyscall]"))
    [m] = maps.mappings
    assert (m.start, m.end, m.kind) == (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, MappingKind.VDSO)


def _capture_text() -> str:
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE.name} not present yet")
    return SAMPLE.read_text()


def test_truncated_last_line() -> None:
    """Cut the last line anywhere: before its inode that is an error on that line;
    after it, the line still reads (a cut path cannot be told from a short one)."""
    text = _capture_text().rstrip("\n")
    full = parse_maps(text)
    head, last = text.rsplit("\n", 1)
    number = head.count("\n") + 2
    fixed = re.match(r"\S+ \S+ \S+ \S+ ", last)
    assert fixed is not None
    inode_at = fixed.end()
    for cut in range(len(last) + 1):
        text_cut = f"{head}\n{last[:cut]}"
        if cut == 0:  # the listing simply ends one line earlier
            assert [fields(m) for m in parse_maps(text_cut).mappings] == [
                fields(m) for m in full.mappings[:-1]]
        elif cut <= inode_at:
            with pytest.raises(MapsError) as info:
                parse_maps(text_cut, source="cut")
            assert_line_error(info.value, "cut", number, "not a maps line")
        else:
            maps = parse_maps(text_cut)
            assert [fields(m) for m in maps.mappings[:-1]] == [
                fields(m) for m in full.mappings[:-1]]
            assert fields(maps.mappings[-1])[:6] == fields(full.mappings[-1])[:6]
            assert full.mappings[-1].path.startswith(maps.mappings[-1].path)


# -- valid but unusual --------------------------------------------------------------------

def test_paths_with_spaces_and_deleted() -> None:
    lines = [
        maps_line(0x400000, 0x401000, "r-xp", inode=11, path="/opt/my app/bin/run me"),
        maps_line(0x600000, 0x601000, inode=12, path="/tmp/dir x/gone file.so (deleted)"),
        maps_line(0x602000, 0x603000, "rw-s", offset=0x2000, device="00:01", inode=13,
                  path="/memfd:jit code (deleted)"),
        maps_line(0x604000, 0x605000, inode=14, path="/data/a  b   c"),
        maps_line(0x606000, 0x607000, inode=15, path="/data/(deleted)"),
    ]
    maps = parse_maps(listing(*lines), executable="/opt/my app/bin/run me")
    got = [(m.path, m.deleted, m.kind) for m in maps.mappings]
    assert got == [
        ("/opt/my app/bin/run me", False, MappingKind.EXECUTABLE),
        ("/tmp/dir x/gone file.so", True, MappingKind.DELETED),
        ("/memfd:jit code", True, MappingKind.DELETED),
        ("/data/a  b   c", False, MappingKind.FILE),
        ("/data/(deleted)", False, MappingKind.FILE),
    ]
    assert maps.mappings[2].shared and maps.mappings[2].offset == 0x2000
    assert [str(m) for m in maps.mappings] == lines  # printed back as the kernel does


def test_capture_with_spaces_and_deleted() -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE.name} not present yet")
    maps = read_maps_file(str(SAMPLE))
    by_path = {m.path: m for m in maps.mappings}
    spaced = by_path["/tmp/layoutkit maps sample/deleted with spaces.bin"]
    assert (spaced.deleted, spaced.kind, spaced.inode) == (True, MappingKind.DELETED, 2146885)
    memfd = by_path["/memfd:layoutkit memfd"]
    assert (memfd.deleted, memfd.shared, memfd.start) == (True, True, 0x7F96AA125000)
    kept = by_path["/tmp/layoutkit maps sample/file with spaces.bin"]
    assert (kept.deleted, kept.kind) == (False, MappingKind.FILE)


def test_named_anonymous_memory() -> None:
    names = ["[anon:libc_malloc]", "[anon:JIT code cache]", "[anon_shmem:shared area]",
             "[anon:]", "[stack:1234]"]
    lines = [maps_line(0x10000 * (i + 1), 0x10000 * (i + 1) + 0x1000, "rw-p", path=name)
             for i, name in enumerate(names)]
    maps = parse_maps(listing(*lines))
    assert [(m.path, m.kind, m.deleted) for m in maps.mappings] == [
        ("[anon:libc_malloc]", MappingKind.ANONYMOUS, False),
        ("[anon:JIT code cache]", MappingKind.ANONYMOUS, False),
        ("[anon_shmem:shared area]", MappingKind.ANONYMOUS, False),
        ("[anon:]", MappingKind.ANONYMOUS, False),
        ("[stack:1234]", MappingKind.STACK, False),
    ]
    assert maps.executable is None
    assert maps.objects() == {}


def _synthetic(count: int) -> Iterator[str]:
    perms = ("r--p", "rw-p", "r-xp", "rw-s")
    for i in range(count):
        start = 0x10000 + i * 0x3000
        end = start + 0x1000 * (1 + i % 3)  # i % 3 == 2 touches the next mapping
        path = ("", f"/usr/lib/x86_64-linux-gnu/lib{i}.so.6",
                f"/tmp/dir with spaces/file {i} (deleted)", f"[anon:jit {i}]",
                f"/opt/data/blob{i}.bin")[i % 5]
        yield maps_line(start, end, perms[i % 4], offset=i * 0x1000, device="fe:01", inode=i,
                        path=path)


def test_hundred_thousand_lines() -> None:
    count = 100_000
    text = listing(*_synthetic(count),
                   maps_line(0x7FFC00000000, 0x7FFC00021000, "rw-p", path="[stack]"),
                   maps_line(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", path="[vsyscall]"))
    maps = parse_maps(text, source="big.maps")
    assert len(maps.mappings) == count + 2
    assert maps.executable == "/opt/data/blob4.bin"
    first, lib, deleted, anon, blob = maps.mappings[:5]
    assert first == Mapping(0x10000, 0x11000, Perm.R, False, 0, "fe:01", 0, "",
                            False, MappingKind.ANONYMOUS)
    assert lib == Mapping(0x13000, 0x15000, Perm.R | Perm.W, False, 0x1000, "fe:01", 1,
                          "/usr/lib/x86_64-linux-gnu/lib1.so.6", False, MappingKind.LIBRARY)
    assert deleted == Mapping(0x16000, 0x19000, Perm.R | Perm.X, False, 0x2000, "fe:01", 2,
                              "/tmp/dir with spaces/file 2", True, MappingKind.DELETED)
    assert anon == Mapping(0x19000, 0x1A000, Perm.R | Perm.W, True, 0x3000, "fe:01", 3,
                           "[anon:jit 3]", False, MappingKind.ANONYMOUS)
    assert blob.kind is MappingKind.EXECUTABLE
    middle = maps.mappings[54_321]
    assert (middle.start, middle.end, middle.inode, middle.path) == (
        0x10000 + 54_321 * 0x3000, 0x10000 + 54_321 * 0x3000 + 0x1000, 54_321,
        "/usr/lib/x86_64-linux-gnu/lib54321.so.6")
    last = maps.mappings[count - 1]
    assert (last.start, last.end, last.path, last.kind) == (
        0x10000 + 99_999 * 0x3000, 0x10000 + 99_999 * 0x3000 + 0x1000,
        "/opt/data/blob99999.bin", MappingKind.FILE)
    assert maps.mappings[-2].kind is MappingKind.STACK
    assert maps.mappings[-1].start == 0xFFFFFFFFFF600000
    assert len(maps.by_kind(MappingKind.DELETED)) == count // 5
    assert len(maps.objects()) == 3 * count // 5
    assert_well_formed(maps)


LINE_BREAKING = {"cr": "\r", "vt": "\x0b", "ff": "\x0c", "fs": "\x1c", "nel": "\x85",
                 "line-separator": "\u2028"}


@pytest.mark.parametrize("char", list(LINE_BREAKING.values()), ids=list(LINE_BREAKING))
def test_path_with_a_character_splitlines_breaks_on(char: str) -> None:
    name = f"/tmp/odd{char}name.so"
    text = listing(GOOD[0], maps_line(0x7F0000000000, 0x7F0000001000, inode=9, path=name),
                   maps_line(0x7F0000002000, 0x7F0000003000))
    maps = parse_maps(text)
    assert [m.path for m in maps.mappings] == ["/usr/bin/prog", name, ""]


def test_live_process_maps_a_file_named_with_carriage_return(tmp_path: Path) -> None:
    """The same bug on a real listing: this process maps a file called 'lib\\rjit.so'."""
    path = tmp_path / "lib\rjit.so"
    path.write_bytes(bytes(mmap.PAGESIZE))
    with path.open("rb") as stream, mmap.mmap(stream.fileno(), mmap.PAGESIZE,
                                              prot=mmap.PROT_READ):
        maps = read_process_maps(os.getpid())
    assert str(path) in [m.path for m in maps.mappings]


def test_path_with_trailing_space() -> None:
    maps = parse_maps(maps_line(0x1000, 0x2000, path="/tmp/trailing "))
    assert maps.mappings[0].path == "/tmp/trailing "


def test_escaped_newline_is_kept_as_printed() -> None:
    maps = parse_maps(maps_line(0x1000, 0x2000, path="/tmp/a\\012b"))
    assert maps.mappings[0].path == "/tmp/a\\012b"


# -- files that are not maps listings -----------------------------------------------------

def test_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.maps"
    path.write_bytes(b"")
    with pytest.raises(MapsError) as info:
        read_maps_file(str(path))
    assert_line_error(info.value, str(path), None, "no mappings")


@pytest.mark.parametrize(("data", "line"), [
    (b"\0" * 64, 1),
    (listing(*GOOD).encode() + b"\0", len(GOOD) + 1),
    (b"\x7fELF\x02\x01\x01\0" + bytes(56), 1),
], ids=["zeros", "trailing-nul", "elf-header"])
def test_file_binary(tmp_path: Path, data: bytes, line: int) -> None:
    """Refused at the line where the NUL byte is, before the rest is read."""
    path = tmp_path / "binary.maps"
    path.write_bytes(data)
    with pytest.raises(MapsError) as info:
        read_maps_file(str(path))
    assert_line_error(info.value, str(path), line, "binary data")


def test_file_not_utf8(tmp_path: Path) -> None:
    """Non-UTF-8 bytes in a path are kept (surrogateescape), not an error."""
    path = tmp_path / "latin1.maps"
    path.write_bytes(maps_line(0x1000, 0x2000, path="/tmp/caf\xe9").encode("latin-1"))
    maps = read_maps_file(str(path))
    assert os.fsencode(maps.mappings[0].path) == b"/tmp/caf\xe9"


def test_file_directory(tmp_path: Path) -> None:
    with pytest.raises(MapsError) as info:
        read_maps_file(str(tmp_path))
    assert_line_error(info.value, str(tmp_path), None, "directory")


def test_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.maps"
    with pytest.raises(MapsError) as info:
        read_maps_file(str(path))
    assert_line_error(info.value, str(path), None, "no such file")


def test_file_garbage_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.maps"
    path.write_text(listing(GOOD[0], GOOD[1], "garbage"))
    with pytest.raises(MapsError) as info:
        read_maps_file(str(path))
    assert_line_error(info.value, str(path), 3, "not a maps line")


def test_file_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.maps"
    os.mkfifo(path)
    script = ("import sys\nfrom layoutkit.read.maps import read_maps_file\n"
              "from layoutkit.errors import LayoutkitError\n"
              "try:\n    read_maps_file(sys.argv[1])\nexcept LayoutkitError as e:\n"
              "    print(type(e).__name__); print(e)\n")
    try:
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                              text=True, timeout=3, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("read_maps_file blocked opening a FIFO")
    assert done.stdout.splitlines()[0] == "MapsError"


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_captures_parse(capture: Path) -> None:
    """Every committed capture is a valid listing (the fuzz seeds below rely on it)."""
    maps = read_maps_file(str(capture))
    assert_well_formed(maps)
    assert len(maps.mappings) == sum(1 for line in capture.read_text().splitlines() if line)


# -- live processes -----------------------------------------------------------------------

def _unused_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 300, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    pytest.skip("no free pid found")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("pid", [0, -1])
def test_not_a_pid(pid: int) -> None:
    with pytest.raises(MapsError) as info:
        read_process_maps(pid)
    assert_line_error(info.value, f"pid {pid}", None, "not a process id")


def test_pid_that_does_not_exist() -> None:
    pid = _unused_pid()
    with pytest.raises(MapsError) as info:
        read_process_maps(pid)
    assert_line_error(info.value, f"pid {pid}", None, "no such process")


def test_process_that_exited() -> None:
    proc = subprocess.Popen(["sleep", "0.01"])
    proc.wait()
    with pytest.raises(MapsError) as info:
        read_process_maps(proc.pid)
    assert_line_error(info.value, f"pid {proc.pid}", None, "no such process")


def test_zombie() -> None:
    proc = subprocess.Popen(["true"])  # never waited for until the end: a zombie
    try:
        deadline = time.monotonic() + 10
        while _state(proc.pid) != "Z":
            assert time.monotonic() < deadline, "child did not become a zombie"
            time.sleep(0.005)
        with pytest.raises(MapsError) as info:
            read_process_maps(proc.pid)
        assert_line_error(info.value, f"pid {proc.pid}", None, "no user address space")
    finally:
        proc.wait()


def test_own_process() -> None:
    maps = read_process_maps(os.getpid())
    assert maps.source == f"pid {os.getpid()}"
    assert maps.executable == os.path.realpath(sys.executable)
    assert maps.by_kind(MappingKind.EXECUTABLE)
    assert maps.by_kind(MappingKind.STACK)
    assert_well_formed(maps)


def test_another_users_process() -> None:
    """A root process read by uid 65534: "permission denied".

    The reader is started with ``setpriv --reuid=65534 --regid=65534 --clear-groups``;
    it also gets CAP_DAC_READ_SEARCH as an ambient capability, only so that it can load
    an interpreter installed under /root (mode 700). That capability does not bypass the
    ptrace access check that guards /proc/PID/maps (CAP_SYS_PTRACE would).
    """
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux)")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        script = ("import sys\nfrom layoutkit.read.maps import read_process_maps\n"
              "from layoutkit.errors import LayoutkitError\n"
                  "try:\n    read_process_maps(int(sys.argv[1]))\nexcept LayoutkitError as e:\n"
                  "    print(type(e).__name__); print(e)\nelse:\n    print('read it')\n")
        env = {k: v for k, v in os.environ.items() if k != "LAYOUTKIT_DEBUG"}
        done = subprocess.run(
            [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
             sys.executable, "-c", script, str(sleeper.pid)],
            capture_output=True, text=True, timeout=60, env=env, cwd="/", check=False)
        if not done.stdout:
            pytest.skip(f"could not run python as uid {NOBODY}: {done.stderr.strip()[-300:]}")
        kind, message = done.stdout.splitlines()[:2]
        assert kind == "MapsError", done.stdout
        assert message.startswith(f"pid {sleeper.pid}: permission denied"), message
    finally:
        sleeper.kill()
        sleeper.wait()


# -- fuzzing ------------------------------------------------------------------------------

MAPS_ALPHABET = "0123456789abcdefABCDEF-: rwxpsS[]/.\n\t()"


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(text=st.one_of(st.text(max_size=400), st.text(alphabet=MAPS_ALPHABET, max_size=400)))
def test_fuzz_random_text(text: str) -> None:
    """Random text: a listing or a MapsError, nothing else."""
    try:
        maps = parse_maps(text, source="fuzz")
    except MapsError as err:
        assert str(err).startswith("fuzz"), str(err)
        return
    assert_well_formed(maps)


_CAPTURE_TEXTS = [c.read_text() for c in CAPTURES[:4]]
Edit = tuple[float, int, str]  # (where, 0 replace / 1 insert / 2 delete, text)


@st.composite
def mutated_capture(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_CAPTURE_TEXTS))
    edits = draw(st.lists(st.tuples(
        st.floats(0, 1, exclude_max=True), st.integers(0, 2),
        st.text(alphabet=st.one_of(st.sampled_from(list(MAPS_ALPHABET)), st.characters()),
                min_size=1, max_size=3)), min_size=1, max_size=8))
    for where, op, chunk in edits:
        at = int(where * len(text))
        if op == 0:
            text = text[:at] + chunk + text[at + len(chunk):]
        elif op == 1:
            text = text[:at] + chunk + text[at:]
        else:
            text = text[:at] + text[at + len(chunk):]
    return text


@pytest.mark.skipif(not _CAPTURE_TEXTS, reason="no maps captures present yet")
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(text=mutated_capture())
def test_fuzz_mutated_capture(text: str) -> None:
    """A damaged real capture: a MapsError, or a listing whose lines print back to themselves."""
    try:
        maps = parse_maps(text, source="fuzz")
    except MapsError as err:
        assert str(err).startswith("fuzz"), str(err)
        return
    assert_well_formed(maps)
    again = parse_maps("\n".join(str(m) for m in maps.mappings))
    assert [fields(m) for m in again.mappings] == [fields(m) for m in maps.mappings]
