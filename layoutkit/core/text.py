"""How a path or name that came from input is shown in text and carried in JSON.

Paths and names are ``str`` everywhere in layoutkit. Bytes that are not UTF-8 (a file
name on disk, a path in a maps listing, a section name) arrive as lone surrogates
(Python's ``surrogateescape``, PEP 383), so one value keeps the exact bytes. The rule:

- Text output shows each byte that is not UTF-8 as ``\\xNN`` and each control or
  invisible-format character (C0, DEL, C1, U+2028/U+2029, bidi overrides) as ``\\xNN``
  or ``\\uNNNN``, and cuts a name longer than :data:`MAX_SHOWN` characters in the middle
  with ``...``. The result encodes in any locale with ``backslashreplace``, so output
  never fails.
- JSON output writes every string as valid UTF-8 (the same escapes, not cut). A string
  whose bytes are not UTF-8 is followed by ``KEY_base64`` holding its raw bytes, so
  strict parsers accept the document and nothing is lost.
"""

from __future__ import annotations

import base64
import re

MAX_SHOWN = 160  # characters of one path or name in a line of text

# C0 controls, DEL, C1 controls, line/paragraph separators, bidi embeddings/overrides
# and isolates (Unicode TR #9), lone surrogates, BOM/non-characters.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff\ufeff\ufffe\uffff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escaped(text: str) -> str:
    """``text`` with undecodable bytes and invisible characters written as escapes."""
    return _UNSAFE.sub(_escape, text)


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` as a line of output shows it: escaped, and cut in the middle to ``limit``."""
    if len(text) > limit * 4:  # bound the work on a 250 MiB name before escaping it
        text = text[: limit * 2] + text[-limit * 2:]
    out = escaped(text)
    if len(out) <= limit:
        return out
    tail = max(1, (limit - 3) // 3)
    return out[: limit - 3 - tail] + "..." + out[-tail:]


def is_utf8(text: str) -> bool:
    """True when ``text`` holds no undecodable byte (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raw_bytes(text: str) -> bytes:
    """The bytes ``text`` was decoded from (surrogateescape), exactly."""
    return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "surrogatepass")


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _all_utf8(value: object) -> bool:
    if isinstance(value, str):
        return is_utf8(value)
    if isinstance(value, dict):
        return all(_all_utf8(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_utf8(item) for item in value)
    return True


def json_safe(value: object) -> object:
    """A JSON document with every string valid UTF-8 and lossless: ``value`` itself when
    it already is (no copy of a large document), else a copy.

    A dict entry whose string is not UTF-8 gets a sibling ``KEY_base64`` with the raw
    bytes, placed right after it; strings in lists are escaped only (free text).
    """
    return value if _all_utf8(value) else _safe_copy(value)


def _safe_copy(value: object) -> object:
    if isinstance(value, str):
        return value if is_utf8(value) else escaped(value)
    if isinstance(value, dict):
        out: dict[object, object] = {}
        for key, item in value.items():
            out[key] = _safe_copy(item)
            if isinstance(item, str) and not is_utf8(item):
                out[f"{key}_base64"] = base64.b64encode(raw_bytes(item)).decode("ascii")
        return out
    if isinstance(value, (list, tuple)):
        return [_safe_copy(item) for item in value]
    return value
