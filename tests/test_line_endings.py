"""The bare CR / bare LF test agrees with its definition on every input (property test)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.line_endings import has_bare_line_endings, normalize_line_endings

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")  # the definition: a CR not before LF, an LF not after CR


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b".", b"\x00"]), max_size=40))
def test_counting_agrees_with_the_definition(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    assert has_bare_line_endings(raw) == (BARE.search(raw) is not None)
    assert not has_bare_line_endings(normalize_line_endings(raw))


def test_examples() -> None:
    assert not has_bare_line_endings(b"a\r\nb\r\n.\r\n")
    assert has_bare_line_endings(b"a\r\nb\n.\r\n")
    assert has_bare_line_endings(b"a\r\nb\r.\r\n")
    assert has_bare_line_endings(b"\r\r\n")
    assert has_bare_line_endings(b"\r\n\n")
    assert not has_bare_line_endings(b"")


def first_field_value(raw: bytes, name: str) -> str | None:
    from gateway.message import ParsedMessage

    return ParsedMessage(raw).first(name)


def test_first_field_value_reads_the_header_only() -> None:
    raw = (
        b"Subject: x\r\nMESSAGE-ID :\r\n <a@b>\r\nMessage-ID: <second@b>\r\n\r\n"
        b"Message-ID: <in-body@b>\r\n"
    )
    assert first_field_value(raw, "message-id") == "<a@b>"
    assert first_field_value(b"Subject: x\r\n\r\nMessage-ID: <in-body@b>\r\n", "message-id") is None
    assert first_field_value(b"Message-ID: <\xff@b>\r\n\r\n", "message-id") == "<\udcff@b>"
    assert first_field_value(b"X-Message-ID: <x@b>\r\n\r\n", "message-id") is None
