"""The guest's initramfs, written from Python: a newc cpio archive with ``/init``, the
programs to run and their arguments, and what a dynamic program needs (its loader and
libraries from the cross sysroot)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core import arches
from layoutkit.core.arches import Arch
from layoutkit.elf import ElfReader
from layoutkit.errors import LayoutkitError, ProbeError, UsageError
from layoutkit.native.toolchain import TARGETS

# The guest's scratch folder: /init (native/init.c) creates it, world-writable, in the
# initramfs; report files of programs run in the guest go there.
GUEST_TMP = "/tmp"


def _newc(name: str, mode: int, data: bytes = b"", ino: int = 0,
          rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc (SVR4, no CRC) cpio entry, padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + encoded
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


@dataclass(frozen=True)
class GuestProgram:
    """One program for ``/init`` to run (``init.c``): its arguments, environment, whether
    it does the probe's handshake, and the guest path of a report file it leaves."""

    path: Path  # on the host; placed under /bin in the guest
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # NAME=VALUE
    handshake: bool = False  # probe.c --handshake: /init relays its first line and answer
    report: str | None = None  # a file the program (or its forked copy) writes, waited for

    @classmethod
    def of(cls, item: GuestProgram | tuple[Path, Sequence[str]]) -> GuestProgram:
        return item if isinstance(item, GuestProgram) else cls(item[0], tuple(item[1]))


def initramfs(init: Path, programs: Sequence[GuestProgram | tuple[Path, Sequence[str]]],
              files: Mapping[str, Path] | None = None) -> bytes:
    """A newc initramfs: /init, /dev/console, each program under /bin, /layoutkit.conf,
    and ``files`` (guest path -> host file: a dynamic program's loader and libraries)."""
    entries = [("dev", 0o040755, b"", (0, 0)), ("dev/console", 0o020600, b"", (5, 1)),
               ("dev/null", 0o020666, b"", (1, 3)), ("proc", 0o040555, b"", (0, 0)),
               ("tmp", 0o041777, b"", (0, 0)), ("bin", 0o040755, b"", (0, 0)),
               ("init", 0o100755, init.read_bytes(), (0, 0))]
    folders = {"dev", "proc", "tmp", "bin"}
    extra = files or {}
    for guest in sorted(extra):
        parts = guest.strip("/").split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder not in folders:
                folders.add(folder)
                entries.append((folder, 0o040755, b"", (0, 0)))
        entries.append(("/".join(parts), 0o100755, extra[guest].read_bytes(), (0, 0)))
    conf = [b"layoutkit-guest-2"]
    placed: dict[Path, str] = {}
    for item in programs:
        program = GuestProgram.of(item)
        key = program.path.resolve()
        if key not in placed:
            placed[key] = f"bin/{len(placed)}-{program.path.name}"
            entries.append((placed[key], 0o100755, program.path.read_bytes(), (0, 0)))
        conf += [b"1" if program.handshake else b"0", (program.report or "").encode(),
                 str(len(program.env)).encode(), *(e.encode() for e in program.env),
                 str(1 + len(program.args)).encode(), f"/{placed[key]}".encode(),
                 *(a.encode() for a in program.args)]
    entries.append(("layoutkit.conf", 0o100644, b"\0".join(conf) + b"\0", (0, 0)))
    out = b"".join(_newc(name, mode, data, ino, rdev)
                   for ino, (name, mode, data, rdev) in enumerate(entries, start=1))
    return out + _newc("TRAILER!!!", 0)


def _elf(path: Path) -> tuple[str | None, tuple[str, ...]]:
    """``path``'s PT_INTERP and DT_NEEDED."""
    try:
        with ElfReader(path) as reader:
            image = reader.image()
    except LayoutkitError as e:
        raise UsageError(f"{path}: not a program the guest can run: {e}") from e
    return image.interpreter, image.needed


def runtime_files(arch: Arch | str, program: Path) -> dict[str, Path]:
    """What ``program`` needs in the guest (guest path -> host file): for a dynamic one,
    its loader at its PT_INTERP path and its DT_NEEDED libraries, transitively, in
    ``/lib/<triplet>`` (on the loader's default search path). A library is taken from
    the program's own folder first (liblkprobe.so beside a twin), then from the cross
    sysroot ``/usr/<triplet>/lib``. Nothing for a static program."""
    arch = arch if isinstance(arch, Arch) else arches.by_name(arch)
    interp, needed = _elf(program)
    if interp is None:
        return {}
    target = TARGETS.get(arch.name)
    if target is None:
        raise ProbeError(f"no cross sysroot is known for {arch}")
    sysroot = Path("/usr") / target.triplet / "lib"
    folders = [program.resolve().parent, sysroot]

    def find(name: str) -> Path:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        raise ProbeError(f"{program} needs {name}, found neither beside it nor in {sysroot} "
                         f"(apt-get install {target.compiler_package})")

    files = {interp: find(Path(interp).name)}
    todo = list(needed)
    while todo:
        name = todo.pop()
        guest = f"/lib/{target.triplet}/{name}"
        if guest not in files:
            files[guest] = find(name)
            todo += _elf(files[guest])[1]
    return files



__all__: Sequence[str] = ("GuestProgram", "initramfs", "runtime_files")
