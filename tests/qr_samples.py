"""QR codes made in the test: images (zxing-cpp's encoder, Pillow) and PDFs holding them, and
messages carrying them. Nothing is copied from a corpus."""

from __future__ import annotations

import io
import struct
import zlib
from email.message import EmailMessage
from email.policy import SMTP

import numpy
import zxingcpp
from PIL import Image, ImageOps


def qr_image(text: str, scale: int = 4, mode: str = "L") -> Image.Image:
    """A QR code of `text`, black on white, `scale` pixels a module (with the quiet zone)."""
    barcode = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode)
    pixels = numpy.array(zxingcpp.write_barcode_to_image(barcode, scale=scale))
    return Image.fromarray(pixels).convert(mode)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def qr_png(text: str, scale: int = 4) -> bytes:
    return encoded(qr_image(text, scale))


def transparent_qr_png(text: str) -> bytes:
    """Black modules on a fully transparent background (white only when painted on a page)."""
    gray = qr_image(text)
    rgba = Image.new("RGBA", gray.size, (0, 0, 0, 0))
    rgba.putalpha(ImageOps.invert(gray))  # opaque where the module is black
    return encoded(rgba)


def photo_with_qr(text: str, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A phone-photo-sized JPEG with a QR code in one corner."""
    photo = Image.new("RGB", size, (190, 170, 150))
    photo.paste(qr_image(text, 6).resize((700, 700)).convert("RGB"), (size[0] - 900, 200))
    return encoded(photo, "JPEG", quality=85)


def pillow_pdf(*pages: Image.Image) -> bytes:
    """A PDF with one picture a page, as Pillow writes it (DCT for L and RGB, Indexed for P)."""
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=list(pages[1:]))
    return out.getvalue()


def flate_gray_pdf(image: Image.Image) -> bytes:
    """A minimal PDF drawing one FlateDecode DeviceGray image: the raw-samples reading."""
    gray = image.convert("L")
    samples = zlib.compress(gray.tobytes())
    width, height = gray.size
    content = f"q {width} 0 0 {height} 0 0 cm /Im1 Do Q".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
        "/Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>".encode(),
        f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} "
        f"/ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /FlateDecode "
        f"/Length {len(samples)} >>\nstream\n".encode()
        + samples
        + b"\nendstream",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and holds one tiny (wrong) IDAT: a decompression
    bomb's header, which must be refused before any pixel is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def mail(
    text: str = "Hello Bob,\n\nsee the attachment.\n",
    attachments: tuple[tuple[bytes, str, str], ...] = (),
    html: str | None = None,
    inline: tuple[tuple[bytes, str, str], ...] = (),
    subject: str = "Action required",
) -> bytes:
    """A message (CRLF) with a text body, an optional HTML body with inline (cid:) images, and
    attachments given as (data, maintype/subtype, filename)."""
    msg = EmailMessage()
    msg["From"] = "IT Support <it@example.net>"
    msg["To"] = "bob@example.com"
    msg["Subject"] = subject
    msg["Date"] = "Fri, 27 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<qr-test@example.net>"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
        body = msg.get_payload()[1]  # type: ignore[index]
        for number, (data, ctype, name) in enumerate(inline, start=1):
            main, sub = ctype.split("/")
            body.add_related(data, main, sub, cid=f"<img{number}@example.net>", filename=name)
    for data, ctype, name in attachments:
        main, sub = ctype.split("/")
        msg.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return msg.as_bytes(policy=SMTP)
