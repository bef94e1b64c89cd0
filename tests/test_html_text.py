"""HTML rendered as the text a reader sees (gateway.mime.html_text), what body rules match:
tags, comments, scripts and hidden elements out, entities decoded, blocks as lines, the end tags
a browser implies, and bounds on hostile input. Content rules over whole messages are in
tests/test_content_rules.py."""

from __future__ import annotations

import pytest

from gateway.message import ParsedMessage, visible_body_text
from gateway.mime.html_text import MAX_STACK, visible_text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("pass<b></b>word", "password"),
        ("&#112;assword &amp; &lt;more&gt;&nbsp;x", "password & <more> x"),
        ("<p>verify <!-- your --> account</p>", "verify account"),
        ("a<script>var x = '<p>no</p>';</script>b", "ab"),
        ("<style>p { color: red }</style><title>T</title>Body", "Body"),
        ("<template>t</template><iframe>fallback</iframe>shown", "shown"),
        ("<p>one</p><p>two</p>three<br>four", "one\ntwo\nthree\nfour"),
        ("<ul><li>one<li>two</ul>", "one\ntwo"),
        ("<table><tr><td>a<td>b<tr><td>c</table>", "a b\nc"),
        ("<pre>a\n  b</pre>c", "a\nb\nc"),
        ("  lots   of\n\n  space  ", "lots of space"),
        ("<p>Hello</p><!DOCTYPE x><?php echo 1 ?><![CDATA[cdata]]>", "Hello"),
    ],
)
def test_markup_becomes_the_text_shown(html: str, text: str) -> None:
    assert visible_text(html.encode()) == text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("a<div style='display:none'>x</div>b", "ab"),  # no box, so no line break either
        ("a<span style='DISPLAY : None !important'>x</span>b", "ab"),
        ("a<span hidden>x</span>b", "ab"),
        ("a<span style='visibility:hidden'>x</span>b", "ab"),
        ("a<span style='opacity:0'>x</span>b", "ab"),
        ("a<span style='font-size:0px'>x</span>b", "ab"),
        ("a<span style='font: 0/0 a'>x</span>b", "ab"),
        ("a<span style='font-size:12px'>x</span>b", "axb"),
        ("a<span style='opacity:0.5'>x</span>b", "axb"),
        ("a<div style='max-height:0;overflow:hidden'>preheader</div>b", "ab"),
        ("a<span style='max-height:0'>x</span>b", "axb"),  # not clipped: it overflows, shown
        # a descendant may show itself again where CSS lets it
        ("<div style='font-size:0'>salad <span style='font-size:14px'>shown</span></div>", "shown"),
        ("<div style='visibility:hidden'>h<b style='visibility:visible'>shown</b></div>", "shown"),
        ("<div style='display:none'>h<b style='display:block'>still hidden</b></div>ok", "ok"),
        # style sheets are not applied: a class's hidden text stays
        ("<style>.h{display:none}</style><span class=h>kept</span>", "kept"),
    ],
)
def test_hidden_elements_are_left_out(html: str, text: str) -> None:
    assert visible_text(html.encode()) == text


@pytest.mark.parametrize(
    ("html", "text"),
    [
        # a browser ends the hidden <p> at the next <p>, <li> at <li>, <a> at <a>
        ("<p style='display:none'>hidden<p>visible", "visible"),
        ("<ul><li hidden>hidden<li>visible</ul>", "visible"),
        ("<a href=x style='display:none'>hidden<a href=y>visible</a>", "visible"),
        ("<table><tr><td hidden>h<td>visible</table>", "visible"),
        # "<x/>" opens x in HTML: the hidden span holds what follows up to </span>
        ("pass<span style='display:none'/>junk</span>word", "password"),
        ("<svg><text>in svg</text><path/></svg> after", "in svg after"),
    ],
)
def test_the_end_tags_a_browser_implies(html: str, text: str) -> None:
    assert visible_text(html.encode()) == text


def test_the_text_stops_at_its_limit() -> None:
    assert visible_text(b"<p>word</p>" * 100_000, limit=1000) == ("word\n" * 200)[:1000].strip()
    assert len(visible_text(b"word " * 1_000_000, limit=5000)) <= 5000


def test_hostile_markup_gives_an_answer() -> None:
    deep = b"<div style='display:none'>" * (MAX_STACK * 4) + b"x"
    assert visible_text(deep) == ""  # hidden all the way down, though the stack was cut
    assert visible_text(b"<a " * 100_000) == ""  # a tag left open at the end is dropped
    assert visible_text(b"<!--" + b"x" * 100_000) == ""  # so is an open comment
    assert visible_text(b"<p style='" + b"a:b;" * 100_000 + b"'>x") == "x"
    # a byte order mark names the encoding, as in a browser and every other body reader
    assert visible_text("\ufeff<b>café</b>".encode("utf-16-le")) == "café"
    assert visible_text(b"<b>caf\xe9</b>", charset="iso-8859-1") == "café"
    assert visible_text(b"<b>caf\xc3\xa9</b>", charset="punycode") == "café"  # no charset
    nested = b"<div>" * 500 + b"<p><table>" + b"<div>" * 20_000 + b"end"
    assert visible_text(nested) == "end"


async def test_the_message_text_renders_html_parts_and_keeps_plain_ones() -> None:
    raw = (
        b"From: a@example.net\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nplain <b>kept</b>\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>pass<b></b>word</p><!-- gone -->\r\n"
        b"--b\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=a.html\r\n"
        b"\r\n<p>attached</p>\r\n--b--\r\n"
    )
    message = ParsedMessage(raw)
    text = await message.text()
    assert text == "plain <b>kept</b>\npassword"  # attachments are no body
    report = await message.mime()
    assert "<!-- gone -->" in report.body_text()  # rawbody still reads the markup
    assert visible_body_text(report, limit=8) == "plain <b"


# -- one pass: the HTML scanner renders the text as it finds links -------------------------------


def test_the_scanner_renders_the_same_text_in_its_one_pass() -> None:
    from gateway.mime import html

    page = (
        b"<html><body><p>Dear <b>user</b>,</p><div style='display:none'>hidden</div>"
        b"<table><tr><td>pass<i></i>word</td><td>&#112;lease</td></tr></table>"
        b"<div/>after<br/>line<script>x=1</script><a href='https://example.org/'>link</a>"
    )
    reading = html.read(page)
    assert reading.text == visible_text(page)
    assert reading.links and "hidden" not in (reading.text or "")


def test_text_too_long_to_keep_is_rendered_again_by_the_body_reader() -> None:
    from gateway.mime import html
    from gateway.mime.model import Leaf, MimeReport

    page = b"<p>" + b"word " * (html.KEPT_TEXT // 4) + b"</p>"
    assert html.read(page).text is None
    leaf = Leaf("1", "part", "text/html", "", (), "", page)
    report = MimeReport((), (leaf,), True, 1, 1, 1, 0.0)
    assert visible_body_text(report) == visible_text(page)


def test_a_renderer_that_fails_leaves_the_scan_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.mime import html, html_text

    def broken(self: object, data: str) -> None:
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(html_text.Renderer, "handle_data", broken)
    reading = html.read(b"<form action='https://x.example/'><input type=password></form>text")
    assert reading.text is None
    assert "HTML_PASSWORD_FIELD" in reading.found
