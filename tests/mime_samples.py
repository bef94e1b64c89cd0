"""Builders for MIME and attachment tests: messages, archives, the EICAR file, tiny executables."""

from __future__ import annotations

import base64
import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import py7zr

from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings
from gateway.mime.content import ContentReport, scan
from gateway.mime.model import MimeReport
from gateway.mime.parse import analyze

SHARED = Path(__file__).resolve().parents[2] / "shared"
OLETOOLS = SHARED / "mime" / "oletools" / "tests" / "test-data"
SAMPLE_PASSWORD = b"infected-test"


def eicar() -> bytes:
    """The EICAR test file, built from two halves so this source is not itself a signature hit."""
    return b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def tiny_pe() -> bytes:
    """The headers of a PE32 executable: enough for libmagic to say what it is."""
    dos = b"MZ" + b"\x90\x00" + b"\x00" * 56 + struct.pack("<I", 64)
    return (
        dos
        + b"PE\x00\x00"
        + b"\x4c\x01\x01\x00"
        + b"\x00" * 12
        + b"\xe0\x00\x02\x01"
        + b"\x00" * 400
    )


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def tar_of(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return out.getvalue()


def sevenzip_of(
    members: dict[str, bytes], password: str | None = None, header_encryption: bool = False
) -> bytes:
    out = io.BytesIO()
    with py7zr.SevenZipFile(
        out, "w", password=password, header_encryption=header_encryption
    ) as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return out.getvalue()


# -- RAR5, written by hand ---------------------------------------------------------------------
# There is no pure-Python RAR writer (RAR compression is proprietary) and no .rar sample in
# ../shared or in the rarfile package, so these are built from the RAR 5.0 format description
# (rarlab.com/technote.htm): signature, then blocks of CRC32, vint size, vint type, vint flags,
# [vint extra size], [vint data size], fields, extra records; data follows its header. Members
# are stored (method 0) unless they only need to *declare* a size, like a bomb: the gateway
# lists RAR, it never decompresses it, so the data area is never read.

RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _rar5_block(kind: int, fields: bytes, extra: bytes = b"", data: bytes | None = None) -> bytes:
    flags = (0x01 if extra else 0) | (0x02 if data is not None else 0)
    head = _vint(kind) + _vint(flags)
    if extra:
        head += _vint(len(extra))
    if data is not None:
        head += _vint(len(data))
    head += fields + extra
    sized = _vint(len(head)) + head
    return struct.pack("<I", zlib.crc32(sized)) + sized + (data or b"")


def rar5_member(
    name: str, data: bytes, declared_size: int | None = None, encrypted: bool = False
) -> bytes:
    """A file block: stored `data`, or `declared_size` claimed (method 5) over `data`."""
    size = len(data) if declared_size is None else declared_size
    method = 0 if declared_size is None else 5
    raw = name.encode()
    fields = (
        _vint(0x04)  # file flags: data CRC32 present
        + _vint(size)
        + _vint(0x20)  # Windows attributes: archive
        + struct.pack("<I", zlib.crc32(data))
        + _vint(method << 7)
        + _vint(0)  # host OS: Windows
        + _vint(len(raw))
        + raw
    )
    extra = b""
    if encrypted:  # file encryption record: AES-256, KDF 2^15, salt, IV (never decrypted here)
        record = _vint(0x01) + _vint(0) + _vint(0) + bytes([15]) + b"S" * 16 + b"I" * 16
        extra = _vint(len(record)) + record
    return _rar5_block(2, fields, extra, data)


def rar5_of(*members: bytes, header_encryption: bool = False) -> bytes:
    """A RAR5 archive of `rar5_member` blocks; with header encryption, only the encryption
    header is readable and the rest (main header, file headers) is opaque ciphertext."""
    if header_encryption:
        encryption = _rar5_block(4, _vint(0) + _vint(0) + bytes([15]) + b"S" * 16)
        return RAR5_SIGNATURE + encryption + b"\x8e" * 16 + bytes(range(64))
    main = _rar5_block(1, _vint(0))
    end = _rar5_block(5, _vint(0))
    return RAR5_SIGNATURE + main + b"".join(members) + end


def oletools_sample(relative: str) -> bytes:
    """A sample file; the .zip ones are encrypted with the password `infected-test`."""
    data = (OLETOOLS / relative).read_bytes()
    if relative.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = archive.read(archive.namelist()[0], pwd=SAMPLE_PASSWORD)
    return data


def b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def with_attachment(
    data: bytes,
    filename: str,
    ctype: str = "application/octet-stream",
    body: str = "Please see the attachment.",
    disposition: str | None = None,
) -> bytes:
    """A multipart/mixed message with a text part and one base64 attachment."""
    disposition = disposition or f'attachment; filename="{filename}"'
    return (
        "From: Alice <alice@example.net>\r\n"
        "To: Bob <bob@example.com>\r\n"
        "Subject: attachment\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        "Message-ID: <att-1@example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{body}\r\n"
        "--b1\r\n"
        f"Content-Type: {ctype}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: {disposition}\r\n"
        "\r\n"
        f"{b64(data)}\r\n"
        "--b1--\r\n"
    ).encode()


def inspect(
    raw: bytes, limits: MimeSettings = DEFAULT_LIMITS
) -> tuple[MimeReport, ContentReport, set[str]]:
    """The whole stage offline: the parse, the content scan, and the union of their symbols."""
    report = analyze(raw, limits)
    content = scan(report, limits)
    return report, content, report.symbols() | content.symbols()


# -- Outlook messages: a minimal OLE compound file writer (no library here writes one) -------


def compound_file(streams: dict[str, bytes]) -> bytes:
    """A minimal OLE compound file (version 3) of storages and streams by path ("a/b"):
    streams under 4096 bytes in the mini stream, larger ones in sectors, siblings chained."""
    sector, mini = 512, 64
    free, end, fatsect = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
    entries: list[dict[str, Any]] = [{"name": "Root Entry", "type": 5, "kids": [], "data": b""}]
    index = {"": 0}
    for path, data in streams.items():
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            key = "/".join(parts[:depth])
            if key not in index:
                leaf = depth == len(parts)
                entries.append(
                    {
                        "name": parts[depth - 1],
                        "type": 2 if leaf else 1,
                        "kids": [],
                        "data": data if leaf else b"",
                    }
                )
                index[key] = len(entries) - 1
                entries[index["/".join(parts[: depth - 1])]]["kids"].append(index[key])
    body = bytearray()
    fat_chains: list[tuple[int, int]] = []
    ministream = bytearray()
    minifat: list[int] = []

    def sectors(data: bytes) -> int:
        start = len(body) // sector
        count = -(-len(data) // sector)
        body.extend(data + b"\x00" * (count * sector - len(data)))
        fat_chains.append((start, count))
        return start

    for entry in entries[1:]:
        data = entry["data"]
        entry["start"] = end
        if entry["type"] == 2 and data:
            if len(data) >= 4096:
                entry["start"] = sectors(data)
            else:
                start = len(ministream) // mini
                count = -(-len(data) // mini)
                ministream.extend(data + b"\x00" * (count * mini - len(data)))
                minifat.extend(start + i + 1 if i < count - 1 else end for i in range(count))
                entry["start"] = start
    entries[0]["start"] = sectors(bytes(ministream)) if ministream else end
    entries[0]["size"] = len(ministream)
    minifat_bytes = struct.pack(f"<{len(minifat)}I", *minifat) if minifat else b""
    minifat_start = (
        sectors(minifat_bytes.ljust(-(-len(minifat_bytes) // sector) * sector, b"\xff"))
        if minifat
        else end
    )
    minifat_count = -(-len(minifat_bytes) // sector)
    right = {
        a: b for entry in entries for a, b in zip(entry["kids"], entry["kids"][1:], strict=False)
    }
    directory = bytearray()
    for number, entry in enumerate(entries):
        name = entry["name"].encode("utf-16-le") + b"\x00\x00"
        directory += name.ljust(64, b"\x00") + struct.pack("<HBB", len(name), entry["type"], 1)
        directory += struct.pack(
            "<III", free, right.get(number, free), entry["kids"][0] if entry["kids"] else free
        )
        directory += b"\x00" * 36
        directory += struct.pack("<II", entry["start"], entry.get("size", len(entry["data"])))
        directory += b"\x00" * 4
    dir_start = sectors(bytes(directory))
    used = len(body) // sector
    fat_count = 1
    while used + fat_count > fat_count * 128:
        fat_count += 1
    fat = [free] * (fat_count * 128)
    for start, count in fat_chains:
        for i in range(count):
            fat[start + i] = start + i + 1 if i < count - 1 else end
    for i in range(fat_count):
        fat[used + i] = fatsect
    difat = [used + i for i in range(fat_count)] + [free] * (109 - fat_count)
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16
    header += struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\x00" * 6
    header += struct.pack(
        "<IIIIIIIII", 0, fat_count, dir_start, 0, 4096, minifat_start, minifat_count, end, 0
    )
    header += struct.pack("<109I", *difat)
    return header + bytes(body) + struct.pack(f"<{len(fat)}I", *fat)


def outlook_message(files: dict[str, bytes]) -> bytes:
    """An Outlook .msg with these attachments (PR_ATTACH_DATA_BIN, PR_ATTACH_LONG_FILENAME)."""
    streams = {"__properties_version1.0": b"\x00" * 32}
    for number, (name, data) in enumerate(files.items()):
        storage = f"__attach_version1.0_#{number:08X}"
        streams[f"{storage}/__substg1.0_37010102"] = data
        streams[f"{storage}/__substg1.0_3707001F"] = name.encode("utf-16-le")
    return compound_file(streams)
