"""One build cache for everything layoutkit compiles: the probe, the preload library,
the guest's ``/init`` and static probe, and layout twins.

A build lives in ``$XDG_CACHE_HOME/layoutkit/<kind>/<arch>-<name>-<key>/`` (default
``~/.cache``), keyed by a hash of what it is made from (the sources and every header
beside them, the compiler's path and ``--version`` text, the flags, and anything else
the caller names, such as a twin's linker script). It is made in a temporary folder
and renamed into place, so a concurrent build leaves one complete folder and a killed
one leaves none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from layoutkit.core.arches import Arch
from layoutkit.errors import ProbeError
from layoutkit.native.toolchain import Compiler

NATIVE_DIR = Path(__file__).parent  # the C sources and the headers they share
BUILD_TIMEOUT = 120.0  # seconds for one compiler run


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layoutkit"


def cache_dir(kind: str) -> Path:
    """Where builds of ``kind`` (``probe``, ``twin``, ``guest``) are kept."""
    return cache_root() / kind


def source_key(*sources: Path) -> bytes:
    """What a build of ``sources`` depends on: them and every header of native/ (the
    sources include them by name)."""
    headers = sorted(NATIVE_DIR.glob("*.h"))
    return b"\0".join(p.read_bytes() for p in (*sources, *headers))


def compiler_version(compiler: Compiler) -> str:
    try:
        return subprocess.run([compiler.path, "--version"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"{compiler.path} --version failed: {e}") from e


def run_tool(argv: Sequence[str], what: str, hint: str = "", *,
             diagnose: Callable[[str], str | None] | None = None) -> None:
    """Run a compiler or linker; :class:`ProbeError` with ``hint`` and the last lines of
    its stderr, or with what ``diagnose`` reads in the whole stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        raise ProbeError(f"{what}: {e}") from e
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-4:])
        cause = diagnose(done.stderr) if diagnose else None
        if cause:
            raise ProbeError(f"{what}: {cause} ({tail})")
        raise ProbeError(f"{what} failed{hint}: {tail}")


def cached_build(kind: str, name: str, compiler: Compiler, key: Sequence[bytes],
                 build: Callable[[Path], None], products: Sequence[str]) -> Path:
    """The folder holding ``products``, built once by ``build(folder)`` and cached.

    ``key`` is what the products are made from besides the compiler (sources, flags,
    scripts). ``build`` writes into the folder it is given (a temporary one, renamed
    into place when ``build`` returns)."""
    digest = hashlib.sha256(b"\0".join([*key, compiler.path.encode(),
                                        compiler_version(compiler).encode()]))
    folder = cache_dir(kind) / f"{compiler.arch.name}-{name}-{digest.hexdigest()[:20]}"
    if all((folder / p).is_file() for p in products):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    except OSError as e:
        raise ProbeError(f"cannot write the build cache {folder.parent}: {e.strerror}") from e
    try:
        build(work)
        try:
            os.rename(work, folder)  # atomic: a concurrent build leaves one whole folder
        except OSError:
            if not all((folder / p).is_file() for p in products):
                raise
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return folder


def compile_c(arch: Arch, source: Path, flags: Sequence[str], name: str, *, kind: str,
              what: str, cross: bool = False) -> Path:
    """``source`` compiled with ``flags`` into ``name`` for ``arch`` (once, cached).

    ``cross`` uses ``<triplet>-gcc`` even for the host arch (static guest builds)."""
    compiler = Compiler.for_arch(arch, cross=cross)

    def build(folder: Path) -> None:
        run_tool([compiler.path, *flags, "-o", str(folder / name), str(source)],
                 f"building {what} for {arch} with {compiler.path}",
                 f" (is {compiler.package} installed?)")

    key = [source_key(source), " ".join(flags).encode()]
    return cached_build(kind, name, compiler, key, build, [name]) / name


__all__: Sequence[str] = ("NATIVE_DIR", "cache_dir", "cache_root", "cached_build",
                          "compile_c", "compiler_version", "run_tool", "source_key")
