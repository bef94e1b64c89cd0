"""PDF: a bounded scan of name objects for JavaScript, automatic actions, Launch, embedded files.

Names are read from the file and from its Flate-compressed streams (object streams hide
dictionaries there), with `#xx` escapes decoded (`/J#61vaScript` is `/JavaScript`). Every read is
bounded: this is a triage, not a PDF renderer.
"""

from __future__ import annotations

import re
import zlib

_NAME = re.compile(rb"/((?:[A-Za-z0-9_.+\-]|#[0-9A-Fa-f]{2}){2,40})")
_STREAM = re.compile(rb"stream\r?\n")
_HEX = re.compile(rb"#([0-9A-Fa-f]{2})")
_SYMBOLS = {
    b"JavaScript": "PDF_JAVASCRIPT",
    b"JS": "PDF_JAVASCRIPT",
    b"OpenAction": "PDF_OPENACTION",
    b"AA": "PDF_OPENACTION",
    b"Launch": "PDF_LAUNCH",
    b"EmbeddedFile": "PDF_EMBEDDED_FILE",
    b"EmbeddedFiles": "PDF_EMBEDDED_FILE",
}
MAX_SCAN = 32 * 1024 * 1024
MAX_STREAMS = 2000
MAX_INFLATE = 4 * 1024 * 1024


def _names(buffer: bytes, out: set[str]) -> None:
    for match in _NAME.finditer(buffer):
        name = match.group(1)
        if b"#" in name:
            name = _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), name)
        symbol = _SYMBOLS.get(name)
        if symbol:
            out.add(symbol)


def inspect(data: bytes) -> list[str]:
    """The PDF_* symbols this document deserves, sorted."""
    data = data[:MAX_SCAN]
    found: set[str] = set()
    _names(data, found)
    inflated = 0
    for count, match in enumerate(_STREAM.finditer(data)):
        if count >= MAX_STREAMS or inflated >= MAX_SCAN:
            break
        decompressor = zlib.decompressobj()
        try:
            chunk = decompressor.decompress(
                data[match.end() : match.end() + MAX_INFLATE], MAX_INFLATE
            )
        except zlib.error:
            continue
        inflated += len(chunk)
        _names(chunk, found)
    return sorted(found)
