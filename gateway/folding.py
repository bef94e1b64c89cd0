"""Fold a header field we write: items joined by spaces, a new line wherever one would pass 78."""

from __future__ import annotations

from collections.abc import Sequence


def fold_items(name: str, items: Sequence[str]) -> bytes:
    """`Name: item item` with CRLF TAB between items wherever a line would pass 78 characters.

    Items must already be printable ASCII (callers escape client-supplied text first).
    """
    lines: list[str] = []
    current = f"{name}:"
    for item in items:
        if len(current) + 1 + len(item) > 78 and current != f"{name}:":
            lines.append(current)
            current = "\t" + item
        else:
            current = f"{current} {item}"
    lines.append(current)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
