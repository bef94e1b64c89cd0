"""The id every refusal names (`(id=1D200EA07992)` at the end of its text), for tests that
compare reply texts: `without_id` checks it is there and returns the reply without it."""

from __future__ import annotations

import re

REPLY_ID = re.compile(r" \(id=([0-9A-F]{12})\)$")


def reply_id(text: str | bytes) -> str:
    """The id at the end of a reply; AssertionError when it names none."""
    line = text.decode() if isinstance(text, bytes) else text
    match = REPLY_ID.search(line.rstrip("\r\n"))
    assert match is not None, f"no id in reply {line!r}"
    return match.group(1)


def without_id(text: str) -> str:
    """The reply without its id (which must be there)."""
    reply_id(text)
    return REPLY_ID.sub("", text.rstrip("\r\n"))
