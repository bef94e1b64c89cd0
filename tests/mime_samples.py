"""Builders for MIME and attachment tests: messages, archives, the EICAR file, tiny executables."""

from __future__ import annotations

import base64
import io
import struct
import tarfile
import zipfile
from pathlib import Path

from gateway.mime.content import ContentReport, scan
from gateway.mime.limits import DEFAULT_LIMITS, MimeSettings
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
