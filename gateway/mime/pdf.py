"""PDF: a bounded scan of name objects for JavaScript, automatic actions, Launch, embedded files.

Names are read from the file and from its Flate-compressed streams (object streams hide
dictionaries there), with `#xx` escapes decoded (`/J#61vaScript` is `/JavaScript`). Every read is
bounded: this is a triage, not a PDF renderer.

An encrypted PDF hides its streams (object streams too) from that scan. One that opens with the
empty user password (permissions only: readers open it without asking) is decrypted by pypdf
and its objects' names read; one that asks for a password is PDF_ENCRYPTED: nobody can say what
it holds, so policy quarantines it.
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from typing import Any

logging.getLogger("pypdf").setLevel(logging.CRITICAL + 1)

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
MAX_OBJECTS = 5000  # objects of an encrypted PDF read through pypdf
MAX_DECRYPT = 16 * 1024 * 1024  # a larger encrypted PDF is not decrypted: PDF_ENCRYPTED
_ENCRYPT = re.compile(rb"/Encrypt\s*(?:\d+\s+\d+\s+R|<<)")
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
    if _ENCRYPT.search(data):
        _encrypted(data, found)
    return sorted(found)


def _encrypted(data: bytes, found: set[str]) -> None:
    """Read an encrypted PDF's names through pypdf, or PDF_ENCRYPTED when it asks a password
    (or is too large to decrypt within bounds: then, too, nobody here read it)."""
    if len(data) > MAX_DECRYPT:
        found.add("PDF_ENCRYPTED")
        return
    import pypdf  # only encrypted PDFs need it (70 ms of start-up otherwise)
    from pypdf import PasswordType
    from pypdf.generic import IndirectObject

    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if not reader.is_encrypted:
            return
        if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            found.add("PDF_ENCRYPTED")
            return
        numbers = [(n, g) for g, table in reader.xref.items() for n in table]
        numbers += [(n, 0) for n in reader.xref_objStm]
        for number, generation in numbers[:MAX_OBJECTS]:
            reference = IndirectObject(number, generation, reader)
            _object_names(reference.get_object(), found, 0)
    except Exception:  # a PDF pypdf cannot open: what it holds is unknown
        found.add("PDF_ENCRYPTED")


MAX_ATTACHMENTS = 16  # files taken out of one PDF
MAX_ATTACHMENT_BYTES = 32 * 1024 * 1024  # of all of them together


def embedded_files(data: bytes) -> list[tuple[str | None, bytes]] | None:
    """The files a PDF carries (its EmbeddedFiles name tree: a reader opens them from the
    attachments pane), as (name, content); None when they cannot be read (pypdf refused the
    file, or it is too large to read within bounds). Only asked of a PDF_EMBEDDED_FILE one."""
    if len(data) > MAX_DECRYPT:
        return None
    import pypdf  # only PDFs that carry files need it

    out: list[tuple[str | None, bytes]] = []
    budget = MAX_ATTACHMENT_BYTES
    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
            return None
        for name, contents in reader.attachments.items():
            for content in contents:
                if len(out) >= MAX_ATTACHMENTS or len(content) > budget:
                    return out
                budget -= len(content)
                out.append((str(name)[:255] or None, bytes(content)))
    except Exception:  # a PDF pypdf cannot read: what it carries is unknown
        return None
    return out


def _object_names(value: Any, found: set[str], depth: int) -> None:
    from pypdf.generic import ArrayObject, DictionaryObject, NameObject

    if depth > 4:
        return
    if isinstance(value, DictionaryObject):
        for key, item in value.items():
            symbol = _SYMBOLS.get(str(key)[1:].encode("latin-1", "replace"))
            if symbol:
                found.add(symbol)
            _object_names(item, found, depth + 1)
    elif isinstance(value, NameObject):
        symbol = _SYMBOLS.get(str(value)[1:].encode("latin-1", "replace"))
        if symbol:
            found.add(symbol)
    elif isinstance(value, ArrayObject):
        for item in value[:64]:
            _object_names(item, found, depth + 1)
