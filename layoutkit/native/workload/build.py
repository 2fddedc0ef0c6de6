"""Fetching LuaJIT and building the workload (see :mod:`layoutkit.native.workload`).

- ``luajit-2.1``: Debian's ``libluajit-5.1-dev`` (static library and headers) for the
  target's Debian arch, with ``jit/vmdef.lua`` from ``libluajit-5.1-common``, through a
  private apt state (``apt-get download``), as :mod:`layoutkit.native.guest.kernels`
  fetches Debian's kernels.
- ``luajit-2025``: ``third-party/luajit21`` of PyPI's ``lupa`` sdist (``pip download
  --no-binary :all:``), built with LuaJIT's own Makefile ``BUILDMODE=static``, with
  ``CROSS=<triplet>- HOST_CC=gcc TARGET_SYS=Linux`` for a foreign arch.

Both are cached under ``$XDG_CACHE_HOME/layoutkit/workload/luajit`` (default
``~/.cache``), each published by one atomic rename; the linked workload goes to the
build cache beside them (``workload/<arch>-<generation>-<key>``), keyed by its sources,
flags, the compiler and the LuaJIT.
"""

from __future__ import annotations

import enum
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from layoutkit.core import arches
from layoutkit.errors import ProbeError, UsageError
from layoutkit.native.build import NATIVE_DIR, cache_dir, cached_build, run_tool, source_key
from layoutkit.native.toolchain import Compiler

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "workload.c"
LUA = HERE / "workload.lua"  # embedded in the executable, with the build's jit/vmdef.lua
LUPA = "2.8"  # the first lupa whose sdist bundles a LuaJIT with 68354f44's allocator
DEBIAN_PACKAGES = ("libluajit-5.1-dev", "libluajit-5.1-common")


@dataclass(frozen=True)
class Machine:
    """What the build needs to know of one arch."""

    name: str  # layoutkit arch name
    debian_arch: str
    triplet: str


MACHINES = {"x86_64": Machine("x86_64", "amd64", "x86_64-linux-gnu"),
            "aarch64": Machine("aarch64", "arm64", "aarch64-linux-gnu")}


class Generation(enum.Enum):
    """Which LuaJIT the workload embeds; the value is the allocator profile's name."""

    DEBIAN_2_1 = "luajit-2.1"
    LUPA_2025 = "luajit-2025"


@dataclass(frozen=True)
class LuajitBuild:
    """A static LuaJIT for one arch, and where it came from."""

    generation: Generation
    machine: Machine
    library: Path  # libluajit*.a
    include: Path  # folder with lua.h, lauxlib.h, lualib.h, luajit.h
    vmdef: Path  # the build's jit/vmdef.lua
    source: str  # package, version and arch, in words


@dataclass(frozen=True)
class Workload:
    executable: Path
    luajit: LuajitBuild
    ldflags: tuple[str, ...] = ()  # added to the default link


# --- fetching --------------------------------------------------------------

def cache_root() -> Path:
    """Where the LuaJIT builds are kept (the linked workloads sit beside this folder)."""
    return cache_dir("workload") / "luajit"


def machine(arch: str) -> Machine:
    found = MACHINES.get(arch)
    if found is None:
        raise UsageError(f"the LuaJIT workload builds for {', '.join(MACHINES)}, not {arch}")
    return found


def host_machine() -> Machine:
    return machine(platform.machine())


def _run(command: Sequence[str], what: str, *, cwd: Path | None = None,
         timeout: float = 600) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, cwd=cwd,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"{what}: {command[0]} failed: {e}") from e
    if done.returncode != 0:
        tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ProbeError(f"{what}: `{' '.join(command)}` exited {done.returncode}: {tail}")
    return done.stdout


def _publish(work: Path, folder: Path) -> None:
    """Move a finished build into place atomically (a concurrent one may win)."""
    try:
        os.rename(work, folder)
    except OSError:
        if not (folder / "build.json").is_file():
            raise


def _cached(folder: Path, generation: Generation, m: Machine) -> LuajitBuild | None:
    meta = folder / "build.json"
    if not meta.is_file():
        return None
    doc = json.loads(meta.read_text())
    return LuajitBuild(generation, m, folder / doc["library"], folder / doc["include"],
                       folder / doc["vmdef"], doc["source"])


def _debian_luajit(m: Machine) -> LuajitBuild:
    """Debian's libluajit-5.1.a for ``m`` (apt-get download, private apt state)."""
    folder = cache_root() / f"{m.name}-luajit-2.1-debian"
    cached = _cached(folder, Generation.DEBIAN_2_1, m)
    if cached:
        return cached
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ProbeError(f"{tool} not found: Debian's libluajit-5.1.a comes from its archive")
    apt = cache_root() / "apt" / m.debian_arch
    for sub in (apt / "state" / "lists" / "partial", apt / "cache" / "archives" / "partial"):
        sub.mkdir(parents=True, exist_ok=True)
    opts = [f"-oDir::State={apt / 'state'}", f"-oDir::Cache={apt / 'cache'}",
            f"-oAPT::Architecture={m.debian_arch}", f"-oAPT::Architectures::={m.debian_arch}",
            "-oDir::State::status=/dev/null", "-oAPT::Sandbox::User=root"]
    _run(["apt-get", *opts, "-qq", "update"], "refreshing the private apt state")
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache_root()) as tmp:
        work = Path(tmp)
        _run(["apt-get", *opts, "-qq", "download", *DEBIAN_PACKAGES],
             f"downloading {', '.join(DEBIAN_PACKAGES)} ({m.debian_arch})", cwd=work)
        keep = work / "keep"  # moved into the cache when complete
        root = keep / "x"
        root.mkdir(parents=True)  # dpkg-deb -x creates the last folder only
        versions = []
        for package in DEBIAN_PACKAGES:
            debs = sorted(work.glob(f"{package}_*.deb"))
            if not debs:
                raise ProbeError(f"apt-get download left no {package} .deb")
            _run(["dpkg-deb", "-x", str(debs[0]), str(root)], f"unpacking {debs[0].name}")
            versions.append(debs[0].name.split("_")[1])
        library = root / "usr" / "lib" / m.triplet / "libluajit-5.1.a"
        include = root / "usr" / "include" / "luajit-2.1"
        vmdefs = sorted(root.glob("usr/share/luajit*/jit/vmdef.lua"))
        if not library.is_file() or not (include / "luajit.h").is_file() or not vmdefs:
            raise ProbeError(f"Debian's {' and '.join(DEBIAN_PACKAGES)} hold no "
                             "libluajit-5.1.a, luajit.h or jit/vmdef.lua")
        source = (f"Debian {DEBIAN_PACKAGES[0]} {versions[0].replace('%3a', ':')} "
                  f"({m.debian_arch})")
        doc = {"library": str(library.relative_to(keep)),
               "include": str(include.relative_to(keep)),
               "vmdef": str(vmdefs[0].relative_to(keep)), "source": source}
        (keep / "build.json").write_text(json.dumps(doc))
        _publish(keep, folder)
    found = _cached(folder, Generation.DEBIAN_2_1, m)
    assert found is not None
    return found


def _lupa_luajit(m: Machine) -> LuajitBuild:
    """LuaJIT 2.1 from PyPI's lupa sdist, built static for ``m``."""
    folder = cache_root() / f"{m.name}-luajit-2025-lupa-{LUPA}"
    cached = _cached(folder, Generation.LUPA_2025, m)
    if cached:
        return cached
    cross = m.name != platform.machine()
    compiler = f"{m.triplet}-gcc" if cross else "gcc"
    for tool in ("make", compiler):
        if shutil.which(tool) is None:
            raise ProbeError(f"{tool} not found: building LuaJIT from lupa's sdist needs it")
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache_root()) as tmp:
        work = Path(tmp)
        _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
              "--no-binary", ":all:", "--no-deps", "-d", str(work / "sdist"), f"lupa=={LUPA}"],
             f"downloading lupa {LUPA}'s sdist from PyPI")
        sdists = sorted((work / "sdist").glob("lupa-*.tar.gz"))
        if not sdists:
            raise ProbeError(f"pip download left no lupa-{LUPA} sdist")
        prefix = f"lupa-{LUPA}/third-party/luajit21/"
        with tarfile.open(sdists[0]) as tar:
            members = [t for t in tar.getmembers() if t.name.startswith(prefix)]
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: refuse unsafe members
                tar.extractall(work / "x", members=members, filter="data")
            else:
                tar.extractall(work / "x", members=members)
        tree = work / "x" / prefix
        mcode = tree / "src" / "lj_mcode.c"
        if not mcode.is_file() or "mcode_setrange" not in mcode.read_text():
            raise ProbeError(f"{sdists[0].name}: {prefix}src/lj_mcode.c has no mcode_setrange "
                             "(not 68354f44's allocator)")
        # The Makefile copies ../.relver (a `git archive` placeholder in the sdist) over
        # src/luajit_relver.txt, which lupa's sdist ships with the release number: put the
        # number back so that LUAJIT_VERSION is not "2.1.ROLLING".
        relver = (tree / "src" / "luajit_relver.txt").read_text().strip()
        if relver.isdigit():
            (tree / ".relver").write_text(relver + "\n")
        make = ["make", "-j2", "BUILDMODE=static"]
        if cross:
            make += [f"CROSS={m.triplet}-", "HOST_CC=gcc", "TARGET_SYS=Linux"]
        _run(make, f"building LuaJIT from {sdists[0].name} for {m.name}", cwd=tree,
             timeout=900)
        src = tree / "src"
        for name in ("libluajit.a", "jit/vmdef.lua", "luajit.h"):
            if not (src / name).is_file():
                raise ProbeError(f"LuaJIT's build left no src/{name}")
        keep = work / "keep"
        keep.mkdir()
        shutil.copytree(src, keep / "src")
        source = f"PyPI lupa {LUPA} sdist, {prefix}, built {'with ' + compiler}"
        doc = {"library": "src/libluajit.a", "include": "src", "vmdef": "src/jit/vmdef.lua",
               "source": source}
        (keep / "build.json").write_text(json.dumps(doc))
        _publish(keep, folder)
    found = _cached(folder, Generation.LUPA_2025, m)
    assert found is not None
    return found


def fetch_luajit(generation: Generation, arch: str) -> LuajitBuild:
    """The static LuaJIT of ``generation`` for ``arch`` (fetched and built once)."""
    m = machine(arch)
    if generation is Generation.DEBIAN_2_1:
        return _debian_luajit(m)
    return _lupa_luajit(m)


# --- building ---------------------------------------------------------------------------

def _c_string(name: str, text: bytes) -> str:
    pieces = [f"\\{b:03o}" if b < 0x20 or b >= 0x7f or b in b'"\\?' else chr(b)
              for b in text]
    lines = ["".join(pieces[i:i + 64]) for i in range(0, len(pieces), 64)]
    return f"const char {name}[] =\n" + "\n".join(f'    "{line}"' for line in lines) + ";\n"


# Static and non-PIE: the image sits at GNU ld's default link address (0x400000 on
# x86-64 and aarch64), as the programs of issue 11 do. LuaJIT's mmap/munmap calls go
# through workload.c's counters (GNU ld manual, --wrap=symbol).
FLAGS = ("-std=gnu11", "-O2", "-Wall", "-Wextra", "-pthread", "-static", "-no-pie")
LINK = ("-Wl,--wrap=mmap", "-Wl,--wrap=mmap64", "-Wl,--wrap=munmap", "-lm", "-ldl")


def build_workload(generation: Generation | str, arch: str,
                   ldflags: Sequence[str] = ()) -> Workload:
    """The workload linked with ``generation``'s LuaJIT for ``arch`` (once, cached in the
    build cache, :func:`layoutkit.native.build.cached_build`); ``ldflags`` are added to
    the link (a recommendation of ``layoutkit advise``, for example)."""
    generation = Generation(generation)
    luajit = fetch_luajit(generation, arch)
    compiler = Compiler.for_arch(arches.by_name(machine(arch).name))

    def build(folder: Path) -> None:
        embed = folder / "embed.c"
        embed.write_text(_c_string("workload_lua", LUA.read_bytes())
                         + _c_string("vmdef_lua", luajit.vmdef.read_bytes()))
        run_tool([compiler.path, *FLAGS, f"-I{luajit.include}", f"-I{NATIVE_DIR}", "-o",
                  str(folder / "workload"), str(SOURCE), str(embed), str(luajit.library),
                  *LINK, *ldflags], f"linking the workload for {arch} with {luajit.source}",
                 f" (is {compiler.package} installed?)")

    key = [source_key(SOURCE, LUA), " ".join((*FLAGS, *LINK, *ldflags)).encode(),
           luajit.source.encode(), luajit.library.read_bytes()]
    folder = cached_build("workload", generation.value, compiler, key, build, ["workload"])
    return Workload(folder / "workload", luajit, tuple(ldflags))
