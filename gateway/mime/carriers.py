"""Formats that carry files a client opens, unwrapped in memory with bounded output.

TNEF (winmail.dat, which Outlook unpacks into its attachments), S/MIME opaque signed-data (the
signed entity sits inside the CMS blob: a client shows it, a MIME walker sees one binary part),
Microsoft cabinets, zstd streams (.tar.zst), a zip behind another file's header (zip readers
open an archive from its end-of-central-directory record, wherever the file starts), files
encoded in text (uuencode, `begin-base64`, yEnc, BinHex 4.0) and MIME entities carried as
data (an .eml attachment, a base64-encoded message/rfc822 or multipart that a lenient client
decodes). Each function returns what it found, or raises `CarrierError` (the carrier cannot be
read: its content stays unknown) or `CarrierUnsupported` (a variant not decoded here); output
past `limit` bytes raises `CarrierTooLarge`. What is then done with the files is the content
scan's job (gateway.mime.content).
"""

from __future__ import annotations

import binascii
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms
from tnefparse.tnef import TNEF

logging.getLogger("tnefparse").setLevel(logging.CRITICAL + 1)

try:  # Python 3.14 has zstd in the standard library; backports.zstd is the same module
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[no-redef,unused-ignore]


class CarrierError(Exception):
    """The carrier is corrupt: what it holds cannot be read."""


class CarrierUnsupported(Exception):
    """A variant of the format that is not decoded here (LZX cabinets...)."""


class CarrierTooLarge(Exception):
    """The carried content expands past the limit it was given."""


@dataclass(frozen=True, slots=True)
class Carried:
    """One file taken out of a carrier: its name (if the carrier gives one) and content;
    `body` when the client shows it as the message text rather than as a file."""

    name: str | None
    data: bytes
    body: bool = False


def _check(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise CarrierTooLarge(f"{what} expands past {limit} bytes")


# -- TNEF (winmail.dat) ----------------------------------------------------------------------------

TNEF_MAGIC = b"\x78\x9f\x3e\x22"


_TNEF_DEPTH = 4  # messages attached inside a TNEF message, inside one...


def tnef_files(data: bytes, limit: int) -> list[Carried]:
    """The attachments and HTML body of a TNEF stream, and those of the messages attached
    in it (tnefparse: pure Python, linear in the input)."""
    try:
        tnef = TNEF(data, do_checksum=False)
    except Exception as exc:  # tnefparse raises ValueError, struct.error, IndexError...
        raise CarrierError(f"TNEF: {type(exc).__name__}") from exc
    out: list[Carried] = []
    _tnef_collect(tnef, out, limit, 0)
    return out


def _tnef_collect(tnef: Any, out: list[Carried], limit: int, depth: int) -> None:
    html = getattr(tnef, "htmlbody", None)
    if isinstance(html, (bytes, str)) and html:
        body = html.encode("utf-8", "replace") if isinstance(html, str) else html
        out.append(Carried(None, body, body=True))
    for attachment in tnef.attachments:
        content = bytes(attachment.data or b"")
        _check(sum(len(c.data) for c in out) + len(content), limit, "TNEF")
        try:
            name = str(attachment.long_filename() or attachment.name or "")
        except Exception:  # a name in an unknown code page: the content still counts
            name = ""
        out.append(Carried(name.strip("\x00") or None, content))
        embedded = getattr(attachment, "embed", None)
        if embedded is not None:
            if depth >= _TNEF_DEPTH:
                raise CarrierUnsupported(f"TNEF messages nested past {_TNEF_DEPTH} levels")
            _tnef_collect(embedded, out, limit, depth + 1)


# -- S/MIME opaque signed-data ---------------------------------------------------------------------

_SIGNED_DATA_OID = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"
_SMIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
# a detached signature (multipart/signed's second part) carries no content
_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})


def is_cms_signed(data: bytes, declared: str | None) -> bool:
    """A CMS SignedData blob (by its OID near the start), or a part declared pkcs7-mime."""
    if declared in _SIGNATURE_TYPES or data[:1] != b"\x30":
        return False
    return _SIGNED_DATA_OID in data[:32] or declared in _SMIME_TYPES


def cms_signed_content(data: bytes) -> bytes | None:
    """The encapsulated content of a CMS SignedData (BER or DER), or None when the blob is
    another CMS type (enveloped-data) or a detached signature without content.

    asn1crypto reads it; when it refuses the blob (it splits every field of SignedData, and a
    certificate encoded the way some 2000s clients did stops it), a minimal BER walk reads
    the encapsulated content alone, which comes before the certificates."""
    try:
        info = cms.ContentInfo.load(data, strict=False)
        if info["content_type"].native != "signed_data":
            return None
        content = info["content"]["encap_content_info"]["content"]
        if content.native is None:
            return None  # a detached signature: the content is the MIME part beside it
        value = content.native
        return bytes(value) if isinstance(value, (bytes, bytearray)) else bytes(content.contents)
    except Exception as exc:  # asn1crypto raises ValueError, TypeError on malformed input
        try:
            return _ber_signed_content(data)
        except (IndexError, ValueError) as walk:
            raise CarrierError(f"CMS: {type(exc).__name__}") from walk


_BER_DEPTH = 32


def _ber_header(data: bytes, at: int) -> tuple[int, bool, int | None, int]:
    """(tag byte, constructed, length or None for indefinite, offset of the contents)."""
    tag = data[at]
    at += 1
    if tag & 0x1F == 0x1F:  # high tag numbers: never used by CMS's fields read here
        raise ValueError("high tag number")
    first = data[at]
    at += 1
    if first < 0x80:
        return tag, bool(tag & 0x20), first, at
    count = first & 0x7F
    if count == 0:
        return tag, True, None, at
    if count > 4:
        raise ValueError("length too long")
    length = int.from_bytes(data[at : at + count], "big")
    return tag, bool(tag & 0x20), length, at + count


def _ber_end(data: bytes, at: int, depth: int = 0) -> int:
    """The offset just past the element at `at` (indefinite lengths walked)."""
    if depth > _BER_DEPTH:
        raise ValueError("nested too deep")
    _tag, _constructed, length, at = _ber_header(data, at)
    if length is not None:
        if at + length > len(data):
            raise ValueError("truncated")
        return at + length
    while data[at : at + 2] != b"\x00\x00":
        at = _ber_end(data, at, depth + 1)
    return at + 2


def _ber_children(data: bytes, at: int, want: int = 64) -> list[int]:
    """Offsets of the first `want` children of the constructed element at `at` (the later
    ones are not even looked at)."""
    _tag, _constructed, length, start = _ber_header(data, at)
    end = start + length if length is not None else None
    out: list[int] = []
    pos = start
    while (end is None and data[pos : pos + 2] != b"\x00\x00") or (end is not None and pos < end):
        out.append(pos)
        if len(out) >= want:
            break
        pos = _ber_end(data, pos)
    return out


def _ber_octets(data: bytes, at: int, depth: int = 0) -> bytes:
    """An OCTET STRING's value, primitive or constructed from chunks (as OpenSSL streams it)."""
    if depth > _BER_DEPTH:
        raise ValueError("nested too deep")
    _tag, constructed, length, start = _ber_header(data, at)
    if not constructed:
        return data[start : start + (length or 0)]
    return b"".join(_ber_octets(data, child, depth + 1) for child in _ber_children(data, at))


def _ber_signed_content(data: bytes) -> bytes | None:
    info = _ber_children(data, 0, 2)
    if len(info) < 2 or data[info[0] : info[0] + 11] != _SIGNED_DATA_OID:
        return None
    signed = _ber_children(data, _ber_children(data, info[1], 1)[0], 3)
    encapsulated = _ber_children(data, signed[2], 2)  # version, digest algorithms, then this
    if len(encapsulated) < 2:
        return None  # detached
    return _ber_octets(data, _ber_children(data, encapsulated[1], 1)[0])


# -- cabinets --------------------------------------------------------------------------------------

# -- Outlook messages (.msg): an OLE compound file, each attachment a storage ------------------

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_MSG_ATTACHMENT = "__attach_version1.0_#"
_MSG_DATA = "__substg1.0_37010102"  # PR_ATTACH_DATA_BIN
_MSG_NAMES = ("__substg1.0_3707001F", "__substg1.0_3704001F")  # long, then short file name
_MSG_MAX_ATTACHMENTS = 256


def is_outlook_message(data: bytes) -> bool:
    """Whether `data` is an Outlook .msg (cheap: the OLE magic and the MAPI stream names)."""
    return data.startswith(OLE_MAGIC) and b"_\x00_\x00p\x00r\x00o\x00p\x00e\x00r\x00" in data


def msg_files(data: bytes, limit: int) -> list[Carried]:
    """The files attached to an Outlook message: what Outlook opens with a double click."""
    import olefile  # with oletools, already loaded by the Office scan

    out: list[Carried] = []
    total = 0
    try:
        ole = olefile.OleFileIO(data)
    except Exception as exc:
        raise CarrierError(f"msg: {exc}") from exc
    with ole:
        attachments = sorted(
            {path[0] for path in ole.listdir() if path[0].startswith(_MSG_ATTACHMENT)}
        )
        for storage in attachments[:_MSG_MAX_ATTACHMENTS]:
            if not ole.exists(f"{storage}/{_MSG_DATA}"):
                continue  # an attached message (a storage of its own) or a link
            size = ole.get_size(f"{storage}/{_MSG_DATA}")
            total += size
            if size > limit or total > limit:
                raise CarrierTooLarge(f"msg attachments past {limit} bytes")
            content = ole.openstream(f"{storage}/{_MSG_DATA}").read()
            name = None
            for stream in _MSG_NAMES:
                if ole.exists(f"{storage}/{stream}"):
                    raw = ole.openstream(f"{storage}/{stream}").read(2048)
                    name = raw.decode("utf-16-le", "replace").rstrip("\x00") or None
                    break
            out.append(Carried(name, content))
    return out


CAB_MAGIC = b"MSCF\x00\x00\x00\x00"
_CAB_BLOCK = 32768  # MS-CAB: a CFDATA block holds at most 32 KiB uncompressed


def cab_files(data: bytes, limit: int) -> list[Carried]:
    """Members of a cabinet (MS-CAB: stored or MSZIP folders), decompressed block by block with
    each block's output bounded (cabarchive inflates a block without a bound, a bomb's way)."""
    try:
        (_sig, _r1, _size, _r2, files_at, _r3, _minor, _major, n_folders, n_files, flags) = (
            struct.unpack_from("<4sIIIIIBBHHH", data, 0)
        )
        pos = 36
        folder_reserve = data_reserve = 0
        if flags & 0x4:
            header_reserve, folder_reserve, data_reserve = struct.unpack_from("<HBB", data, pos)
            pos += 4 + header_reserve
        if flags & 0x3:
            raise CarrierUnsupported("cabinet set (chained cabinets)")
        folders: list[bytes] = []
        total = 0
        for _ in range(n_folders):
            start, blocks, compression = struct.unpack_from("<IHH", data, pos)
            pos += 8 + folder_reserve
            kind = compression & 0x000F
            if start < 36 or not blocks:
                raise CarrierError("cabinet: a folder without data blocks")
            if kind not in (0, 1):
                raise CarrierUnsupported(f"cabinet compression {kind} (LZX or Quantum)")
            out = bytearray()
            window = b""
            at = start
            for _block in range(blocks):
                _sum, packed, _unpacked = struct.unpack_from("<IHH", data, at)
                at += 8 + data_reserve
                chunk = data[at : at + packed]
                at += packed
                if len(chunk) != packed:
                    raise CarrierError("cabinet: truncated data block")
                if kind == 1:
                    if chunk[:2] != b"CK":
                        raise CarrierError("cabinet: bad MSZIP block")
                    inflate = zlib.decompressobj(-zlib.MAX_WBITS, zdict=window)
                    block = inflate.decompress(chunk[2:], _CAB_BLOCK + 1)
                    if len(block) > _CAB_BLOCK:
                        raise CarrierError("cabinet: MSZIP block larger than 32 KiB")
                    window = block
                else:
                    block = chunk
                out += block
                total += len(block)
                _check(total, limit, "cabinet")
            folders.append(bytes(out))
        pos = files_at
        members: list[Carried] = []
        for _ in range(n_files):
            size, offset, folder = struct.unpack_from("<IIH", data, pos)
            end = data.index(b"\x00", pos + 16)
            name = data[pos + 16 : end].decode("utf-8" if flags & 0x80 else "latin-1", "replace")
            pos = end + 1
            if folder >= len(folders):  # 0xFFFD..0xFFFF: continued from another cabinet
                raise CarrierUnsupported("cabinet member continued in another cabinet")
            content = folders[folder][offset : offset + size]
            if len(content) != size:
                raise CarrierError(f"cabinet: {name[:40]} is truncated")
            members.append(Carried(name, content))
        return members
    except (struct.error, ValueError, zlib.error) as exc:
        raise CarrierError(f"cabinet: {type(exc).__name__}") from exc


# -- zstd ------------------------------------------------------------------------------------------


def zstd_decompress(data: bytes, limit: int) -> bytes:
    """A zstd stream (every frame), at most `limit` bytes of output."""
    out = bytearray()
    rest = data
    try:
        while rest:
            decompressor = zstd.ZstdDecompressor()
            out += decompressor.decompress(rest, limit + 1 - len(out))
            _check(len(out), limit, "zstd")
            if not decompressor.eof:
                if decompressor.needs_input:
                    raise CarrierError("zstd: truncated stream")
                raise CarrierTooLarge(f"zstd expands past {limit} bytes")
            rest = decompressor.unused_data
    except zstd.ZstdError as exc:
        raise CarrierError(f"zstd: {exc}") from exc
    return bytes(out)


# -- a zip after other data (polyglots) ------------------------------------------------------------

_EOCD = b"PK\x05\x06"
_ZIP_TAIL = 65535 + 22  # the end record and its longest comment


def embedded_zip(data: bytes) -> bytes | None:
    """The bytes up to a zip's end record when `data` ends with a zip but starts as something
    else (a GIF, a PDF): what Windows Explorer, 7-Zip and Python's zipfile open."""
    at = data.rfind(_EOCD, max(0, len(data) - _ZIP_TAIL))
    if at < 0 or len(data) - at < 22:
        return None
    (directory_size, directory_at, comment) = struct.unpack_from("<IIH", data, at + 12)
    start = at - directory_size
    if start < 0 or data[start : start + 4] not in (b"PK\x01\x02", _EOCD):
        return None  # four bytes that happen to look like an end record
    if data[:4] == b"PK\x03\x04" and directory_at == start:
        return None  # an ordinary zip
    return data[: at + 22 + comment]


_MAX_SECTIONS = 8


def zip_ends(data: bytes) -> list[int]:
    """Where each zip end record that points back at a central directory ends, in order (at
    most 8): zips written one after another have one each, and zip readers disagree on which
    one a file is (7-Zip reads the first, zipfile and Explorer the last). A stored zip member
    has one too: the caller tells them apart by where the archives' members start."""
    ends: list[int] = []
    at = data.find(_EOCD)
    while at >= 0 and len(ends) < _MAX_SECTIONS and len(data) - at >= 22:
        directory_size, _directory_at, comment = struct.unpack_from("<IIH", data, at + 12)
        start = at - directory_size
        end = at + 22 + comment
        if start >= 0 and data[start : start + 4] in (b"PK\x01\x02", _EOCD) and end <= len(data):
            ends.append(end)
        at = data.find(_EOCD, at + 4)
    return ends


# 7-Zip and WinRAR look for their archive past other data (a self-extractor's stub, a GIF)
_ARCHIVE_MAGICS = (
    ("7z", b"7z\xbc\xaf\x27\x1c"),
    ("rar", b"Rar!\x1a\x07\x01\x00"),
    ("rar", b"Rar!\x1a\x07\x00"),
)
_PREFIX_SEARCH = 1 << 20  # how far into a file the start of an archive is looked for


def embedded_archive(data: bytes) -> tuple[str, bytes] | None:
    """("7z" or "rar", the archive) when `data` starts as something else and holds one of
    those archives further on, within the first MiB: what 7-Zip and WinRAR open."""
    head = data[: _PREFIX_SEARCH + 8]
    found = [(head.find(magic, 1), kind) for kind, magic in _ARCHIVE_MAGICS]
    starts = sorted((at, kind) for at, kind in found if at > 0)
    if not starts:
        return None
    at, kind = starts[0]
    return kind, data[at:]


# -- files encoded in text -------------------------------------------------------------------------

_UU_BEGIN = re.compile(rb"^begin(-base64)? [0-7]{3,4} ([^\r\n]{1,255}?)\r?$", re.M)
_YENC_BEGIN = re.compile(rb"^=ybegin [^\r\n]*?name=([^\r\n]{1,255}?)\r?$", re.M)
_BINHEX_START = b"(This file must be converted with BinHex"
_BINHEX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_BINHEX_VALUE = {c: i for i, c in enumerate(_BINHEX_ALPHABET)}
_YENC_TABLE = bytes((i - 42) & 0xFF for i in range(256))
_MAX_BLOCKS = 20
_TEXT_MARKERS = (b"begin ", b"begin-base64 ", b"=ybegin ", _BINHEX_START)


def has_text_encoded(data: bytes) -> bool:
    """Whether `data` holds the start of a uuencoded, yEnc or BinHex file (a substring test
    first: the line patterns run only on text that has one of the markers)."""
    if not any(marker in data for marker in _TEXT_MARKERS):
        return False
    return bool(_BINHEX_START in data or _UU_BEGIN.search(data) or _YENC_BEGIN.search(data))


def text_encoded_files(data: bytes, limit: int) -> list[Carried]:
    """Files written into text: uuencode (and `begin-base64`), yEnc, BinHex 4.0."""
    out: list[Carried] = []
    total = 0
    for count, match in enumerate(_UU_BEGIN.finditer(data)):
        if count >= _MAX_BLOCKS:
            break
        body = data[match.end() :]
        content = _unbase64_block(body) if match.group(1) else _uu_block(body, limit)
        total += len(content)
        _check(total, limit, "uuencoded files")
        out.append(Carried(match.group(2).decode("latin-1").strip(), content))
    for count, match in enumerate(_YENC_BEGIN.finditer(data)):
        if count >= _MAX_BLOCKS:
            break
        content = _yenc_block(data[match.end() :], limit)
        total += len(content)
        _check(total, limit, "yEnc files")
        out.append(Carried(match.group(1).decode("latin-1").strip(), content))
    start = data.find(_BINHEX_START)
    if start >= 0:
        name, content = _binhex(data[start:], limit)
        _check(total + len(content), limit, "BinHex file")
        out.append(Carried(name, content))
    return out


def _lines(body: bytes) -> list[bytes]:
    lines = body.split(b"\n")
    return [line.rstrip(b"\r") for line in lines[1:]]  # lines[0] ends the begin line


def _uu_block(body: bytes, limit: int) -> bytes:
    out = bytearray()
    for line in _lines(body):
        if line.strip() in (b"end", b"`", b""):
            break
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            count = ((line[0] - 32) & 63) if line else 0
            try:
                out += binascii.a2b_uu(line[: (count * 4 + 5) // 3])
            except binascii.Error:
                break
        if len(out) > limit:
            break
    return bytes(out)


def _unbase64_block(body: bytes) -> bytes:
    lines: list[bytes] = []
    for line in _lines(body):
        if line.strip() == b"====":
            break
        lines.append(line)
    try:
        return binascii.a2b_base64(b"".join(lines))
    except binascii.Error:
        return b""


def _yenc_block(body: bytes, limit: int) -> bytes:
    out = bytearray()
    for line in _lines(body):
        if line.startswith(b"=yend"):
            break
        if line.startswith(b"=ypart "):
            continue
        pieces = line.split(b"=")
        out += pieces[0].translate(_YENC_TABLE)
        for piece in pieces[1:]:
            if piece:
                out.append((piece[0] - 106) & 0xFF)  # an escape: 64 + 42 below the byte
                out += piece[1:].translate(_YENC_TABLE)
        if len(out) > limit:
            break
    return bytes(out)


def _binhex(text: bytes, limit: int) -> tuple[str | None, bytes]:
    """BinHex 4.0: 6-bit text between colons, run-length coded, then a header and the data
    fork (the resource fork is Mac-only metadata and is not returned)."""
    begin = text.find(b"\n:")
    end = text.find(b":", begin + 2) if begin >= 0 else -1
    if begin < 0 or end < 0:
        raise CarrierError("BinHex: no encoded block")
    bits = 0
    count = 0
    packed = bytearray()
    for char in text[begin + 2 : end]:
        if char in b" \t\r\n":
            continue
        value = _BINHEX_VALUE.get(char)
        if value is None:
            raise CarrierError("BinHex: a character outside its alphabet")
        bits = (bits << 6) | value
        count += 6
        if count >= 8:
            count -= 8
            packed.append((bits >> count) & 0xFF)
            bits &= (1 << count) - 1
        if len(packed) > 2 * limit + 64:
            raise CarrierTooLarge(f"BinHex expands past {limit} bytes")
    raw = bytearray()
    index = 0
    while index < len(packed):
        byte = packed[index]
        if byte == 0x90 and index + 1 < len(packed):
            run = packed[index + 1]
            index += 2
            if run == 0:
                raw.append(0x90)
            elif raw:
                raw += bytes([raw[-1]]) * (run - 1)
        else:
            raw.append(byte)
            index += 1
        if len(raw) > limit + 64 + 256:
            raise CarrierTooLarge(f"BinHex expands past {limit} bytes")
    try:
        length = raw[0]
        name = raw[1 : 1 + length].decode("mac_roman", "replace")
        at = 1 + length + 1 + 4 + 4 + 2
        (data_length,) = struct.unpack_from(">I", raw, at)
    except (IndexError, struct.error) as exc:
        raise CarrierError("BinHex: truncated header") from exc
    start = at + 4 + 4 + 2
    _check(data_length, limit, "BinHex file")
    return name or None, bytes(raw[start : start + data_length])


# -- MIME entities carried as data -----------------------------------------------------------------

_ENTITY_FIELD = re.compile(
    rb"^(?:content-type|mime-version|from|received|return-path|subject|message-id|date)[ \t]*:",
    re.I | re.M,
)
# in a text part, headers quoted by a forward ("From:", "Sent:", "Subject:") are text: only a
# MIME or transport field makes it an entity
_MIME_FIELD = re.compile(
    rb"^(?:content-type|mime-version|received|return-path|message-id)[ \t]*:", re.I | re.M
)
_HEADER_LINE = re.compile(rb"[!-9;-~]{1,76}[ \t]*:")
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
_DELIMITER = re.compile(rb"^--([ -~]{1,70}?)[ \t]*\r?$", re.M)
_MIN_BASE64 = 64


def _looks_like_entity(data: bytes, strict: bool) -> bool:
    """A header section first (field lines up to an empty line) with a MIME or mail field
    (`strict`: a MIME or transport field)."""
    head, blank, _ = data[:65536].partition(b"\n\r\n" if b"\r\n" in data[:200] else b"\n\n")
    if not blank or not _HEADER_LINE.match(head):
        return False
    return bool((_MIME_FIELD if strict else _ENTITY_FIELD).search(head))


def _is_base64_text(data: bytes) -> bool:
    sample = data[: 1 << 20]
    return len(sample.strip()) >= _MIN_BASE64 and not sample.translate(None, _BASE64_CHARS)


def nested_entity(data: bytes, declared: str | None) -> bytes | None:
    """A MIME entity carried as content, ready for the MIME parser, or None.

    An .eml file, a message/rfc822 or multipart whose body a client decodes from base64 though
    RFC 2045 allows no such encoding there; a multipart that arrives without its header (base64
    of a multipart body) is given one with the first delimiter line as its boundary."""
    candidate = data
    strict = (declared or "").startswith("text/")
    if _is_base64_text(data):
        try:
            candidate = binascii.a2b_base64(data)
        except binascii.Error:
            return None
        strict = False
    if _looks_like_entity(candidate, strict):
        return candidate
    if (declared or "").startswith("multipart/"):
        delimiter = _DELIMITER.search(candidate[:65536])
        if delimiter:
            boundary = delimiter.group(1).replace(b'"', b"")
            header = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
            return header + candidate
    return None
