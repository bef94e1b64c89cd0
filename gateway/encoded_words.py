"""RFC 2047 encoded-words split in linear time, read exactly as `email.header.decode_header`.

The standard library's decode_header pops the head of a list per word and grows bytes with
`+=`: quadratic, so one From field folded over 100,000 encoded-words held the event loop for
close to a minute. This is the same reading (the same regex, the same dropping of white space
between encoded-words, the same joining of neighbours of one charset) over lists that only
grow at the end; tests/test_header_cost.py checks the two agree.
"""

from __future__ import annotations

import binascii
import email.base64mime
import email.quoprimime
import re

# email.header's own pattern (its `ecre`), so "what is an encoded-word" keeps its one answer.
_ENCODED_WORD = re.compile(
    r"=\?(?P<charset>[^?]*?)\?(?P<encoding>[qQbB])\?(?P<encoded>.*?)\?=", re.MULTILINE
)


class EncodedWordError(ValueError):
    """A base64 encoded-word that does not decode (decode_header's HeaderParseError)."""


def decode_header_linear(header: str) -> list[tuple[bytes | str, str | None]]:
    """`email.header.decode_header(header)` for a str, in time linear in its length."""
    if not _ENCODED_WORD.search(header):
        return [(header, None)]
    words: list[tuple[str, str | None, str | None]] = []  # (text, encoding, charset)
    for line in header.splitlines():
        position, first = 0, True
        for match in _ENCODED_WORD.finditer(line):
            unencoded = line[position : match.start()]
            if first:
                unencoded, first = unencoded.lstrip(), False
            if unencoded:
                words.append((unencoded, None, None))
            encoding, charset = match.group("encoding").lower(), match.group("charset").lower()
            words.append((match.group("encoded"), encoding, charset))
            position = match.end()
        tail = line[position:]
        if first:
            tail = tail.lstrip()
        if tail:
            words.append((tail, None, None))
    # White space between two encoded-words is dropped (RFC 2047 6.2), decided on the list as
    # it was (decode_header marks first, deletes after).
    kept = [
        word
        for n, word in enumerate(words)
        if not (
            0 < n < len(words) - 1 and words[n + 1][1] and words[n - 1][1] and word[0].isspace()
        )
    ]
    collapsed: list[tuple[bytes | str, str | None]] = []
    run: list[bytes] = []
    run_charset: str | None = None
    for text, encoding, charset in kept:
        word = _decoded(text, encoding)
        if run and charset != run_charset:
            collapsed.append(_joined(run, run_charset))
            run = []
        run_charset = charset
        run.append(word)
    collapsed.append(_joined(run, run_charset))
    return collapsed


def _decoded(text: str, encoding: str | None) -> bytes:
    if encoding is None:
        return text.encode("raw-unicode-escape")
    if encoding == "q":
        return email.quoprimime.header_decode(text).encode("raw-unicode-escape")
    missing = len(text) % 4  # Postel's law, as decode_header: add missing padding
    if missing:
        text += "==="[: 4 - missing]
    try:
        return email.base64mime.decode(text)
    except binascii.Error as error:
        raise EncodedWordError("Base64 decoding error") from error


def _joined(run: list[bytes], charset: str | None) -> tuple[bytes, str | None]:
    return (b" " if charset is None else b"").join(run), charset
