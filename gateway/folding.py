"""The one header folder: every field the gateway writes is folded here (RFC 5322 2.2.3)."""

from __future__ import annotations

from collections.abc import Sequence


def fold_items(name: str, items: Sequence[str], *, each_on_own_line: bool = False) -> bytes:
    """`Name: item item` with CRLF TAB between items wherever a line would pass 78 characters,
    or (`each_on_own_line`, as Authentication-Results reads best) before every item but the first.

    Items must already be printable ASCII (callers escape client-supplied text first); anything
    else becomes "?" rather than an exception in the middle of a transaction.
    """
    lines: list[str] = []
    current = f"{name}:"
    for item in items:
        starts_line = current != f"{name}:" and (
            each_on_own_line or len(current) + 1 + len(item) > 78
        )
        if starts_line:
            lines.append(current)
            current = "\t" + item
        else:
            current = f"{current} {item}"
    lines.append(current)
    return ("\r\n".join(lines) + "\r\n").encode("ascii", errors="replace")
