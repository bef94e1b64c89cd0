"""QR codes in pictures and PDFs: decoded within bounds, off the loop, their links in the
message's URL list (gateway.mime.qr, ParsedMessage.qr_urls, the qr plugin).

Every image and PDF is made here (tests/qr_samples.py): zxing-cpp encodes, Pillow draws.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import aiosmtplib
import pytest
from harness import HARNESS_ORDER, RecordingSink, RunningGateway, make_settings
from qr_samples import (
    encoded,
    flate_gray_pdf,
    mail,
    photo_with_qr,
    pillow_pdf,
    png_header_only,
    qr_image,
    qr_png,
    transparent_qr_png,
)

import gateway.message
from gateway.config import PluginSettings
from gateway.message import ParsedMessage, Url, qr_code_urls
from gateway.mime import qr
from gateway.mime.budgets import DEFAULT_LIMITS, MimeSettings
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.qr import QrCodes, visible_words
from gateway.policy import load_rules

PHISH = "https://login.m1crosoft-verify.example/auth?session=8842"
SHORT = "Your password expires today.\nScan the QR code with your phone to keep it.\n"
LONG = " ".join(["The quarterly meeting agenda is attached for your review."] * 10) + "\n"


async def scan_of(raw: bytes, limits: MimeSettings = DEFAULT_LIMITS) -> qr.QrScan:
    return await ParsedMessage(raw, limits).qr_scan()


async def symbols_of(raw: bytes, tmp_path: Path) -> dict[str, str]:
    """What the qr plugin says about `raw` (symbol -> detail), as the chain would call it."""
    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=("qr",)))
    ctx = MessageContext(
        client=ClientInfo("192.0.2.10", 25), rules=load_rules(settings.rules_dir), settings=settings
    )
    ctx.raw = raw
    plugin = QrCodes(Services(settings))
    found = await plugin.check(Phase.DATA, ctx)
    assert isinstance(ctx.results.get(qr.QrScan), qr.QrScan)
    return {f.symbol: f.detail for f in found}


# -- what is decoded, and where its links go ---------------------------------------------------


async def test_a_png_attachment_gives_a_qr_url_beside_the_text_urls() -> None:
    raw = mail(
        "Details at https://intranet.example.com/faq\n",
        attachments=((qr_png(PHISH), "image/png", "scan.png"),),
    )
    message = ParsedMessage(raw)
    [text_url] = await message.urls()  # the classifier's reading: no QR decoding in it
    assert text_url == Url(
        "https://intranet.example.com/faq", "intranet.example.com", "example.com"
    )
    [qr_url] = await message.qr_urls()
    assert qr_url == Url(
        PHISH, "login.m1crosoft-verify.example", "m1crosoft-verify.example", source="qr"
    )
    assert await message.all_urls() == (text_url, qr_url)
    [code] = (await message.qr_scan()).codes
    assert code.text == PHISH and not code.in_pdf and "scan.png" in code.where


@pytest.mark.parametrize(
    ("name", "picture"),
    [
        ("jpeg", encoded(qr_image(PHISH, 6), "JPEG", quality=60)),
        ("gif", encoded(qr_image(PHISH, 4, "P"), "GIF")),
        ("bmp", encoded(qr_image(PHISH), "BMP")),
        ("webp", encoded(qr_image(PHISH, 6), "WEBP", lossless=True)),
        ("transparent png", transparent_qr_png(PHISH)),
        ("12 MP photo", photo_with_qr(PHISH)),  # decoded reduced (DCT scaling), still found
    ],
)
async def test_every_inline_format_is_decoded(name: str, picture: bytes) -> None:
    raw = mail(attachments=((picture, "image/x-unknown", "picture"),))
    scan = await scan_of(raw)
    assert [c.text for c in scan.codes] == [PHISH], (name, scan)


async def test_a_picture_is_found_by_its_content_not_its_declared_type() -> None:
    raw = mail(attachments=((qr_png(PHISH), "application/octet-stream", "invoice.dat"),))
    assert [c.text for c in (await scan_of(raw)).codes] == [PHISH]


async def test_inline_cid_and_data_uri_images_are_decoded() -> None:
    import base64

    data_uri = base64.b64encode(qr_png("https://second.example/x")).decode()
    html = (
        f'<p>Scan:</p><img src="cid:img1@example.net"><img src="data:image/png;base64,{data_uri}">'
    )
    raw = mail(html=html, inline=((qr_png(PHISH), "image/png", "qr.png"),))
    texts = sorted(c.text for c in (await scan_of(raw)).codes)
    assert texts == sorted([PHISH, "https://second.example/x"])


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("DCT image (Pillow)", lambda: pillow_pdf(qr_image(PHISH, 6))),
        ("Indexed image (Pillow)", lambda: pillow_pdf(qr_image(PHISH, 6, "P"))),
        ("FlateDecode gray samples", lambda: flate_gray_pdf(qr_image(PHISH, 6))),
    ],
)
async def test_images_inside_a_pdf_attachment_are_decoded(name: str, make: object) -> None:
    assert callable(make)
    raw = mail(attachments=((make(), "application/pdf", "invoice.pdf"),))
    scan = await scan_of(raw)
    assert [(c.text, c.in_pdf) for c in scan.codes] == [(PHISH, True)], (name, scan)
    assert "invoice.pdf" in scan.codes[0].where and "page 1" in scan.codes[0].where


def test_qr_text_is_read_as_a_phone_reads_it() -> None:
    assert [u.url for u in qr_code_urls("HTTPS://Evil.example/Login")] == [
        "HTTPS://Evil.example/Login"
    ]
    # a bare host and path is a link to a phone camera: read as http
    [bare] = qr_code_urls("evil.example/login?id=1")
    assert (bare.url, bare.domain, bare.source) == (
        "http://evil.example/login?id=1",
        "evil.example",
        "qr",
    )
    assert qr_code_urls("TICKET 4711-0815 ROW 12 SEAT 7") == ()
    assert [u.host for u in qr_code_urls("MEBKM:TITLE:x;URL:http://bookmark.example/;;")] == [
        "bookmark.example"
    ]


# -- bounds: what is skipped is a finding --------------------------------------------------------


async def test_a_decompression_bomb_header_is_refused_before_decoding() -> None:
    # 25 megapixels declared (over qr_max_image_pixels, under Pillow's own guard), 80 bytes sent
    bomb = png_header_only(5_000, 5_000)
    raw = mail(attachments=((bomb, "image/png", "bomb.png"),))
    scan = await scan_of(raw)
    assert scan.images == 0 and scan.codes == ()
    assert not scan.complete and "5000x5000 pixels (limit 16000000)" in scan.skipped[0]


async def test_pillows_own_bomb_guard_is_a_finding_too() -> None:
    # our bound set past Pillow's: its DecompressionBombError (or warning) stops the decode
    limits = dataclasses.replace(DEFAULT_LIMITS, qr_max_image_pixels=10**12)
    raw = mail(attachments=((png_header_only(20_000, 20_000), "image/png", "bomb.png"),))
    scan = await scan_of(raw, limits)
    assert scan.images == 0 and "Pillow's pixel limit" in scan.skipped[0]


async def test_too_many_pictures_decodes_the_first_and_reports_the_rest() -> None:
    pictures = tuple(
        (qr_png(f"https://site{i}.example/"), "image/png", f"{i}.png") for i in range(3)
    )
    limits = dataclasses.replace(DEFAULT_LIMITS, qr_max_images=2)
    scan = await scan_of(mail(attachments=pictures), limits)
    assert [c.text for c in scan.codes] == ["https://site0.example/", "https://site1.example/"]
    assert scan.skipped == ("part 1.4 (2.png): more than 2 pictures",)


async def test_the_time_budget_is_a_finding() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, qr_time_budget=1e-9)
    scan = await scan_of(mail(attachments=((qr_png(PHISH), "image/png", "a.png"),)), limits)
    assert scan.codes == () and "time budget" in scan.skipped[0]


async def test_pdf_pages_past_the_bound_with_pictures_are_a_finding() -> None:
    pdf = pillow_pdf(qr_image("https://one.example/", 6), qr_image(PHISH, 6))
    limits = dataclasses.replace(DEFAULT_LIMITS, qr_max_pdf_pages=1)
    scan = await scan_of(mail(attachments=((pdf, "application/pdf", "two.pdf"),)), limits)
    assert [c.text for c in scan.codes] == ["https://one.example/"]
    assert "page 2 has images past 1 pages" in scan.skipped[0]


async def test_too_many_pdfs_and_a_too_large_pdf() -> None:
    pdf = pillow_pdf(qr_image(PHISH, 6))
    other = pillow_pdf(qr_image("https://other.example/", 6))
    raw = mail(attachments=((pdf, "application/pdf", "a.pdf"), (other, "application/pdf", "b.pdf")))
    few = dataclasses.replace(DEFAULT_LIMITS, qr_max_pdfs=1)
    scan = await scan_of(raw, few)
    assert [c.text for c in scan.codes] == [PHISH] and "more than 1 PDFs" in scan.skipped[0]
    small = dataclasses.replace(DEFAULT_LIMITS, qr_max_pdf_bytes=100)
    assert "PDF over 100 bytes" in (await scan_of(raw, small)).skipped[0]


async def test_corrupt_pictures_and_pdfs_are_unreadable_not_errors() -> None:
    png = qr_png(PHISH)
    raw = mail(
        attachments=(
            (png[: len(png) // 2], "image/png", "cut.png"),
            (b"%PDF-1.4\n1 0 obj << /Type /Catalog", "application/pdf", "cut.pdf"),
        )
    )
    scan = await scan_of(raw)
    assert scan.codes == () and scan.complete
    assert len(scan.unreadable) == 2


# -- no pictures: nothing extra -------------------------------------------------------------------


async def test_a_message_without_pictures_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a message without pictures must not be offloaded")

    message = ParsedMessage(mail(LONG, attachments=((b"%!PS-Adobe", "text/plain", "x.txt"),)))
    await message.mime()  # the MIME walk may use a thread; the QR scan must not
    monkeypatch.setattr(gateway.message, "offload", no_thread)
    assert await message.qr_scan() is qr.NO_PICTURES
    assert await message.qr_urls() == ()


async def test_the_scan_runs_once_even_when_its_first_caller_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plugin timeout cancels the caller, not the decoding: the next caller gets its result."""
    calls = 0
    real_scan = qr.scan

    def counted(found: list[qr.Picture], limits: MimeSettings) -> qr.QrScan:
        nonlocal calls
        calls += 1
        return real_scan(found, limits)

    monkeypatch.setattr(qr, "scan", counted)
    message = ParsedMessage(mail(attachments=((qr_png(PHISH), "image/png", "a.png"),)))
    await message.mime()
    first = asyncio.ensure_future(message.qr_scan())
    await asyncio.sleep(0)  # the scan has started in its thread
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    scan = await message.qr_scan()
    assert [c.text for c in scan.codes] == [PHISH] and calls == 1


# -- the plugin's symbols ------------------------------------------------------------------------


async def test_a_picture_of_a_qr_link_and_a_few_words_is_the_quishing_pattern(
    tmp_path: Path,
) -> None:
    found = await symbols_of(
        mail(SHORT, attachments=((qr_png(PHISH), "image/png", "qr.png"),)), tmp_path
    )
    assert set(found) == {"QR_CODE_URL", "QR_CODE_ONLY_CONTENT"}
    assert PHISH in found["QR_CODE_URL"]


async def test_a_qr_link_in_a_long_letter_is_only_a_qr_url(tmp_path: Path) -> None:
    pdf = pillow_pdf(qr_image(PHISH, 6))
    found = await symbols_of(mail(LONG, attachments=((pdf, "application/pdf", "a.pdf"),)), tmp_path)
    assert set(found) == {"QR_CODE_URL", "QR_CODE_IN_PDF"}


async def test_a_qr_code_without_a_link_and_a_plain_letter_raise_nothing(tmp_path: Path) -> None:
    ticket = qr_png("TICKET 4711-0815 ROW 12 SEAT 7")
    assert (
        await symbols_of(mail(SHORT, attachments=((ticket, "image/png", "t.png"),)), tmp_path) == {}
    )
    assert await symbols_of(mail(LONG), tmp_path) == {}


async def test_bounds_and_unreadable_pictures_are_symbols(tmp_path: Path) -> None:
    raw = mail(
        attachments=(
            (png_header_only(30_000, 30_000), "image/png", "bomb.png"),
            (b"\x89PNG\r\n\x1a\nbroken", "image/png", "broken.png"),
        )
    )
    found = await symbols_of(raw, tmp_path)
    assert set(found) == {"QR_SCAN_LIMIT", "QR_SCAN_UNREADABLE"}
    assert "bomb.png" in found["QR_SCAN_LIMIT"] and "broken.png" in found["QR_SCAN_UNREADABLE"]


def test_visible_words_ignore_markup_styles_and_scripts() -> None:
    html = "<html><head><style>p {color: red}</style></head><body><p>Scan&nbsp;this now</p>"
    assert visible_words(html + "<script>var a = 1; var b = 2;</script></body>") == 3
    assert visible_words("<style>" + "x " * 10_000) == 0  # a block left open hides the rest
    assert visible_words("word " * 1000) == 50  # counted up to the limit, no further


# -- through the real gateway ---------------------------------------------------------------------


async def test_quishing_over_smtp_is_quarantined_and_a_letter_with_a_qr_pdf_relayed(
    tmp_path: Path, sink: RecordingSink, start_gateway: object
) -> None:
    """The qr plugin in the shipped chain, over real sockets; rules/ forces quarantine for the
    quishing pattern here (the shipped score alone stays under the quarantine threshold)."""
    settings = make_settings(
        tmp_path, sink.port, plugins=PluginSettings(order=(*HARNESS_ORDER, "qr"))
    )
    actions = settings.rules_dir / "actions.toml"
    text = actions.read_text()
    actions.write_text(
        text.replace("[forced]\n", '[forced]\nQR_CODE_ONLY_CONTENT = "quarantine"\n', 1)
    )
    assert "qr" in settings.plugins.order
    assert callable(start_gateway)
    gw: RunningGateway = await start_gateway(settings)
    quishing = mail(SHORT, attachments=((qr_png(PHISH), "image/png", "qr.png"),))
    letter = mail(LONG, attachments=((pillow_pdf(qr_image(PHISH, 6)), "application/pdf", "a.pdf"),))
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port, timeout=30) as client:
        _, reply = await client.sendmail("it@example.net", ["bob@example.com"], quishing)
        await client.sendmail("it@example.net", ["bob@example.com"], letter)
    match = re.search(r"id=([0-9A-F]{12})", reply)
    assert match, reply
    _, meta = gw.gateway.store.get(match.group(1))
    assert meta["action"] == "quarantine"
    assert {"QR_CODE_URL", "QR_CODE_ONLY_CONTENT"} <= {f["symbol"] for f in meta["findings"]}
    [delivered] = sink.delivered
    assert b"a.pdf" in delivered.content


async def test_a_picture_attached_twice_is_decoded_once() -> None:
    png = qr_png(PHISH)
    raw = mail(attachments=((png, "image/png", "a.png"), (png, "image/png", "b.png")))
    scan = await scan_of(raw)
    assert scan.images == 1 and [c.text for c in scan.codes] == [PHISH]
