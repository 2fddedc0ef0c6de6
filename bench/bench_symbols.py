"""Symbol look-up by name: layoutkit against nm on the same binary, in one run.

Builds (in a temporary directory) an executable with N local and global symbols in
.symtab, as a large unstripped program has, then times finding one symbol near the
end of the table with `nm | grep` and with layoutkit, and prints the ratio.
Target (issue 2): hundreds of thousands of symbols must not take seconds.

    python3 bench/bench_symbols.py [--symbols 400000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layoutkit.elf import ElfReader


def build(directory: Path, count: int) -> Path:
    source = directory / "many.s"
    with source.open("w") as out:
        out.write("\t.text\n")
        for i in range(count):
            # Half hidden globals (like lj_vm_*), half locals: both land in .symtab.
            if i % 2:
                out.write(f"\t.globl sym_{i}\n\t.hidden sym_{i}\n")
            out.write(f"sym_{i}:\n\tnop\n")
        out.write("\t.globl main\nmain:\n\txor %eax, %eax\n\tret\n")
        out.write("\t.section .note.GNU-stack,\"\",@progbits\n")
    binary = directory / "many"
    subprocess.run(["gcc", "-no-pie", "-o", str(binary), str(source)], check=True)
    return binary


def best(func: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("nm") or not shutil.which("gcc"):
        print("needs gcc and nm (binutils)", file=sys.stderr)
        return 4
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(Path(tmp), args.symbols)
        name = f"sym_{args.symbols - 1}"

        def with_nm() -> None:
            out = subprocess.run(["nm", str(binary)], capture_output=True, text=True,
                                 check=True).stdout
            assert any(line.endswith(" " + name) for line in out.splitlines())

        def with_layoutkit() -> None:
            with ElfReader(binary) as reader:
                assert reader.symbol(name) is not None

        t_nm = best(with_nm, args.repeat)
        t_lk = best(with_layoutkit, args.repeat)
        size = binary.stat().st_size
    print(f"binary: {args.symbols} symbols, {size / 2**20:.1f} MiB")
    print(f"nm | search : {t_nm * 1000:8.1f} ms")
    print(f"layoutkit   : {t_lk * 1000:8.1f} ms (open, parse headers, look up one symbol)")
    print(f"ratio       : layoutkit is {t_nm / t_lk:.1f}x the speed of nm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
