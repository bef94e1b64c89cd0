"""Text parts' bytes as text: one decoding for every check that reads a body.

A part declares its charset; a mail reader decodes by it. When one check read the bytes as UTF-8
and another by the declared charset, a body in UTF-16 or EBCDIC showed the reader a phishing
text (or GTUBE) that the content rules never saw. So the MIME stage, the HTML reader, the links,
the content rules and the classifier all decode here.

Some of Python's codecs are no charset a mail reader knows, and one costs quadratic time
(`punycode`: 2.5 s for 240 KB); those, and names Python does not know, decode as if no charset
were declared. A byte order mark wins over the label, as in a browser.
"""

from __future__ import annotations

import codecs
import functools

# Python codecs that are no mail charset: escape-sequence and host-name codecs (punycode's
# decoder is quadratic), and the codec that refuses everything.
_NOT_CHARSETS = frozenset({"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined"})


@functools.lru_cache(maxsize=256)
def codec_of(charset: str) -> str | None:
    """The Python codec a declared charset names, or None when it names no text charset."""
    if not charset or len(charset) > 64:  # no charset name is longer (an encoded-word's may be)
        return None
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: a name with a NUL byte
        return None
    # bytes-to-bytes codecs (base64, zlib, rot13...) are no text encoding
    if not getattr(info, "_is_text_encoding", True):
        return None
    name = info.name.replace("_", "-")
    return None if name in _NOT_CHARSETS else info.name


def decode_text(data: bytes, charset: str = "") -> str:
    """`data` (a text part's decoded content) as the text a reader shows: a byte order mark's
    encoding, else the declared charset (bad bytes replaced), else UTF-8 when it is valid and
    Latin-1 when not (every byte a character, nothing dropped)."""
    codec = codec_of(charset)
    if data[:3] == b"\xef\xbb\xbf":
        return data[3:].decode("utf-8", "replace")
    # (a UTF-32 mark starts as UTF-16's does: the label tells them apart)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") and not (codec or "").startswith("utf-32"):
        return data.decode("utf-16", "replace")
    if codec is not None:
        return data.decode(codec, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start >= len(data) - 3 and error.reason == "unexpected end of data":
            return data[: error.start].decode("utf-8")  # a character cut by a caller's limit
        return data.decode("latin-1")


def decode_declared(data: bytes, charset: str) -> str:
    """Bytes a header's encoded-word declares `charset` for, bad bytes replaced; a name that is
    no charset (as codec_of reads it) reads as UTF-8."""
    return data.decode(codec_of(charset) or "utf-8", "replace")
