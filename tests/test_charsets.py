"""One decoding of text parts for every reader: the declared charset, as a mail client reads it.

Before, the content rules, links and GTUBE read every body as UTF-8 while the classifier read the
declared charset: a phishing text or GTUBE in UTF-16 or EBCDIC reached the reader unseen."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.classifier.features import FeatureSettings, extract
from gateway.mime.charsets import codec_of, decode_text
from gateway.plugins.content import GTUBE
from tests.test_content_rules import findings_of, rule

GERMAN = "Bitte bestätigen Sie Ihre Überweisung über 500 €"


def part(text: str, charset: str, ctype: str = "text/plain") -> bytes:
    """A one-part message whose body is `text` in `charset`, base64 (any bytes survive)."""
    data = base64.encodebytes(text.encode(charset)).replace(b"\n", b"\r\n")
    return (
        b"From: Alice <alice@example.net>\r\nTo: bob@example.com\r\nSubject: hello\r\n"
        b"Date: Fri, 04 Dec 2026 03:00:00 +0000\r\nMessage-ID: <c1@example.net>\r\n"
        b"MIME-Version: 1.0\r\n"
        + f"Content-Type: {ctype}; charset={charset}\r\n".encode()
        + b"Content-Transfer-Encoding: base64\r\n\r\n"
        + data
    )


@pytest.mark.parametrize("charset", ["utf-16le", "utf-16be", "utf-32", "cp500", "iso-8859-1"])
def test_a_declared_charset_decodes_as_a_reader_decodes_it(charset: str) -> None:
    text = "Hello, " + GTUBE if charset != "iso-8859-1" else GERMAN.replace("€", "EUR")
    assert decode_text(text.encode(charset), charset) == text


def test_no_charset_reads_utf8_else_latin1_and_a_byte_order_mark_wins() -> None:
    assert decode_text(GERMAN.encode("utf-8")) == GERMAN
    assert decode_text("Grüße".encode("latin-1")) == "Grüße"  # every byte a character
    assert decode_text("\ufeffHi".encode("utf-16-le"), "iso-8859-1") == "Hi"
    assert decode_text(b"\xef\xbb\xbfHi", "cp500") == "Hi"
    # a limit that cut the last character keeps the rest as UTF-8, not all of it as Latin-1
    assert decode_text("Grüße €".encode()[:-1]) == "Grüße "


@pytest.mark.parametrize(
    "charset",
    [
        "punycode",
        "idna",
        "unicode_escape",
        "raw-unicode-escape",
        "base64",
        "rot13",
        "x-no",
        "utf8" * 20,
    ],
)
def test_codecs_that_are_no_mail_charset_read_as_undeclared(charset: str) -> None:
    # punycode's decoder is quadratic (2.5 s for 240 KB): never run on a body
    assert codec_of(charset) is None
    assert decode_text(b"caf\xc3\xa9 \\u0041", charset) == "café \\u0041"


@pytest.mark.parametrize("charset", ["utf-16le", "cp500"])
async def test_gtube_in_another_charset_is_still_gtube(tmp_path: Path, charset: str) -> None:
    found = await findings_of(tmp_path, part(f"Hello\r\n{GTUBE}\r\n", charset), "")
    assert "GTUBE" in found


@pytest.mark.parametrize(
    ("charset", "ctype"),
    [("iso-8859-1", "text/plain"), ("windows-1252", "text/html"), ("utf-16le", "text/html")],
)
async def test_body_and_uri_rules_read_the_declared_charset(
    tmp_path: Path, charset: str, ctype: str
) -> None:
    text = GERMAN.replace("€", "EUR") + " https://bank.example/überweisung"
    if ctype == "text/html":
        text = f'<p>{GERMAN.replace("€", "EUR")} <a href="https://bank.example/x">Überweisung</a>'
    content = rule("T_GERMAN", "body", pattern="bestätigen Sie Ihre Überweisung")
    content += rule("T_LINK", "uri", entries=["bank.example"])
    found = await findings_of(tmp_path, part(text, charset, ctype), content)
    assert {"T_GERMAN", "T_LINK"} <= set(found)


def test_the_classifier_reads_the_same_text() -> None:
    fields = extract(part(GERMAN.replace("€", "EUR"), "utf-16le"), FeatureSettings())
    assert "überweisung" in fields["body"] and "bestätigen" in fields["body"]


def test_encoded_words_read_their_charset_and_no_codec_that_is_no_charset() -> None:
    from gateway.message import decode_encoded_words

    assert decode_encoded_words("=?iso-8859-1?Q?Gr=FC=DFe?=") == "Grüße"
    assert decode_encoded_words("=?utf-16le?B?SABpAA==?=") == "Hi"
    # a reader knows no "unicode_escape" or "punycode" charset: the bytes read as UTF-8
    assert decode_encoded_words("=?unicode_escape?Q?=5Cu0041?=") == "\\u0041"
    assert decode_encoded_words("=?punycode?Q?caf=C3=A9?=") == "café"
