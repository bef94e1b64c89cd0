"""Every reading a mainstream client may take of a message is scanned (issue 13).

Each evasion below hides a payload (EICAR, a PE file, a script, a macro document) from one
reading of the MIME structure, the transfer encoding or the file name that another reader
takes: the message must be refused or quarantined, never relayed. Benign neighbours (the same
oddity with harmless content, or ordinary mail that looks a little like it) stay relayed.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from harness import REPO, make_settings
from mime_samples import OLETOOLS, b64, eicar, inspect, oletools_sample, tiny_pe

from gateway.config import PluginSettings
from gateway.mime.parse import analyze
from gateway.mime.symbols import MIME_SYMBOLS
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.attachments import AttachmentInspection
from gateway.plugins.mime import MimeStructure
from gateway.policy import load_rules
from gateway.verdict import Action

HEAD = (
    "From: Alice <alice@example.net>\r\n"
    "To: Bob <bob@example.com>\r\n"
    "Subject: readings\r\n"
    "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <readings-1@example.net>\r\n"
    "MIME-Version: 1.0\r\n"
)
TEXT_PART = "Content-Type: text/plain; charset=utf-8\r\n\r\nPlease see the attachment.\r\n"
SCRIPT = b'var s = new ActiveXObject("WScript.Shell");\r\ns.Run("calc.exe");\r\n'
PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def mixed(*parts: str, boundary: str = "b1", ctype: str | None = None, tail: str = "") -> bytes:
    """A multipart/mixed message of the given part texts (header + blank line + body)."""
    ctype = ctype or f'Content-Type: multipart/mixed; boundary="{boundary}"'
    body = "".join(f"--{boundary}\r\n{part}" for part in parts)
    return (HEAD + ctype + "\r\n\r\n" + body + f"--{boundary}--\r\n" + tail).encode()


def attachment(
    data: bytes,
    ctype: str = "application/octet-stream",
    disposition: str = 'attachment; filename="readme.txt"',
    cte: str = "Content-Transfer-Encoding: base64",
    extra: str = "",
) -> str:
    fields = [
        f"Content-Type: {ctype}",
        cte,
        f"Content-Disposition: {disposition}" if disposition else "",
    ]
    head = "".join(f + "\r\n" for f in fields if f) + extra
    return head + "\r\n" + b64(data) + "\r\n"


async def verdict(tmp_path: Path, raw: bytes) -> tuple[Action, set[str]]:
    """The message through the mime and attachments plugins and the shipped rules."""
    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=("mime", "attachments")))
    rules = load_rules(settings.rules_dir)
    ctx = MessageContext(
        client=ClientInfo(ip="192.0.2.1", port=1),
        rules=rules,
        settings=settings,
        raw=raw,
        mail_from="alice@example.net",
        rcpt_tos=["bob@example.com"],
    )
    services = Services(settings)
    found = list(await MimeStructure(services).check(Phase.DATA, ctx))
    found += await AttachmentInspection(services).check(Phase.DATA, ctx)
    return rules.decide(found).action, {f.symbol for f in found}


STOPPED = (Action.REJECT, Action.QUARANTINE)

# -- Content-Transfer-Encoding as RFC 5322 allows it to be written ---------------------------------

CTE_SPELLINGS = [
    "Content-Transfer-Encoding: base64 ",
    "Content-Transfer-Encoding: base64\t",
    "Content-Transfer-Encoding:\r\n base64",
    "Content-Transfer-Encoding: base64 (the usual)",
    'Content-Transfer-Encoding: "base64"',
    "Content-Transfer-Encoding: BASE64  \t ",
]


@pytest.mark.parametrize("cte", CTE_SPELLINGS)
async def test_odd_cte_spellings_are_decoded(tmp_path: Path, cte: str) -> None:
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, attachment(eicar(), cte=cte)))
    assert action is Action.REJECT and "ATT_EICAR_TEST" in symbols
    pe = attachment(tiny_pe(), disposition='attachment; filename="report.dat"', cte=cte)
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, pe))
    assert action is Action.REJECT and "ATT_EXECUTABLE" in symbols


@pytest.mark.skipif(not OLETOOLS.is_dir(), reason="oletools test data not in ../shared")
async def test_macro_document_behind_a_trailing_space_cte(tmp_path: Path) -> None:
    doc = oletools_sample("olevba/sample_with_vba.ppt")
    part = attachment(
        doc,
        "application/vnd.ms-powerpoint",
        'attachment; filename="deck.ppt"',
        "Content-Transfer-Encoding: base64 ",
    )
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action in STOPPED and "DOC_VBA_MACRO" in symbols


async def test_pdf_with_a_trailing_space_cte_is_decoded_and_clean(tmp_path: Path) -> None:
    part = attachment(
        PDF,
        "application/pdf",
        'attachment; filename="report.pdf"',
        "Content-Transfer-Encoding: base64 ",
    )
    raw = mixed(TEXT_PART, part)
    report = analyze(raw)
    assert any(leaf.data.startswith(b"%PDF-") for leaf in report.leaves)
    action, symbols = await verdict(tmp_path, raw)
    assert action is Action.RELAY, symbols


async def test_base64_after_an_early_pad_is_decoded_too(tmp_path: Path) -> None:
    # "MZ" is "TVo=": the stdlib stops at that pad, other clients decode the rest of the PE
    pe = tiny_pe()
    text = base64.b64encode(pe[:2]).decode() + "\r\n" + b64(pe[2:])
    part = (
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="report.dat"\r\n\r\n' + text + "\r\n"
    )
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action is Action.REJECT and "ATT_EXECUTABLE" in symbols


async def test_ordinary_padded_base64_has_one_reading(tmp_path: Path) -> None:
    raw = mixed(TEXT_PART, attachment(b"hello", "text/plain", 'attachment; filename="a.txt"'))
    report = analyze(raw)
    assert not [leaf for leaf in report.leaves if leaf.kind == "alternate"]
    assert (await verdict(tmp_path, raw))[0] is Action.RELAY


# -- budgets that would hide a name quarantine ---------------------------------------------------


async def test_too_many_parameters_quarantine(tmp_path: Path) -> None:
    params = "".join(f"; x{i}=y" for i in range(70))
    part = attachment(SCRIPT, "text/plain", f"attachment{params}; filename=run.js")
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action in STOPPED and "MIME_LIMIT_PARAMS" in symbols


async def test_too_long_a_field_quarantines(tmp_path: Path) -> None:
    part = attachment(SCRIPT, "text/plain", f'attachment; x="{"y" * 9000}"; filename=run.js')
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action in STOPPED and "MIME_LIMIT_PARAMS" in symbols


def test_every_mime_budget_quarantines() -> None:
    forced = load_rules(REPO / "rules").forced
    budgets = [s for s in MIME_SYMBOLS if s.startswith("MIME_LIMIT_")] + ["MIME_UNSCANNABLE"]
    for symbol in budgets:
        assert symbol in forced and forced[symbol].action in STOPPED, symbol


async def test_uuencoded_files_past_the_budget_quarantine(tmp_path: Path) -> None:
    block = "begin 644 a.txt\r\n#86)C\r\n`\r\nend\r\n"
    part = "Content-Type: text/plain\r\n\r\n" + block * 25
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action in STOPPED and "MIME_LIMIT_PARTS" in symbols


# -- file names, from everywhere a client reads one ------------------------------------------------

NAME_EVASIONS = {
    "long name": f'attachment; filename="{"a" * 1500}.js"',
    "no disposition type": 'filename="run.js"',
    "comment after the name": "attachment; filename=invoice.js(.pdf)",
    "rfc 2231 continuation": 'attachment; filename*0="inv"; filename*1="oice.js"',
    "rfc 2231 charset": "attachment; filename*=utf-8''invoice%2Ejs",
    "encoded word": 'attachment; filename="=?utf-8?B?aW52b2ljZS5qcw==?="',
    "name= on the disposition": 'attachment; name="run.js"',
}


@pytest.mark.parametrize("disposition", NAME_EVASIONS.values(), ids=NAME_EVASIONS.keys())
async def test_script_names_are_found(tmp_path: Path, disposition: str) -> None:
    part = attachment(SCRIPT, "text/plain", disposition)
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action is Action.REJECT and "ATT_SCRIPT" in symbols, symbols


@pytest.mark.parametrize(
    ("ctype", "extra"),
    [
        ('text/plain; filename="run.js"', ""),
        ("text/plain", "Content-Description: run.js\r\n"),
        ("text/plain", "Content-Name: run.js\r\n"),
    ],
    ids=["filename on content-type", "content-description", "content-name"],
)
async def test_names_outside_the_usual_parameters(tmp_path: Path, ctype: str, extra: str) -> None:
    part = attachment(SCRIPT, ctype, "", extra=extra)
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action is Action.REJECT and "ATT_SCRIPT" in symbols, symbols


async def test_a_named_message_part_is_checked(tmp_path: Path) -> None:
    inner = HEAD + "Content-Type: text/plain\r\n\r\nhello\r\n"
    part = 'Content-Type: message/rfc822; name="invoice.exe"\r\n\r\n' + inner
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action is Action.REJECT and "ATT_EXECUTABLE" in symbols, symbols


async def test_a_named_multipart_without_boundary_is_checked(tmp_path: Path) -> None:
    part = (
        'Content-Type: multipart/mixed; name="run.js"\r\n'
        'Content-Disposition: attachment; filename="run.js"\r\n\r\n'
    ) + SCRIPT.decode()
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action is Action.REJECT and "ATT_SCRIPT" in symbols, symbols


async def test_every_candidate_name_reaches_the_policy(tmp_path: Path) -> None:
    part = attachment(
        b"plain text\r\n",
        'text/plain; name="notes.txt"',
        'attachment; filename="notes.txt"',
        extra="Content-Name: notes.vbs\r\n",
    )
    _, content, _ = inspect(mixed(TEXT_PART, part))
    [facts] = [f for f in content.files if f.name == "notes.txt"]
    assert "vbs" in facts.extensions


async def test_a_second_copy_under_another_name_is_checked(tmp_path: Path) -> None:
    first = attachment(b"plain text\r\n", "text/plain", 'attachment; filename="notes.txt"')
    second = attachment(
        b"plain text\r\n",
        "text/plain",
        'attachment; filename="notes.txt"',
        extra="Content-Name: notes.vbs\r\n",
    )
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, first, second))
    assert action is Action.REJECT and "ATT_SCRIPT" in symbols, symbols


async def test_benign_names_stay_relayed(tmp_path: Path) -> None:
    pdf = attachment(
        PDF,
        'application/pdf; name="=?utf-8?Q?Rechnung_M=C3=A4rz.pdf?="',
        'attachment; filename="=?utf-8?Q?Rechnung_M=C3=A4rz.pdf?="',
        extra="Content-Description: Scanned document\r\n",
    )
    image = attachment(
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        'image/gif; name="image001.gif"',
        'inline; filename="image001.gif"',
        extra="Content-Description: image001.gif\r\n",
    )
    dated = attachment(PDF, "application/pdf", "attachment; filename=minutes.pdf (final)")
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, pdf, image, dated))
    assert action is Action.RELAY, symbols
    assert "ATT_NAME_AMBIGUOUS" not in symbols


# -- readings of the structure --------------------------------------------------------------------


def _eicar_part(name: str = "readme.txt") -> str:
    return attachment(eicar(), disposition=f'attachment; filename="{name}"')


STRUCTURE_EVASIONS = {
    "space before the colon": HEAD.encode()
    + b"Content-Type : multipart/mixed; boundary=b1\r\n\r\n"
    + f"--b1\r\n{TEXT_PART}--b1\r\n{_eicar_part()}--b1--\r\n".encode(),
    "space before the colon in a part": mixed(
        TEXT_PART, attachment(eicar(), cte="Content-Transfer-Encoding : base64")
    ),
    "space before the colon of another field": mixed(TEXT_PART, _eicar_part()).replace(
        b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nX-Mailer : Outlook\r\n"
    ),
    "part in the preamble": mixed(TEXT_PART, tail="").replace(
        b"\r\n\r\n--b1\r\n", f"\r\n\r\n{_eicar_part()}\r\n--b1\r\n".encode(), 1
    ),
    "boundary with a comment": mixed(
        TEXT_PART, _eicar_part(), ctype="Content-Type: multipart/mixed; boundary=b1(mixed)"
    ),
    "boundary with a quoted pair": mixed(
        TEXT_PART, _eicar_part(), ctype='Content-Type: multipart/mixed; boundary="b\\1"'
    ),
    "boundary case mismatch": mixed(
        TEXT_PART, _eicar_part(), ctype='Content-Type: multipart/mixed; boundary="B1"'
    ),
    "boundary leading space": mixed(
        TEXT_PART, _eicar_part(), ctype='Content-Type: multipart/mixed; boundary=" b1"'
    ),
    "delimiter with a leading space": mixed(TEXT_PART, TEXT_PART).replace(
        b"--b1--\r\n", f" --b1\r\n{_eicar_part()}--b1--\r\n".encode()
    ),
    "delimiter in other case inside a part": mixed(TEXT_PART, TEXT_PART).replace(
        b"--b1--\r\n", f"--B1\r\n{_eicar_part()}--b1--\r\n".encode()
    ),
    "part after the closing delimiter": mixed(TEXT_PART, tail=f"--b1\r\n{_eicar_part()}--b1--\r\n"),
    "multipart without a boundary parameter": (
        HEAD
        + "Content-Type: multipart/mixed\r\n\r\n"
        + f"--b1\r\n{TEXT_PART}--b1\r\n{_eicar_part()}--b1--\r\n"
    ).encode(),
}


@pytest.mark.parametrize("raw", STRUCTURE_EVASIONS.values(), ids=STRUCTURE_EVASIONS.keys())
async def test_every_reading_of_the_structure_is_scanned(tmp_path: Path, raw: bytes) -> None:
    action, symbols = await verdict(tmp_path, raw)
    assert action is Action.REJECT and "ATT_EICAR_TEST" in symbols, symbols
    assert "MIME_AMBIGUOUS" in symbols or "MIME_HEADER_MALFORMED" in symbols


async def test_ordinary_structure_has_one_reading(tmp_path: Path) -> None:
    raw = (
        HEAD + 'Content-Type: multipart/alternative; boundary="----=_Part_1"\r\n\r\n'
        "This is a multi-part message in MIME format.\r\n\r\n"
        "------=_Part_1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Objet : la réunion\r\nContent : rien\r\n-- \r\nAlice\r\n"
        "------=_Part_1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Objet : rien</p>\r\n"
        "------=_Part_1--\r\n\r\n"
    ).encode()
    report = analyze(raw)
    assert report.readings == 1 and "MIME_AMBIGUOUS" not in report.symbols()
    assert (await verdict(tmp_path, raw))[0] is Action.RELAY


async def test_lenient_readings_are_bounded(tmp_path: Path) -> None:
    # a part full of near-delimiters: each would start a part in a lenient reader
    body = "".join(f"--B1\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(2000))
    raw = mixed(TEXT_PART, "Content-Type: text/plain\r\n\r\n" + body)
    action, symbols = await verdict(tmp_path, raw)
    assert action in STOPPED and "MIME_LIMIT_PARTS" in symbols


def test_an_unknown_encoding_of_unpadded_base64_is_decoded_not_unscannable() -> None:
    raw = (
        HEAD + "Content-Type: text/plain\r\nContent-Transfer-Encoding: x-b64\r\n\r\n"
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmM\r\n"
    ).encode()
    report = analyze(raw)
    assert report.complete and "MIME_UNSCANNABLE" not in report.symbols()
    assert any(leaf.data.startswith(b"ABCDEFGHIJ") for leaf in report.leaves)


# -- neighbours found in the issue 13 audit --------------------------------------------------------

HEADER_LINES_THAT_ARE_NO_FIELD = {
    "a line without a colon": "X-Mailer-Note\r\n",
    "an 8-bit field name": "X-Pr\u00fcfung: ok\r\n",
}


@pytest.mark.parametrize(
    "line", HEADER_LINES_THAT_ARE_NO_FIELD.values(), ids=HEADER_LINES_THAT_ARE_NO_FIELD.keys()
)
async def test_fields_after_a_line_that_is_no_field_are_read(tmp_path: Path, line: str) -> None:
    # CPython ends the header at the line (Content-Type and all after it become body text);
    # a reader that skips the line sees the multipart and its EICAR part
    raw = mixed(TEXT_PART, _eicar_part()).replace(
        b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\n" + line.encode()
    )
    action, symbols = await verdict(tmp_path, raw)
    assert action is Action.REJECT and "ATT_EICAR_TEST" in symbols, symbols
    assert "MIME_AMBIGUOUS" in symbols


def test_a_body_right_after_the_header_is_no_second_reading() -> None:
    raw = (HEAD + "Content-Type: text/plain\r\nHello Bob,\r\nsee you at ten.\r\n").encode()
    report = analyze(raw)
    assert "MIME_AMBIGUOUS" not in report.symbols() and report.readings == 1


LOOSE_MULTIPART_TYPES = {
    "white space around the slash": "multipart / mixed",
    "quoted": '"multipart/mixed"',
    "a comment before the slash": "multipart(parts)/mixed",
    "no subtype": "multipart",
}


@pytest.mark.parametrize("kind", LOOSE_MULTIPART_TYPES.values(), ids=LOOSE_MULTIPART_TYPES.keys())
async def test_a_multipart_type_written_loosely_is_read_as_one(tmp_path: Path, kind: str) -> None:
    raw = mixed(TEXT_PART, _eicar_part(), ctype=f'Content-Type: {kind}; boundary="b1"')
    action, symbols = await verdict(tmp_path, raw)
    assert action is Action.REJECT and "ATT_EICAR_TEST" in symbols, symbols


@pytest.mark.parametrize(
    "location", ["run.js", "https://files.example/dl/run.js?session=1", "cid%2Frun%2Ejs"]
)
async def test_a_name_in_content_location_is_checked(tmp_path: Path, location: str) -> None:
    part = attachment(SCRIPT, "text/plain", "", extra=f"Content-Location: {location}\r\n")
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action in STOPPED and "ATT_SCRIPT" in symbols, symbols


async def test_a_related_page_with_a_location_stays_a_body(tmp_path: Path) -> None:
    html = "Content-Type: text/html\r\nContent-Location: https://www.example.com/news.html\r\n"
    raw = mixed(
        html + "\r\n<p>News</p>\r\n", ctype='Content-Type: multipart/related; boundary="b1"'
    )
    report = analyze(raw)
    [page] = [leaf for leaf in report.leaves if leaf.content_type == "text/html"]
    assert page.is_text_body and page.name_variants == ("news.html",)
    assert (await verdict(tmp_path, raw))[0] is Action.RELAY


@pytest.mark.parametrize(
    ("ctype", "symbol"),
    [
        ("application/javascript", "ATT_SCRIPT"),
        ("application/x-javascript", "ATT_SCRIPT"),
        ("application/hta", "ATT_SCRIPT"),
        ("application/x-msdownload", "ATT_EXECUTABLE"),
    ],
)
async def test_an_unnamed_part_of_a_runnable_type_is_stopped(
    tmp_path: Path, ctype: str, symbol: str
) -> None:
    # saved by a client as "Part 1.2" with the extension Windows maps the type to (.js, .exe)
    part = attachment(SCRIPT, ctype, "attachment")
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert action in STOPPED and symbol in symbols, symbols


async def test_a_named_part_of_a_runnable_type_goes_by_its_name(tmp_path: Path) -> None:
    part = attachment(
        b"plain notes\r\n", "application/x-javascript", 'attachment; filename="a.txt"'
    )
    action, symbols = await verdict(tmp_path, mixed(TEXT_PART, part))
    assert "ATT_SCRIPT" not in symbols and action is Action.RELAY, symbols


async def test_rfc_2231_pieces_of_both_kinds_are_read_not_a_parser_failure(
    tmp_path: Path,
) -> None:
    # `filename*=` beside `filename*0=`: CPython's decode_params raised, the message was
    # unscannable (held, its names never checked); each piece is a name a client may take
    disposition = (
        "attachment; filename=\"a.txt\"; filename*=utf-8''a.js; filename*0=b; filename*1=.vbs"
    )
    action, symbols = await verdict(
        tmp_path, mixed(TEXT_PART, attachment(SCRIPT, "text/plain", disposition))
    )
    assert "MIME_UNSCANNABLE" not in symbols and "ATT_SCRIPT" in symbols, symbols
    assert action is Action.REJECT
