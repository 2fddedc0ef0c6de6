"""Input files before they are parsed: opening one safely, telling ELF from what people
feed to ELF tools by mistake, why the kernel refuses a read, and ELF notes.

No third-party parser here: :mod:`layoutkit.elf` (the only importer of pyelftools) uses
these before and beside pyelftools.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import BinaryIO

from layoutkit.errors import InputError

NT_GNU_BUILD_ID = 3  # binutils include/elf/common.h

# What the kernel says when a read fails, in the input's terms (never errno text).
READ_FAULTS = {
    errno.EIO: "the kernel reports an I/O error reading it (a special file such as "
               "/proc/PID/mem, or a failing disk)",
    errno.EINVAL: "the kernel refuses to read it as a file (a special /proc or /sys file)",
    errno.EISDIR: "it is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (ptrace access mode: same user, or root)",
    errno.ESRCH: "the process has exited",
}

# Magic numbers of formats people feed to ELF tools by mistake.
_OTHER_FORMATS = (
    (b"\xcf\xfa\xed\xfe", "a Mach-O file (64-bit), not ELF"),
    (b"\xce\xfa\xed\xfe", "a Mach-O file (32-bit), not ELF"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O file (64-bit, big-endian), not ELF"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary (or Java class file), not ELF"),
    (b"MZ", "a PE/COFF (Windows) file, not ELF"),
    (b"#!", "a script, not ELF"),
    (b"!<arch>\n", "an ar archive (static library), not ELF"),
)


def identify(head: bytes) -> str | None:
    """Why ``head`` is not an ELF file, or None when it starts like one."""
    if head[:4] == b"\x7fELF":
        return None
    if not head:
        return "empty file, not ELF"
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            return what
    return "not an ELF file (bad magic)"


def open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading, turning OS errors into :class:`InputError`."""
    name = os.fspath(path)
    try:
        # stat before open: opening a FIFO or a device could block forever.
        if os.path.exists(name) and not os.path.isdir(name) and not os.path.isfile(name):
            raise InputError("not a regular file", path=name)
        stream = open(name, "rb")  # noqa: SIM115 (owned by the caller)
    except FileNotFoundError:
        raise InputError("no such file", path=name) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", path=name) from None
    except PermissionError:
        raise InputError("permission denied", path=name) from None
    except OSError as e:
        why = READ_FAULTS.get(e.errno or 0, "the system refuses to open it")
        raise InputError(f"cannot open: {why}", path=name) from e
    if not os.path.isfile(name):
        stream.close()
        raise InputError("not a regular file", path=name)
    return stream


def find_build_id(data: bytes, little_endian: bool) -> str | None:
    """The NT_GNU_BUILD_ID descriptor in a run of ELF notes, as hex.

    Parsed here rather than with pyelftools' iter_notes, which reads n_descsz bytes as
    stored (a hostile note could ask for 4 GiB); this walk never leaves ``data``.
    """
    fmt = "<III" if little_endian else ">III"
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(fmt, data, pos)
        name_start = pos + 12
        desc_start = name_start + (namesz + 3) // 4 * 4
        desc_end = desc_start + descsz
        if desc_end > len(data):
            return None
        if ntype == NT_GNU_BUILD_ID and data[name_start:name_start + namesz] == b"GNU\0":
            return data[desc_start:desc_end].hex()
        pos = desc_start + (descsz + 3) // 4 * 4
    return None
