"""The MIME stage and the content scan on crafted messages: symbols, budgets, both readings."""

from __future__ import annotations

import dataclasses
import struct
import time
import zlib

import pytest
from mime_samples import (
    b64,
    eicar,
    inspect,
    tar_of,
    tiny_pe,
    with_attachment,
    zip_of,
)

from gateway.mime.budgets import DEFAULT_LIMITS
from gateway.mime.parse import analyze

HEAD = (
    "From: a@example.net\r\nTo: b@example.com\r\nSubject: s\r\n"
    "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m@example.net>\r\nMIME-Version: 1.0\r\n"
)


def test_a_plain_message_has_no_findings() -> None:
    raw = (HEAD + "Content-Type: text/plain\r\n\r\nHello.\r\n").encode()
    report, content, symbols = inspect(raw)
    assert symbols == set()
    assert report.complete and content.complete
    assert [leaf.kind for leaf in report.leaves] == ["part"]


def _two_boundaries(first_hides_exe: bool) -> bytes:
    text = "--{b}\r\nContent-Type: text/plain\r\n\r\nharmless\r\n--{b}--\r\n"
    exe = (
        '--{b}\r\nContent-Type: application/octet-stream; name="x.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + b64(tiny_pe()) + "\r\n--{b}--\r\n"
    )
    first, second = ("AAA", "BBB")
    body = (
        (exe.format(b=first) + text.format(b=second))
        if first_hides_exe
        else (text.format(b=first) + exe.format(b=second))
    )
    header = f'Content-Type: multipart/mixed; boundary="{first}"; boundary="{second}"\r\n'
    return (HEAD + header + "\r\n" + body).encode()


@pytest.mark.parametrize("first_hides_exe", [True, False])
def test_two_boundaries_are_read_both_ways_and_the_union_scanned(first_hides_exe: bool) -> None:
    # amavis CVE-2024-28054: the filter took the last boundary, clients the first. Whichever
    # boundary hides the executable, it is found.
    report, _content, symbols = inspect(_two_boundaries(first_hides_exe))
    assert {"MIME_DUPLICATE_BOUNDARY", "MIME_AMBIGUOUS", "ATT_EXECUTABLE"} <= symbols
    assert report.readings == 2
    assert {leaf.reading for leaf in report.leaves} == {0, 1}


def test_duplicate_transfer_encoding_is_decoded_both_ways() -> None:
    raw = (
        HEAD + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64(tiny_pe())
        + "\r\n--b--\r\n"
    ).encode()
    report, _content, symbols = inspect(raw)
    assert {"MIME_DUPLICATE_CTE", "MIME_AMBIGUOUS", "ATT_EXECUTABLE"} <= symbols
    assert report.readings == 2


def test_duplicate_content_type_is_read_both_ways() -> None:
    raw = (
        HEAD + "Content-Type: text/plain\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64(tiny_pe())
        + "\r\n--b--\r\n"
    ).encode()
    report, _content, symbols = inspect(raw)
    assert {"MIME_DUPLICATE_CONTENT_TYPE", "MIME_AMBIGUOUS"} <= symbols
    # first-wins sees text/plain (base64 text); last-wins sees the executable part
    assert "ATT_EXECUTABLE" in symbols
    assert report.readings == 2


def test_missing_and_unterminated_boundaries() -> None:
    missing = (HEAD + 'Content-Type: multipart/mixed; boundary="zz"\r\n\r\nno parts\r\n').encode()
    assert "MIME_MISSING_BOUNDARY" in analyze(missing).symbols()
    no_param = (HEAD + "Content-Type: multipart/mixed\r\n\r\nno parts\r\n").encode()
    assert "MIME_MISSING_BOUNDARY" in analyze(no_param).symbols()
    open_end = (
        HEAD + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain\r\n\r\ntext, never closed\r\n"
    ).encode()
    assert "MIME_UNTERMINATED_MULTIPART" in analyze(open_end).symbols()


def test_missing_boundary_body_is_still_scanned() -> None:
    # a multipart whose boundary never appears: the body is scanned as it is, never dropped
    raw = (
        (HEAD + 'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n').encode() + eicar() + b"\r\n"
    )
    report, _content, symbols = inspect(raw)
    assert "MIME_MISSING_BOUNDARY" in symbols
    assert any(eicar() in leaf.data for leaf in report.leaves)


def test_nul_bytes_and_eight_bit_in_seven_bit_parts() -> None:
    raw = (HEAD + "Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\n").encode()
    symbols = analyze(raw + "caf\u00e9 \x00\r\n".encode()).symbols()
    assert {"MIME_NUL_BYTE", "MIME_8BIT_IN_7BIT"} <= symbols


def test_headers_folded_to_hide() -> None:
    hidden_field = (
        b"From: a@example.net\r\nSubject: hello\r\n Content-Type: text/html\r\n\r\nbody\r\n"
    )
    assert "MIME_HEADER_FOLDED_HIDE" in analyze(hidden_field).symbols()
    blank_fold = b"From: a@example.net\r\nSubject: hello\r\n \r\n more\r\n\r\nbody\r\n"
    assert "MIME_HEADER_FOLDED_HIDE" in analyze(blank_fold).symbols()
    space_before_colon = b"From: a@example.net\r\nContent-Type : text/html\r\n\r\nb\r\n"
    assert "MIME_HEADER_MALFORMED" in analyze(space_before_colon).symbols()


def test_non_rfc_encodings_are_flagged_and_still_decoded() -> None:
    raw = (
        HEAD + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base-64\r\n\r\n"
        + b64(tiny_pe())
        + "\r\n--b--\r\n"
    ).encode()
    report, _content, symbols = inspect(raw)
    assert {"MIME_BAD_CTE", "ATT_EXECUTABLE"} <= symbols
    assert "alternate" in {leaf.kind for leaf in report.leaves}


def test_uuencoded_executable_in_a_text_body() -> None:
    import binascii

    data = tiny_pe()
    lines = [binascii.b2a_uu(data[i : i + 45]).decode() for i in range(0, len(data), 45)]
    body = (
        "see below\r\nbegin 644 tool.exe\r\n"
        + "".join(lines).replace("\n", "\r\n")
        + "`\r\nend\r\n"
    )
    raw = (HEAD + "Content-Type: text/plain\r\n\r\n" + body).encode()
    report, _content, symbols = inspect(raw)
    assert {"MIME_UUENCODED", "ATT_EXECUTABLE"} <= symbols
    assert any(leaf.name == "tool.exe" and leaf.data == data for leaf in report.leaves)


# -- budgets ---------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    body = "Content-Type: text/plain\r\n\r\ninner\r\n"
    for level in range(depth):
        body = (
            f'Content-Type: multipart/mixed; boundary="n{level}"\r\n\r\n'
            f"--n{level}\r\n{body}\r\n--n{level}--\r\n"
        )
    return (HEAD + body).encode()


def test_depth_budget() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_depth=5)
    report = analyze(_nested(50), limits)
    assert "MIME_LIMIT_DEPTH" in report.symbols()
    assert not report.complete
    assert report.leaves  # what was reached (or the raw message) is still handed on


def test_deep_nesting_beyond_python_recursion_is_a_finding() -> None:
    report = analyze(_nested(3000))
    assert "MIME_LIMIT_DEPTH" in report.symbols()


def test_parts_budget() -> None:
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(60))
    raw = HEAD + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + "--b--\r\n"
    limits = dataclasses.replace(DEFAULT_LIMITS, max_parts=20)
    report = analyze(raw.encode(), limits)
    assert "MIME_LIMIT_PARTS" in report.symbols()
    assert not report.complete


def test_header_budget() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_header_fields=50)
    raw = ("".join(f"X-H{i}: v\r\n" for i in range(200)) + "\r\nbody\r\n").encode()
    assert "MIME_LIMIT_HEADERS" in analyze(raw, limits).symbols()


def test_parameter_budget_and_the_quadratic_parameter_parser() -> None:
    # CPython's _parseparam is quadratic in a field's length with quotes and semicolons
    params = ';"' * 100_000
    raw = HEAD + f"Content-Type: multipart/mixed; boundary=b{params}\r\n\r\n--b\r\n\r\nx\r\n"
    started = time.monotonic()
    report = analyze(raw.encode())
    assert time.monotonic() - started < 2.0
    assert "MIME_LIMIT_PARAMS" in report.symbols()


def test_decoded_bytes_budget() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_decoded_bytes=10_000)
    report = analyze(with_attachment(b"\x00" * 50_000, "zeros.bin"), limits)
    assert "MIME_LIMIT_DECODED" in report.symbols()
    assert not report.complete


def test_time_budget() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, time_budget=0.000001)
    raw = with_attachment(b"x" * 300_000, "big.bin")
    report = analyze(raw, limits)
    assert "MIME_LIMIT_TIME" in report.symbols()
    assert not report.complete


# -- names and types -------------------------------------------------------------------------


def test_names_from_rfc2231_continuations_and_encoded_words() -> None:
    disposition = "attachment; filename*0*=utf-8''r%C3%A9sum; filename*1*=%C3%A9.pdf.exe"
    raw = with_attachment(tiny_pe(), "x", disposition=disposition)
    report, _content, symbols = inspect(raw)
    assert report.attachments()[0].names == ("r\u00e9sum\u00e9.pdf.exe",)
    assert {"ATT_DOUBLE_EXTENSION", "ATT_EXECUTABLE"} <= symbols

    encoded = with_attachment(
        b"hello",
        "x",
        ctype='text/plain; name="=?utf-8?b?aW52b2ljZS5qcw==?="',
        disposition="attachment",
    )
    report, _content, symbols = inspect(encoded)
    assert report.attachments()[0].names == ("invoice.js",)
    assert "ATT_SCRIPT" in symbols


def test_a_name_the_other_field_only_lengthens_is_no_ambiguity() -> None:
    """Thunderbird signs with name="OpenPGP_signature.asc" and filename="OpenPGP_signature":
    every signed message of its users scored 3.0 as an ambiguous name."""
    raw = with_attachment(
        b"-----BEGIN PGP SIGNATURE-----\r\n\r\niQ==\r\n-----END PGP SIGNATURE-----\r\n",
        "OpenPGP_signature",
        ctype='application/pgp-signature; name="OpenPGP_signature.asc"',
    )
    assert "ATT_NAME_AMBIGUOUS" not in inspect(raw)[2]
    # the longer name is checked like any other: what it adds is still found
    raw = with_attachment(b"MZ" + b"\x00" * 64, "invoice.pdf", ctype='a/b; name="invoice.pdf.exe"')
    assert {"ATT_EXECUTABLE", "ATT_DOUBLE_EXTENSION"} <= inspect(raw)[2]


def test_filename_and_name_that_disagree() -> None:
    raw = with_attachment(b"hello", "report.txt", ctype='text/plain; name="report.scr"')
    report, _content, symbols = inspect(raw)
    assert report.attachments()[0].names == ("report.txt", "report.scr")
    assert {"ATT_NAME_AMBIGUOUS", "ATT_EXECUTABLE"} <= symbols


def test_right_to_left_override() -> None:
    raw = with_attachment(tiny_pe(), "invoice\u202efdp.exe")
    symbols = inspect(raw)[2]
    assert {"ATT_RTLO", "ATT_EXECUTABLE"} <= symbols


def test_lying_name_and_content_type() -> None:
    raw = with_attachment(tiny_pe(), "holiday.jpg", ctype="image/jpeg")
    symbols = inspect(raw)[2]
    assert {"ATT_EXECUTABLE", "ATT_NAME_MISMATCH", "ATT_CTYPE_MISMATCH"} <= symbols


def test_an_honest_pdf_and_image_raise_nothing() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40
    symbols = inspect(with_attachment(png, "photo.png", ctype="image/png"))[2]
    assert symbols == set()


# -- archives --------------------------------------------------------------------------------


def test_executable_inside_zip_and_tar_gz() -> None:
    import gzip

    symbols = inspect(with_attachment(zip_of({"docs/readme.exe": tiny_pe()}), "docs.zip"))[2]
    assert "ATT_EXECUTABLE" in symbols
    tgz = gzip.compress(tar_of({"run.sh": b"#!/bin/sh\nrm -rf ~\n", "a.vbs": b"x"}))
    symbols = inspect(with_attachment(tgz, "bundle.tar.gz"))[2]
    assert "ATT_SCRIPT" in symbols


def test_zip_bomb_is_stopped_by_ratio() -> None:
    bomb = zip_of({"zeros.txt": b"\x00" * (20 * 1024 * 1024)})
    assert len(bomb) < 100_000
    started = time.monotonic()
    symbols = inspect(with_attachment(bomb, "bomb.zip"))[2]
    assert "ARCHIVE_BOMB" in symbols
    assert time.monotonic() - started < 5


def test_gzip_bomb_is_stopped_by_ratio() -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = bomb.compress(b"\x00" * (30 * 1024 * 1024)) + bomb.flush()
    symbols = inspect(with_attachment(data, "logs.gz"))[2]
    assert "ARCHIVE_BOMB" in symbols


def test_path_traversal_and_symlinks() -> None:
    symbols = inspect(with_attachment(zip_of({"../../etc/cron.d/x": b"hi"}), "a.zip"))[2]
    assert "ARCHIVE_PATH_TRAVERSAL" in symbols
    tar = tar_of({"ok.txt": b"fine"}, symlinks={"link": "/etc/passwd"})
    symbols = inspect(with_attachment(tar, "a.tar"))[2]
    assert "ARCHIVE_SYMLINK" in symbols


def test_archive_nesting_depth() -> None:
    data = tiny_pe()
    for level in range(6):
        data = zip_of({f"level{level}.zip" if level else "x.exe": data})
    symbols = inspect(with_attachment(data, "deep.zip"))[2]
    assert "ARCHIVE_TOO_DEEP" in symbols


def test_too_many_members() -> None:
    limits = dataclasses.replace(DEFAULT_LIMITS, max_archive_members=10)
    archive = zip_of({f"f{i}.txt": b"x" for i in range(30)})
    symbols = inspect(with_attachment(archive, "many.zip"), limits)[2]
    assert "ARCHIVE_TOO_MANY_MEMBERS" in symbols


def test_corrupt_and_unsupported_archives() -> None:
    symbols = inspect(with_attachment(b"PK\x03\x04" + b"\x00" * 100, "broken.zip"))[2]
    assert "ARCHIVE_CORRUPT" in symbols
    # a cabinet whose folder has no data (real cabinets: test_mime_containers.py)
    cab = (
        b"MSCF"
        + struct.pack("<IIIIIBBHHHHH", 0, 200, 0, 44, 0, 3, 1, 1, 1, 0, 0, 0)
        + b"\x00" * 150
    )
    symbols = inspect(with_attachment(cab, "a.cab"))[2]
    assert "ARCHIVE_CORRUPT" in symbols
    # an arj archive: libmagic knows it, nothing here opens it
    arj = b"\x60\xea" + b"\x1e\x00" + bytes([30, 11, 1, 2, 0, 0, 2]) + b"\x00" * 200
    symbols = inspect(with_attachment(arj, "a.arj"))[2]
    assert symbols & {"ARCHIVE_UNSUPPORTED", "ARCHIVE_CORRUPT"}


# -- PDF and HTML ----------------------------------------------------------------------------


def _pdf(body: bytes) -> bytes:
    return b"%PDF-1.7\n1 0 obj\n" + body + b"\nendobj\ntrailer\n<</Root 1 0 R>>\n%%EOF\n"


def test_pdf_actions_and_javascript() -> None:
    pdf = _pdf(b"<</Type/Catalog/OpenAction 2 0 R/Names<</EmbeddedFiles 3 0 R>>>>")
    symbols = inspect(with_attachment(pdf, "a.pdf", ctype="application/pdf"))[2]
    assert {"PDF_OPENACTION", "PDF_EMBEDDED_FILE"} <= symbols
    hidden = zlib.compress(b"<</S/J#61vaScript/JS(app.alert(1))>> <</S/Launch/F(cmd.exe)>>")
    pdf = _pdf(b"<</Type/ObjStm/Filter/FlateDecode>>stream\n" + hidden + b"\nendstream")
    symbols = inspect(with_attachment(pdf, "b.pdf", ctype="application/pdf"))[2]
    assert {"PDF_JAVASCRIPT", "PDF_LAUNCH"} <= symbols
    clean = inspect(with_attachment(_pdf(b"<</Type/Catalog>>"), "c.pdf", "application/pdf"))[2]
    assert clean == set()


def test_html_bodies() -> None:
    html = (
        "<html><body><p>Dear customer</p>"
        '<a href="http://login.evil.example/x">https://www.paypal.com/signin</a>'
        '<div style="display:none">'
        + "lots of hidden words to fool the bayes filter here "
        * 5
        + "</div>"
        '<form action="http://evil.example/p"><input type=password></form>'
        '<iframe src="http://evil.example"></iframe><script>alert(1)</script>'
        "</body></html>"
    )
    raw = (HEAD + "Content-Type: text/html\r\n\r\n" + html).encode()
    symbols = inspect(raw)[2]
    # whether a link goes where its text says is the links plugin's (tests/corpus/links)
    assert {
        "HTML_PASSWORD_FIELD",
        "HTML_HIDDEN_TEXT",
        "HTML_FORM",
        "HTML_IFRAME",
        "HTML_SCRIPT",
    } <= symbols
    honest = '<p><a href="https://www.example.com/a">www.example.com</a> and <b>bold</b></p>'
    raw = (HEAD + "Content-Type: text/html\r\n\r\n" + honest).encode()
    assert inspect(raw)[2] == set()


@pytest.mark.parametrize("variant", ["plain", "zip", "zip-in-zip"])
def test_eicar_is_recognised_by_our_own_logic(variant: str) -> None:
    # the gateway's own scan, no clamd: the EICAR file at the start of a file, in any archive
    data = {
        "plain": eicar(),
        "zip": zip_of({"eicar.com": eicar()}),
        "zip-in-zip": zip_of({"inner.zip": zip_of({"eicar.com": eicar()})}),
    }[variant]
    _report, content, symbols = inspect(with_attachment(data, f"{variant}.bin"))
    assert "ATT_EICAR_TEST" in symbols
    assert content.complete


def test_hidden_text_ends_with_its_element_and_the_count_stays_exact() -> None:
    from gateway.mime import html as html_scan

    words = "visible words, plenty of them, well over the hidden text threshold"
    shown = f'<div style="display:none">x</div><p>{words}</p>'.encode()
    assert "HTML_HIDDEN_TEXT" not in html_scan.inspect(shown)
    hidden = f"<div hidden><b>{words * 4}</b>".encode()  # more than a preview line
    assert "HTML_HIDDEN_TEXT" in html_scan.inspect(hidden)
    # the hidden count follows pushes, pops to a matching end tag and the deep-stack trim
    scanner = html_scan._Scanner()
    markup = "".join(
        f'<div{" hidden" if i % 7 == 0 else ""}><span style="display:none">t</span>'
        + ("</div>" if i % 3 == 0 else "")
        for i in range(1200)
    )
    for chunk in (markup[:5000], markup[5000:], "</body>"):
        scanner.feed(chunk)
        assert scanner.hidden_open == sum(hidden for _, hidden in scanner.stack)


def test_libmagic_answers_the_same_from_any_thread() -> None:
    import threading

    from gateway.mime import content

    pe = tiny_pe()
    first = content.true_type(pe)
    assert first in ("application/x-dosexec", "application/vnd.microsoft.portable-executable")
    assert content.true_type(b"plain text\n") == "text/plain"
    seen: list[str] = []
    workers = [
        threading.Thread(target=lambda: seen.extend(content.true_type(pe) for _ in range(20)))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen == [first] * 80


def test_the_light_scan_leaves_archives_and_documents_to_a_thread() -> None:
    from gateway.mime.content import scan, scan_light

    plain = analyze(HEAD.encode() + b"\r\nhello\r\n")
    full = scan(plain)
    light = scan_light(plain)
    assert light is not None and light.findings == full.findings and light.files == full.files
    for name, data in (
        ("a.zip", zip_of({"readme.txt": b"hi"})),
        ("a.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
    ):
        report = analyze(with_attachment(data, name))
        assert scan_light(report) is None, name
        assert scan(report).files, name


@pytest.mark.parametrize(
    "markup",
    [
        "<a " * 100_000,  # CVE-2025-6069: HTMLParser.close() re-read the rest once per "<"
        "<!--" * 70_000,
        "</" * 150_000,
        "<?" * 150_000,
        "<a <b <!-- <? </ " * 20_000,
        "<" * 300_000,
        "<div>" * 60_000,
    ],
    ids=["open-tags", "open-comments", "end-tags", "pis", "mixed", "lt", "nested"],
)
def test_hostile_html_is_linear(markup: str) -> None:
    from gateway.mime.html import inspect as inspect_html

    started = time.monotonic()
    inspect_html(markup.encode())
    assert time.monotonic() - started < 3  # 32 KiB of "<a " alone took 7 s before


def test_text_before_markup_left_open_is_still_read() -> None:
    from gateway.mime.html import inspect as inspect_html

    found = inspect_html(b'<div style="display:none">' + b"buy now " * 40 + b"<a <a <a")
    assert "HTML_HIDDEN_TEXT" in found
    assert "HTML_HIDDEN_TEXT" in inspect_html(b"<div hidden>" + b"x" * 250 + b" &amp")


def test_html_past_its_deadline_ends_the_scan_and_the_light_scan_hands_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.mime import content

    report = analyze(
        (HEAD + "Content-Type: text/html\r\n\r\n").encode() + b"<b>x</b>" * 50_000 + b"\r\n"
    )
    strict = dataclasses.replace(DEFAULT_LIMITS, scan_time_budget=0.001)
    result = content.scan(report, strict)
    assert "ATT_LIMIT_TIME" in result.symbols() and not result.complete
    monkeypatch.setattr(content, "LIGHT_TIME_BUDGET", 0.001)
    assert content.scan_light(report) is None  # the thread's full scan decides
    assert content.scan(report).complete


# -- a newsletter's preheader is no hidden text ---------------------------------------------------

PREHEADER = (
    '<div style="display:none;max-height:0;overflow:hidden;mso-hide:all">'
    "Your October statement is ready: see what changed this month"
    + "&zwnj;&nbsp;&#847;" * 120
    + "</div>"
)


def test_a_preview_line_hidden_before_the_text_is_a_preheader() -> None:
    from gateway.mime.html import inspect as inspect_html

    body = "<p>Hello Ann, your statement for October is attached to your account.</p>"
    found = inspect_html(f"<html><body>{PREHEADER}{body}</body></html>".encode())
    assert "HTML_PREHEADER" in found
    assert "HTML_HIDDEN_TEXT" not in found


def test_a_hidden_line_of_markup_after_the_text_is_no_salting() -> None:
    """Notifications (GitHub's among them) hide a line for mail clients' actions at the end."""
    from gateway.mime.html import inspect as inspect_html

    markup = (
        "<p>Carla commented on the pull request.</p><div style='display:none'>"
        "Reply to this email directly or view it on GitHub.</div>"
    )
    found = inspect_html(markup.encode())
    assert "HTML_PREHEADER" in found and "HTML_HIDDEN_TEXT" not in found


def test_one_hidden_line_styled_in_many_spans_is_one_piece() -> None:
    """GitHub hides its Message-ID line at the end in five spans of one hidden element."""
    from gateway.mime.html import inspect as inspect_html

    footer = (
        '<span style="color:transparent;font-size:0;display:none;overflow:hidden">'
        "Message ID: <span>&lt;acme/</span><span>.</span><span>widgets/pull/2/19961892227</span>"
        "<span>@</span><span>github.com&gt;</span></span>"
    )
    found = inspect_html(f"{PREHEADER}<p>Carla asked for your review.</p>{footer}".encode())
    assert "HTML_PREHEADER" in found
    assert "HTML_HIDDEN_TEXT" not in found and "HTML_ZERO_FONT" not in found


def test_hidden_pieces_in_separate_elements_are_still_counted_apart() -> None:
    from gateway.mime.html import inspect as inspect_html

    salted = "<p>Hi</p>" + "<p>ok</p>".join(
        f'<span style="display:none">w{i}rd</span>' for i in range(4)
    )
    found = inspect_html(salted.encode())
    assert "HTML_PREHEADER" not in found and "HTML_HIDDEN_TEXT" not in found  # 16 characters
    found = inspect_html((salted * 3).encode())
    assert "HTML_HIDDEN_TEXT" in found and "HTML_PREHEADER" not in found


def test_a_preview_line_in_a_zero_size_font_is_a_preheader() -> None:
    """Australia Post writes its preview line in font-size 0, coloured like the background."""
    from gateway.mime.html import inspect as inspect_html

    markup = (
        '<table><tr><td style="font-size:0px;line-height:0;color:#f3f4f5">Delivered to 2101'
        "</td></tr></table><p>Your shipment has been delivered.</p>"
    )
    found = inspect_html(markup.encode())
    assert "HTML_PREHEADER" in found and "HTML_ZERO_FONT" not in found
    # words salted in a zero-size font between the letters of others are still salting
    salted = "".join(f'Pay<span style="font-size:0">zq{i}xw</span>Pal ' for i in range(6))
    assert "HTML_ZERO_FONT" in inspect_html(f"<p>{salted}</p>".encode())


def test_hidden_padding_without_a_letter_is_no_piece_of_text() -> None:
    """Preheaders are padded with zero-width joiners; tables put soft hyphens in a zero-size
    font between cells: no word there for a filter to read."""
    from gateway.mime.html import inspect as inspect_html

    cells = '<td style="font-size:0">&shy;</td>' * 40
    markup = (
        f'<div style="display:none">Mit gro\u00dfem Herz und klugem Kopf</div>'
        f'<div style="display:none">{"&zwnj;&nbsp;" * 90}</div><table><tr>{cells}</tr></table>'
        "<p>Liebe Leserinnen und Leser, willkommen im neuen Jahr.</p>"
    )
    found = inspect_html(markup.encode())
    assert "HTML_PREHEADER" in found
    assert not {"HTML_HIDDEN_TEXT", "HTML_MANY_INVISIBLE", "HTML_ZERO_FONT"} & set(found)


@pytest.mark.parametrize("kind", ["application/ld+json", "Application/JSON; charset=utf-8"])
def test_a_data_block_is_no_script(kind: str) -> None:
    """Schema.org markup for mail clients' actions (GitHub, airlines) is never run."""
    from gateway.mime.html import inspect as inspect_html

    block = (
        f'<script type="{kind}">{{"@context": "http://schema.org", "@type": "EmailMessage",'
        ' "potentialAction": {"@type": "ViewAction", "url": "https://github.com/acme/w/pull/2"},'
        ' "x": "atob(location.href = 1)"}</script><p>Review requested</p>'
    )
    found = inspect_html(block.encode())
    assert not {"HTML_SCRIPT", "HTML_SCRIPT_DECODE", "HTML_SCRIPT_REDIRECT"} & set(found)


@pytest.mark.parametrize(
    "kind", ["", "text/javascript", "module", "text/x-template", "application/ld+json2"]
)
def test_any_other_script_type_is_script(kind: str) -> None:
    from gateway.mime.html import inspect as inspect_html

    markup = f'<script type="{kind}">location.href = "https://evil.example/"</script>'
    found = inspect_html(markup.encode())
    assert "HTML_SCRIPT" in found and "HTML_SCRIPT_REDIRECT" in found


@pytest.mark.parametrize(
    "markup",
    [
        # more than a line's worth of hidden letters, even at the top
        '<div style="display:none">' + "cheap pills buy now " * 20 + "</div><p>Hello</p>",
        # a hidden line and then more hidden pieces among the text
        PREHEADER + "<p>Hi</p>" + '<span style="display:none">salted words here</span>' * 3,
    ],
)
def test_hidden_text_that_is_more_than_a_preview_line_is_hidden_text(markup: str) -> None:
    from gateway.mime.html import inspect as inspect_html

    found = inspect_html(markup.encode())
    assert "HTML_HIDDEN_TEXT" in found
    assert "HTML_PREHEADER" not in found


def test_a_preheader_scores_nothing_and_is_declared() -> None:
    from harness import REPO

    from gateway.app import load_checked_rules
    from gateway.config import load_settings
    from gateway.mime.symbols import ATTACHMENT_SYMBOLS
    from gateway.plugins import builtin_registry

    assert "HTML_PREHEADER" in ATTACHMENT_SYMBOLS
    settings = load_settings(REPO / "config" / "gateway.toml")
    rules = load_checked_rules(settings, builtin_registry())
    assert rules.scores["HTML_PREHEADER"] == 0.0
    assert rules.scores["HTML_HIDDEN_TEXT"] > 0
