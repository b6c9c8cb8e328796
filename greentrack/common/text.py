"""Text from outside (run ids, names, paths, currency codes, file contents) made safe to show.

The record keeps values as they were given; what a terminal, a Markdown or an HTML page shows is
passed through :func:`printable` (no control or bidi-override characters, optionally cut), and
Markdown also through :func:`md_escape` (no markup). Done once here, used by every writer.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: where a cut value says so
CUT_MARK = "..."


def _escape_char(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with control characters (C0, C1, DEL, line breaks), invisible format characters
    (bidi overrides, zero-width) and odd separators written as ``\\xNN`` escapes, cut to ``limit``
    characters."""
    s = str(text)
    if not s.isprintable():  # Python's "printable" excludes categories C* and Z* but the space
        s = "".join(c if c.isprintable() else _escape_char(c) for c in s)
    if limit is not None and len(s) > limit:
        keep = max(limit - len(CUT_MARK), 1)
        s = s[:keep] + CUT_MARK
    return s


#: characters that can start inline Markdown or HTML (CommonMark: any ASCII punctuation may be
#: backslash-escaped, and then is a literal)
_MD_SPECIAL = set("\\`*_[]<>|~!&#")


def md_escape(text: object) -> str:
    """``text`` as literal Markdown: printable, with every markup character backslash-escaped.
    Two that cannot be markup where they stand stay as they are, so ordinary text reads as it
    did: ``_`` inside a word (``global_energy_mix``: CommonMark never takes it for emphasis) and
    ``~`` after a space or at the start (``~100 ms``: it cannot close a strikethrough, and every
    ``~`` that could is escaped)."""
    s = printable(text)
    out = []
    for i, c in enumerate(s):
        if c in _MD_SPECIAL:
            before = s[i - 1] if i else " "
            after = s[i + 1] if i + 1 < len(s) else " "
            if c == "_" and before.isalnum() and after.isalnum():
                out.append(c)
                continue
            if c == "~" and before.isspace():
                out.append(c)
                continue
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


def json_text(doc: Any) -> str:
    """``doc`` as strict JSON (RFC 8259: no NaN or Infinity); a non-finite number becomes null,
    so a damaged store can never make the output unparsable."""
    return json.dumps(finite(doc), indent=2, allow_nan=False)


def finite(doc: Any) -> Any:
    """``doc`` with every NaN or infinite float replaced by None."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [finite(v) for v in doc]
    return doc
