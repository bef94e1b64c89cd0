"""Neutralise hostile text before it reaches a log, a header, a reply or a terminal.

Everything that comes from a client (HELO names, addresses, header values, file names) may carry
CR/LF, NUL, terminal escape sequences or invalid UTF-8. These helpers make one safe rendering of it.
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(value: str | bytes, limit: int = 200) -> str:
    """Return `value` with every control or bidi character escaped as \\xNN / \\uNNNN.

    Bytes are decoded as UTF-8 with undecodable bytes escaped. The result is cut to `limit`
    characters (with a trailing marker) so one hostile value cannot flood a log line.
    """
    escaped = _UNPRINTABLE.sub(_escape_char, _as_text(value))
    if len(escaped) > limit:
        return escaped[:limit] + "...[cut]"
    return escaped


def ascii_printable(value: str | bytes, limit: int = 200) -> str:
    """Like `printable`, but also escapes non-ASCII: for SMTP replies and trace headers."""
    text: str = printable(value, limit)
    return text.encode("ascii", errors="backslashreplace").decode("ascii")


def _as_text(value: str | bytes) -> str:
    """Decode bytes (and str holding surrogate escapes) with undecodable bytes shown as \\xNN."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    try:
        data = value.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte stands for
        data = value.encode("utf-8", errors="backslashreplace")
    return data.decode("utf-8", errors="backslashreplace")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def quoted(value: str | bytes, limit: int = 200) -> str:
    """A double-quoted, escaped rendering for key=value log lines."""
    text = _as_text(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{printable(text, limit)}"'


def quoted_string(text: str) -> str:
    """An RFC 5322 3.2.4 quoted-string of `text` (backslash and DQUOTE as quoted-pairs), for
    header values we write; the caller has already reduced `text` to printable ASCII."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rfc5322_comment(text: str) -> str:
    """An RFC 5322 3.2.2 comment of `text` ("(", ")" and backslash as quoted-pairs), for header
    values we write; the caller has already reduced `text` to printable ASCII."""
    return "(" + _COMMENT_SPECIAL.sub(r"\\\1", text) + ")"


_COMMENT_SPECIAL = re.compile(r"([()\\])")
