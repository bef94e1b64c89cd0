"""QR codes in the pictures of a message: image parts, inline (cid:) and data: images, and the
images embedded in PDF attachments, decoded with zxing-cpp.

Quishing hides the phishing link where URL filters do not look: in the pixels of a QR code,
for the victim to open on a phone, outside the company's protection. Decoding puts those links
back in the message's URL list (`ParsedMessage.qr_urls`) for the same link checks as the text's.

Decoding is CPU work that grows with hostile input, so every step has a bound ([mime] qr_* in
config/gateway.toml) and the whole scan runs in a worker thread (zxing-cpp releases the GIL):
- only PNG, JPEG, GIF, BMP and WebP reach Pillow (its other parsers never see mail bytes), and
  an image is chosen by its content, not by its declared type (`application/octet-stream`
  named `scan.png` is still an image to the mail client);
- an image's size is read from its header before any pixel is decoded: one over
  `qr_max_image_pixels` (a decompression bomb) is never decoded; a large one is decoded
  reduced (JPEG's DCT scaling, else a resample) to at most DECODE_PIXELS before the QR search;
- at most `qr_max_images` pictures and `qr_max_pdfs` PDFs per message, `qr_max_pdf_pages`
  pages of each, and `qr_time_budget` seconds in all, checked between pictures.
What a bound skips is reported (`QrScan.skipped`: the qr plugin's QR_SCAN_LIMIT), never silent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pypdf
import zxingcpp
from PIL import Image
from pypdf.generic import ArrayObject, DictionaryObject, NameObject, StreamObject

from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings
from gateway.mime.model import Leaf, MimeReport

# Pillow warns (and then refuses) past its own MAX_IMAGE_PIXELS. Our bound is lower and checked
# first; a warning that still fires must stop the decode, not be printed and carried on.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# pypdf logs a WARNING for every oddity of a malformed PDF: hostile mail would write our log.
# What could not be read is reported in `QrScan.unreadable` instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)

# The formats mail clients show inline, by their first bytes. Pillow is told to try only these.
PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WEBP"),  # after "RIFF" and the chunk size
)
_PDF_HEADER = b"%PDF-"
_PDF_HEADER_WINDOW = 1024  # readers accept junk before the header; so do we, within this

# A QR code meant to be scanned from a screen is large: 4 megapixels keeps every module of one
# that fills a tenth of a phone screenshot, and bounds one decode to ~50 ms of CPU.
DECODE_PIXELS = 4_000_000
MIN_SIDE = 21  # the smallest QR code (version 1) is 21 modules: smaller images hold none
MAX_CODES_PER_IMAGE = 8
MAX_CODE_CHARS = 4096  # a QR code holds at most 7,089 digits; text beyond this is not a link
MAX_DATA_URIS = 64  # data: images looked for in one HTML body (each still counts as a picture)
_QR_FORMATS = zxingcpp.BarcodeFormats(
    zxingcpp.BarcodeFormat.QRCode
)  # QR, Micro QR, rMQR: what phone cameras open
_DATA_IMAGE = re.compile(
    rb"data:image/(?:png|jpe?g|gif|bmp|webp)\s*;\s*base64\s*,\s*([A-Za-z0-9+/=\s]{60,})", re.I
)
# PDF filters whose decoders are another program (jbig2dec) or a large parser (OpenJPEG)
_DATA_IMAGE_HINT = re.compile(rb"data:image", re.I)
_PDF_REFUSED_FILTERS = frozenset({"/JBIG2Decode", "/JPXDecode"})
PDF_LOOKAHEAD_PAGES = 200  # pages past qr_max_pdf_pages looked at (not decoded) for images
_FORM_DEPTH = 3  # form XObjects inside form XObjects searched for images


@dataclass(frozen=True, slots=True)
class QrCode:
    """One decoded QR code: its text as a phone would read it, and where it was."""

    text: str
    where: str  # "part 2 (scan.png)", "part 3 (invoice.pdf) page 1"
    in_pdf: bool = False


@dataclass(frozen=True, slots=True)
class Picture:
    """A picture to decode: image bytes, or a PDF whose embedded images are to be decoded."""

    data: bytes
    where: str
    kind: str  # "image", "pdf", or "html" (a body with data: images)


@dataclass(frozen=True)
class QrScan:
    """What the QR scan of one message found, and what its bounds made it skip."""

    codes: tuple[QrCode, ...] = ()
    images: int = 0  # pictures decoded (PDF images included)
    pdfs: int = 0
    skipped: tuple[str, ...] = ()  # bounds that stopped it: QR_SCAN_LIMIT
    unreadable: tuple[str, ...] = ()  # pictures that could not be decoded (corrupt, refused)
    elapsed: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.skipped


NO_PICTURES = QrScan()


def image_format(data: bytes) -> str | None:
    """The PILLOW_FORMATS name of `data` by its signature, or None."""
    for signature, offset, name in _SIGNATURES:
        if data.startswith(signature, offset):
            if name == "WEBP" and not data.startswith(b"RIFF"):
                continue
            return name
    return None


def is_pdf(data: bytes) -> bool:
    return _PDF_HEADER in data[:_PDF_HEADER_WINDOW]


def _label(leaf: Leaf) -> str:
    where = f"part {leaf.path}" if leaf.kind == "part" else f"{leaf.kind} {leaf.path}"
    if leaf.reading:
        where += " (2nd reading)"
    return f"{where} ({leaf.name[:60]})" if leaf.name else where


def pictures(report: MimeReport) -> list[Picture]:
    """Every leaf of every reading that is, or may carry, a picture: images, PDFs, and HTML
    bodies with `data:` images (kind "html", opened by `scan`), in order.

    Cheap (the first bytes of each leaf, a case-insensitive search of HTML bodies, no copy):
    made on the event loop, so a message without pictures costs nothing more. Hashing and
    base64 decoding wait for `scan`, in its thread.
    """
    found: list[Picture] = []
    for leaf in report.leaves:
        if leaf.kind == "raw" or not leaf.data:
            continue  # the unparsed message: no picture a client would show
        if image_format(leaf.data) is not None:
            found.append(Picture(leaf.data, _label(leaf), "image"))
        elif is_pdf(leaf.data):
            found.append(Picture(leaf.data, _label(leaf), "pdf"))
        elif leaf.content_type == "text/html" and _DATA_IMAGE_HINT.search(leaf.data):
            found.append(Picture(leaf.data, _label(leaf), "html"))
    return found


def _data_images(picture: Picture) -> Iterator[Picture]:
    """The `data:` images of an HTML body (at most MAX_DATA_URIS looked at)."""
    for count, match in enumerate(_DATA_IMAGE.finditer(picture.data)):
        if count >= MAX_DATA_URIS:
            return
        try:
            data = base64.b64decode(re.sub(rb"\s+", b"", match.group(1)))
        except (binascii.Error, ValueError):
            continue
        if image_format(data) is not None:
            yield Picture(data, f"{picture.where} data: image {count + 1}", "image")


class _Skip(Exception):
    """A picture not decoded: over a bound (`bound` true) or unreadable."""

    def __init__(self, detail: str, bound: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.bound = bound


@dataclass
class _Scanner:
    limits: MimeSettings
    deadline: float
    codes: list[QrCode] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    images: int = 0
    pdfs: int = 0
    seen: set[bytes] = field(default_factory=set)  # digests of the pictures scanned

    def over_time(self) -> bool:
        return time.monotonic() > self.deadline

    def picture_slot(self, where: str) -> bool:
        """Whether one more picture may be decoded: taken just before its pixels are (its header
        read, big enough to hold a QR code); else the bound is recorded."""
        if self.over_time():
            self.skip(f"{where}: time budget of {self.limits.qr_time_budget:g}s spent")
            return False
        if self.images >= self.limits.qr_max_images:
            self.skip(f"{where}: more than {self.limits.qr_max_images} pictures")
            return False
        self.images += 1
        return True

    def skip(self, detail: str) -> None:
        if len(self.skipped) < 8:
            self.skipped.append(detail[:160])

    def unread(self, detail: str) -> None:
        if len(self.unreadable) < 8:
            self.unreadable.append(detail[:160])

    def scan(self, picture: Picture) -> None:
        if picture.kind == "html":
            for inner in _data_images(picture):
                self.scan(inner)
            return
        digest = hashlib.sha256(picture.data).digest()
        if digest in self.seen:  # the same picture in both readings, or attached twice
            return
        self.seen.add(digest)
        if picture.kind == "pdf":
            self.pdf(picture)
        else:
            self.image_bytes(picture.data, picture.where)

    def image_bytes(self, data: bytes, where: str) -> None:
        if self.over_time():  # checked before the header is read: reading one costs too
            self.skip(f"{where}: time budget of {self.limits.qr_time_budget:g}s spent")
            return
        try:
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as image:
                self.image(image, where, in_pdf=False)
        except _Skip as exc:
            (self.skip if exc.bound else self.unread)(f"{where}: {exc.detail}")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            self.skip(f"{where}: over Pillow's pixel limit")
        except Exception as exc:  # corrupt or truncated: a client shows no QR code either
            self.unread(f"{where}: {type(exc).__name__}")

    def image(self, image: Image.Image, where: str, in_pdf: bool) -> None:
        width, height = image.size
        if width * height > self.limits.qr_max_image_pixels:
            raise _Skip(f"{width}x{height} pixels (limit {self.limits.qr_max_image_pixels})", True)
        if width < MIN_SIDE or height < MIN_SIDE:
            return  # a spacer or tracking pixel: not worth a slot of qr_max_images
        if not self.picture_slot(where):
            return
        factor = max(1, math.ceil(math.sqrt(width * height / DECODE_PIXELS)))
        if factor > 1 and image.format == "JPEG":
            # DCT scaling: decoded at 1/2, 1/4 or 1/8 size, never at full size
            image.draft("L", (width // factor, height // factor))
        gray = _on_white(image, DECODE_PIXELS)
        found = zxingcpp.read_barcodes(gray, formats=_QR_FORMATS)
        for barcode in found[:MAX_CODES_PER_IMAGE]:
            text = barcode.text[:MAX_CODE_CHARS]
            if text:
                self.codes.append(QrCode(text, where, in_pdf))

    def pdf(self, picture: Picture) -> None:
        where = picture.where
        if self.pdfs >= self.limits.qr_max_pdfs:
            self.skip(f"{where}: more than {self.limits.qr_max_pdfs} PDFs")
            return
        self.pdfs += 1
        if len(picture.data) > self.limits.qr_max_pdf_bytes:
            self.skip(f"{where}: PDF over {self.limits.qr_max_pdf_bytes} bytes")
            return
        try:
            reader = pypdf.PdfReader(io.BytesIO(picture.data), strict=False)
            if reader.is_encrypted and not reader.decrypt(""):
                self.unread(f"{where}: encrypted PDF")
                return
            seen: set[object] = set()
            for number, page in enumerate(reader.pages, start=1):
                if self.over_time():
                    self.skip(f"{where}: time budget of {self.limits.qr_time_budget:g}s spent")
                    return
                if number > self.limits.qr_max_pdf_pages:
                    # a long report is no finding; a picture past the bound is (it may hide
                    # the code), so later pages are looked at, not decoded, for a while
                    if number > PDF_LOOKAHEAD_PAGES:
                        self.skip(f"{where}: more than {PDF_LOOKAHEAD_PAGES} pages")
                        return
                    if any(_page_images(page, seen)):
                        limit = self.limits.qr_max_pdf_pages
                        self.skip(f"{where}: page {number} has images past {limit} pages")
                        return
                    continue
                for index, stream in enumerate(_page_images(page, seen)):
                    if self.over_time() or self.images >= self.limits.qr_max_images:
                        self.picture_slot(f"{where} page {number}")  # records the bound
                        return
                    self.pdf_image(stream, f"{where} page {number} image {index + 1}")
        except Exception as exc:  # pypdf on hostile input raises anything: not a verdict
            self.unread(f"{where}: {type(exc).__name__}")

    def pdf_image(self, stream: StreamObject, where: str) -> None:
        width, height = _int(_entry(stream, "/Width")), _int(_entry(stream, "/Height"))
        if width * height > self.limits.qr_max_image_pixels:
            self.skip(f"{where}: {width}x{height} pixels (limit {self.limits.qr_max_image_pixels})")
            return
        if width < MIN_SIDE or height < MIN_SIDE:
            return
        filters = _filters(stream)
        refused = sorted(set(filters) & _PDF_REFUSED_FILTERS)
        if refused:
            self.unread(f"{where}: {refused[0]} not decoded")
            return
        try:
            image = _pdf_picture(stream, filters, width, height)
            with image:
                self.image(image, where, in_pdf=True)
        except _Skip as exc:
            (self.skip if exc.bound else self.unread)(f"{where}: {exc.detail}")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            self.skip(f"{where}: over Pillow's pixel limit")
        except Exception as exc:  # a broken image stream hides nothing a reader would show
            self.unread(f"{where}: {type(exc).__name__}")


def _filters(stream: StreamObject) -> list[str]:
    found = _entry(stream, "/Filter")
    names = found if isinstance(found, ArrayObject) else [found]
    return [str(n) for n in names if isinstance(n, NameObject)]


_COMPONENTS = {"/DeviceGray": 1, "/DeviceRGB": 3, "/DeviceCMYK": 4}
_RAW_MODES = {(1, 8): "L", (1, 1): "1", (3, 8): "RGB", (4, 8): "CMYK"}


def _components(space: object) -> int:
    """Colour components of a plain colour space (DeviceGray/RGB/CMYK, ICCBased), else 0."""
    if isinstance(space, NameObject):
        return _COMPONENTS.get(str(space), 0)
    if isinstance(space, ArrayObject) and len(space) == 2 and space[0] == "/ICCBased":
        profile = space[1].get_object()
        if isinstance(profile, StreamObject):
            count = _int(_entry(profile, "/N"))
            return count if count in (1, 3, 4) else 0
    return 0


def _pdf_picture(stream: StreamObject, filters: list[str], width: int, height: int) -> Image.Image:
    """The pixels of a PDF image XObject, the cheap way when it is a JPEG or plain samples.

    pypdf's decode_as_image also re-encodes every image (PNG, or JPEG 2000 beside a soft mask:
    half a second for a page-wide banner), which the QR search does not need: it is only the
    fallback, for palettes, fax (CCITT) and the rarer colour spaces. Soft masks are ignored:
    a PDF page is white under its images.
    """
    data = stream.get_data()  # every filter applied but DCT, whose data stays a JPEG file
    if filters and filters[-1] in ("/DCTDecode", "/DCT"):
        return Image.open(io.BytesIO(data), formats=("JPEG",))
    components = _components(_entry(stream, "/ColorSpace"))
    mode = _RAW_MODES.get((components, _int(_entry(stream, "/BitsPerComponent"))))
    if mode is not None and not set(filters) & {"/CCITTFaxDecode", "/CCF"}:
        bits = 1 if mode == "1" else 8 * components
        needed = (width * bits + 7) // 8 * height
        if len(data) >= needed:
            return Image.frombytes(mode, (width, height), data[:needed])
    indexed = _indexed(stream, data, width, height)
    if indexed is not None:
        return indexed
    image: Image.Image = stream.decode_as_image()
    return image


def _indexed(stream: StreamObject, data: bytes, width: int, height: int) -> Image.Image | None:
    """An 8-bit /Indexed image over a gray or RGB palette (what Pillow writes for a palette
    image; pypdf 7 decodes it into one colour), or None for another kind."""
    space = _entry(stream, "/ColorSpace")
    if not (isinstance(space, ArrayObject) and len(space) == 4 and space[0] == "/Indexed"):
        return None
    if _int(_entry(stream, "/BitsPerComponent")) != 8 or len(data) < width * height:
        return None
    components = _components(space[1].get_object())
    lookup = space[3].get_object()
    table = lookup.get_data() if isinstance(lookup, StreamObject) else lookup
    if components not in (1, 3) or not isinstance(table, bytes):
        return None
    image = Image.frombytes("P", (width, height), data[: width * height])
    image.putpalette(table[: 256 * components], rawmode="L" if components == 1 else "RGB")
    return image


def _entry(holder: DictionaryObject, key: str) -> object:
    """`holder[key]` with an indirect reference followed (DictionaryObject.get does not)."""
    found = dict.get(holder, key)
    return found.get_object() if found is not None else None


def _int(value: object) -> int:
    """A PDF integer (pypdf's NumberObject is an int), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _page_images(page: DictionaryObject, seen: set[object]) -> Iterator[StreamObject]:
    """The image XObjects of a page, and of the forms it uses (to _FORM_DEPTH), each once in
    the document (`seen`: a letterhead on every page is decoded once).

    Read from the resource dictionaries, not the content stream: an image declared and never
    drawn is still found (cheaper, and it errs toward looking). Inline images are not read.
    """

    def walk(holder: DictionaryObject, depth: int) -> Iterator[StreamObject]:
        resources = holder.get("/Resources")
        resources = resources.get_object() if resources is not None else None
        if not isinstance(resources, DictionaryObject):
            return
        xobjects = resources.get("/XObject")
        xobjects = xobjects.get_object() if xobjects is not None else None
        if not isinstance(xobjects, DictionaryObject):
            return
        for name in list(xobjects)[:256]:
            entry = xobjects[name].get_object()
            if not isinstance(entry, StreamObject):
                continue
            ref = entry.indirect_reference
            key: object = (ref.idnum, ref.generation) if ref is not None else id(entry)
            if key in seen:
                continue
            seen.add(key)
            subtype = entry.get("/Subtype")
            if subtype == "/Image":
                yield entry
            elif subtype == "/Form" and depth < _FORM_DEPTH:
                yield from walk(entry, depth + 1)

    yield from walk(page, 0)


def _on_white(image: Image.Image, pixels: int) -> Image.Image:
    """The image in grayscale as a mail client paints it, reduced to at most `pixels`:
    transparency over a white page (a black-on-transparent QR code read without its alpha is
    all black). Gray first, then reduced: Pillow's reduce of RGBA costs 40x that of L."""
    if (image.mode == "P" and "transparency" in image.info) or image.mode == "PA":
        image = image.convert("RGBA")
    gray = image.convert("L")  # a copy, loaded, even when already "L"
    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")
        if alpha.getextrema() != (255, 255):  # most screenshots are opaque, alpha or not
            page = Image.new("L", image.size, 255)
            page.paste(gray, mask=alpha)
            gray = page
    if gray.width * gray.height > pixels:
        gray = gray.reduce(math.ceil(math.sqrt(gray.width * gray.height / pixels)))
    return gray


def scan(found: list[Picture], limits: MimeSettings = DEFAULT_LIMITS) -> QrScan:
    """Decode the QR codes of `found` (see `pictures`) within the [mime] qr_* bounds.

    Blocking and CPU-heavy: run it in a worker thread. Never raises.
    """
    started = time.monotonic()
    scanner = _Scanner(limits, started + limits.qr_time_budget)
    for picture in found:
        scanner.scan(picture)
    return QrScan(
        codes=tuple(scanner.codes),
        images=scanner.images,
        pdfs=scanner.pdfs,
        skipped=tuple(scanner.skipped),
        unreadable=tuple(scanner.unreadable),
        elapsed=time.monotonic() - started,
    )
