"""File names as text: any name the file system gives, stored and shown as valid UTF-8.

POSIX file names are bytes. Python hands back the bytes that are not UTF-8 as lone surrogates
(PEP 383: ``b"bad\\xff.jpg"`` lists as ``"bad\\udcff.jpg"``), which zarr's string arrays, JSON
and the viewer cannot hold. Every URI of an input manifest is therefore a *URI text*, made by
:func:`uri_text` and turned back into what ``open``/``os.stat``/fsspec take by :func:`uri_path`:

- an ordinary name (valid UTF-8, no control character, not starting with ``pct:``) is its own
  text: almost every run stores exactly the names it listed;
- any other name is ``pct:`` followed by the name with every byte that is not part of valid
  UTF-8, every control character (C0 and DEL: a newline would break every log line and CSV that
  shows it) and every ``%`` written as ``%XX`` (two upper-case hex digits). Spaces and
  non-ASCII letters stay as they are, so the text still reads like the name:
  ``b"/d/bad\\xff\\xfename.jpg"`` -> ``"pct:/d/bad%FF%FEname.jpg"``.

The map is reversible for every name: ``uri_path(uri_text(p)) == p`` (bytes in, bytes out as
``os.fsdecode`` gives them), and a text is never ambiguous, since an ordinary name cannot start
with the marker (such a name is itself escaped).
"""

from __future__ import annotations

import os
import re

MARKER = "pct:"

# What makes a name not its own text: a control character or a lone surrogate (an undecodable
# byte, PEP 383); ``[\ud800-\udfff]`` matches lone surrogates only in a str.
_NOT_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_ESCAPE = re.compile("%([0-9A-Fa-f]{2})")


def uri_text(path: str | bytes | os.PathLike[str], *, reserved: str = "") -> str:
    """The text that stands for ``path`` in the store and the viewer (module docstring).

    path: a name as the file system gave it (str with surrogate escapes, or bytes).
    reserved: ASCII characters that must not appear literally (a tar member's ``:``, which
    would end the member part of ``tar://member::archive``); their presence also escapes.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    name = os.fsdecode(path) if isinstance(path, bytes) else path
    if any(ord(c) > 0x7F for c in reserved):
        raise ValueError(f"reserved characters must be ASCII, got {reserved!r}")
    special = set(reserved) | {"%"}
    plain = not name.startswith(MARKER) and not _NOT_TEXT.search(name)
    if plain and not any(c in name for c in reserved):
        return name
    try:  # the file system's bytes, decoded again: each undecodable byte is one surrogate
        canonical = os.fsdecode(os.fsencode(name))
    except UnicodeError as exc:
        raise ValueError(f"{name!r} is not a name a file system gives: {exc}") from exc
    out = []
    for ch in canonical:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte
            out.append(f"%{o - 0xDC00:02X}")
        elif o < 0x20 or o == 0x7F or ch in special:
            out.append(f"%{o:02X}")
        else:
            out.append(ch)
    return MARKER + "".join(out)


def uri_path(text: str) -> str:
    """The name a URI text stands for, as ``os.fsdecode`` gives it (a str that ``open``,
    ``os.stat`` and fsspec take); the inverse of :func:`uri_text`. ValueError for a text that
    no name maps to (a stray ``%``, a control character or a lone surrogate after the marker)."""
    if not text.startswith(MARKER):
        return text
    parts = _ESCAPE.split(text[len(MARKER) :])  # literal, hex, literal, hex, ..., literal
    raw = bytearray()
    for i, part in enumerate(parts):
        if i % 2:
            raw.append(int(part, 16))
        elif "%" in part or _NOT_TEXT.search(part):
            raise ValueError(f"{text!r} is not a URI text: unescaped {part!r}")
        else:
            raw += os.fsencode(part)
    return os.fsdecode(bytes(raw))


def is_uri_text(s: str) -> bool:
    """Whether ``s`` can stand as a URI text as it is (valid UTF-8, no control character)."""
    return not _NOT_TEXT.search(s)


def as_uri_texts(uris: list[str]) -> list[str]:
    """``uris`` with every entry that cannot be a URI text (it holds an undecodable byte or a
    control character, so it is a raw name) replaced by its :func:`uri_text`; the others are
    kept as they are (a ``pct:`` entry is taken as a text already). One regex scan of the
    joined list when every entry is text, the common case."""
    if is_uri_text("".join(uris)):
        return uris
    return [u if is_uri_text(u) else uri_text(u) for u in uris]
