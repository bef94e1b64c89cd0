"""The URL list as a browser reads it, and rules/links.toml as the admin wrote it.

The detectors themselves are tested over built messages in tests/corpus/links/.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from gateway.linkcheck import check_links
from gateway.message import MAX_URLS, ParsedMessage, host_of, ip_literal, make_url
from gateway.mime.html import read
from gateway.policy import load_rules
from gateway.tomlfile import ConfigErrors

RULES = Path(__file__).resolve().parents[1] / "rules"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://a@b@evil.example/x", "evil.example"),  # userinfo runs to the last @
        ("http://evil.example\\@bank.example/", "evil.example"),  # a backslash ends the host
        ("https://PayPal.COM./", "paypal.com"),
        ("http://%65vil.example/", "evil.example"),  # percent-encoded host
        ("http://3221225985/", "192.0.2.1"),  # one 32-bit number
        ("http://0xc0.0xa8.0x1.0x1/", "192.168.1.1"),
        ("http://0300.0250.01.01/", "192.168.1.1"),
        ("http://192.168.257/", "192.168.1.1"),  # three parts: the last one is 16 bits
        ("http://[2001:DB8::1]/", "[2001:db8::1]"),
        ("http://1.2.3.4.example/", "1.2.3.4.example"),  # a name ending in a label
    ],
)
def test_hosts_are_read_as_a_browser_reads_them(url: str, host: str) -> None:
    assert host_of(url) == host
    assert make_url(url).host == host


def test_ip_literal_refuses_names_and_out_of_range_numbers() -> None:
    assert ip_literal("example.com") is None
    assert ip_literal("256.1.1.1") is None
    assert ip_literal("09.1.1.1") is None  # not octal
    assert ip_literal("4294967296") is None
    assert ip_literal("4294967295") == "255.255.255.255"


def test_links_carry_their_text_and_source() -> None:
    html = (
        b'<a href="https://a.example/x"> Sign <b>in</b>\n now </a>'
        b'<form action="https://b.example/p"><input type=email><input type=password></form>'
        b'<img src="https://c.example/i.png"><meta http-equiv="refresh" content="5;URL=\'https://d.example/\'">'
        b"<p>see www.e.example today</p><a href=mailto:x@y.example>mail</a>"
    )
    links = {(link.source, link.url, link.text) for link in read(html).links}
    assert links == {
        ("href", "https://a.example/x", "Sign in now"),
        ("action", "https://b.example/p", "email password"),
        ("src", "https://c.example/i.png", ""),
        ("refresh", "https://d.example/", ""),
        ("text", "www.e.example", ""),
        ("href", "mailto:x@y.example", "mail"),
    }


def _message(parts: str) -> ParsedMessage:
    raw = (
        "From: a@example.net\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts
    )
    return ParsedMessage(raw.encode())


def test_the_url_list_reads_bodies_and_html_attachments_and_drops_other_schemes() -> None:
    message = _message(
        "--b\r\nContent-Type: text/plain\r\n\r\nhi https://plain.example/a\r\n"
        '--b\r\nContent-Type: text/plain; name="x.html"\r\nContent-Disposition: attachment;'
        ' filename="x.html"\r\n\r\n<a href="https://att.example/">go</a>'
        '<a href="cid:logo">c</a><a href="#top">t</a>\r\n'
        '--b\r\nContent-Type: text/plain; name="notes.txt"\r\nContent-Disposition: attachment\r\n'
        "\r\nhttps://not-read.example/\r\n--b--\r\n"
    )
    urls = asyncio.run(message.urls())
    assert [(u.host, u.source, u.attachment) for u in urls] == [
        ("plain.example", "text", False),
        ("att.example", "href", True),
    ]


def test_the_url_list_is_bounded_and_linear() -> None:
    link = '<a href="https://h{0}.example/">https://h{0}.example/</a>'
    body = "".join(link.format(i) for i in range(3000))
    message = _message(f"--b\r\nContent-Type: text/html\r\n\r\n{body}\r\n--b--\r\n")
    started = time.process_time()
    urls = asyncio.run(message.urls())
    assert len(urls) == MAX_URLS
    assert time.process_time() - started < 5  # about 0.1 s; a quadratic pass takes minutes


def test_findings_carry_what_they_saw() -> None:
    rules = load_rules(RULES)
    urls = [make_url("https://www.google.com/url?q=http://198.51.100.9/x", "href", "login")]
    details = {f.symbol: f.detail for f in check_links(urls, rules.links, "example.net")}
    assert details == {
        "LINK_REDIRECTOR": "www.google.com -> 198.51.100.9",
        "LINK_IP_HOST": "http://198.51.100.9/x",
    }


def test_links_toml_errors_name_file_line_and_key(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "links.toml").write_text(
        '[shorteners]\nmatch = ["bit.ly", "not a host"]\n'
        '[redirectors]\nopen = [{ match = "google.com/url" }]\n[nonsense]\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    text = str(caught.value)
    assert "links.toml:2" in text and "not a host" in text
    assert "redirectors.open[0].param': is required" in text
    assert "nonsense" in text


def test_links_toml_is_optional(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "links.toml").unlink()
    found = check_links([make_url("https://bit.ly/x", "href")], load_rules(rules).links, "")
    assert found == []  # no lists, no list findings


# -- issue 13: link mismatch false positives, and safe rewriters decoded -----------------------

_SAFE_LINK = "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.example.com%2Fa"


@pytest.mark.parametrize(
    ("href", "text"),
    [
        ("https://shop.ibm.de/x", "https://www.ibm.com"),  # a three-letter brand, another TLD
        ("https://www.sap.com/x", "https://www.sap.de"),
        ("https://www.example.de/x", "https://www.example.com"),
        ("https://xn--mller-kva.de/x", "https://www.müller.de/"),  # the text in Unicode
        (_SAFE_LINK + "&data=x", "www.example.com"),
        (
            "https://safelinks.protection.outlook.com/?url=https%3A%2F%2Fwww.example.com",
            "www.example.com",
        ),
        ("https://www.example.com/a", _SAFE_LINK),  # a reply quotes the rewritten link as text
        (
            "https://urldefense.com/v3/__https://www.example.com/a__;!!abc$",
            "https://www.example.com/a",
        ),
        (
            "https://urldefense.proofpoint.com/v2/url?u=https-3A__www.example.com_a&d=x",
            "www.example.com",
        ),
        ("https://protect-eu.mimecast.com/s/abc?domain=www.example.com", "https://www.example.com"),
    ],
)
def test_same_site_and_safe_rewriters_are_no_mismatch(href: str, text: str) -> None:
    rules = load_rules(RULES)
    found = {
        f.symbol for f in check_links([make_url(href, "href", text)], rules.links, "s.example")
    }
    assert "HTML_LINK_MISMATCH" not in found


@pytest.mark.parametrize(
    "href",
    [
        "https://urldefense.com/v3/__https://evil.example/a__;!!abc$",
        "https://urldefense.proofpoint.com/v2/url?u=https-3A__evil.example_a&d=x",
        "https://protect-eu.mimecast.com/s/abc?domain=evil.example",
        "https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fevil.example%2F",
        "https://www.example.com.evil.example/",
    ],
)
def test_a_rewritten_link_to_another_site_is_still_a_mismatch(href: str) -> None:
    rules = load_rules(RULES)
    url = make_url(href, "href", "https://www.example.com/a")
    assert "HTML_LINK_MISMATCH" in {f.symbol for f in check_links([url], rules.links, "s.example")}


def test_a_redirector_format_is_validated(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "links.toml").write_text(
        '[redirectors]\nsafe = [\n  { match = "r.example", param = "u", format = "rot13" },\n]\n'
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules)
    text = str(caught.value)
    assert "links.toml:" in text and "redirectors.safe[0].format" in text and "rot13" in text


def test_a_tracked_link_to_the_business_a_mailing_service_writes_for_is_no_mismatch() -> None:
    """Constant Contact sends From its shared domain, replies go to the business, links through
    its tracker: the link shows the business's site."""
    rules = load_rules(RULES)
    url = make_url("https://m7l94usab.cc.rs6.net/tn.jsp?f=001", "href", "www.tonka.example")
    business = frozenset({"tonka.example"})
    assert check_links([url], rules.links, "ccsend.com", business) == []
    # no Reply-To naming it: the tracker hides where it goes and the text shows another site
    assert "HTML_LINK_MISMATCH" in {f.symbol for f in check_links([url], rules.links, "ccsend.com")}
    # a Reply-To does not vouch for a link that goes elsewhere than a tracker
    direct = make_url("https://evil.example/login", "href", "www.tonka.example")
    found = check_links([direct], rules.links, "ccsend.com", business)
    assert "HTML_LINK_MISMATCH" in {f.symbol for f in found}


async def _link_symbols(raw: bytes) -> set[str]:
    from harness import REPO

    from gateway.app import Gateway
    from gateway.config import load_settings
    from gateway.dns import OfflineResolver
    from gateway.scan import Envelope, scan_message

    gateway = Gateway.create(
        load_settings(REPO / "config" / "gateway.toml"), resolver=OfflineResolver()
    )
    try:
        envelope = Envelope("", ("bob@example.com",), "192.0.2.1", "mx.sender.example")
        scanned = await scan_message(gateway, "m.eml", raw, envelope)
        return {f.symbol for f in scanned.verdict.findings}
    finally:
        await gateway.aclose()


_TRACKED = (
    b"From: Lyn <lyn-tonka.example@shared1.ccsend.com>\r\nReply-To: lyn@tonka.example\r\n"
    b"To: bob@example.com\r\nSubject: trucks\r\nMessage-ID: <1@shared1.ccsend.com>\r\n"
    b"Date: Mon, 01 Dec 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html\r\n\r\n"
    b'<p>See <a href="https://m7l94usab.cc.rs6.net/tn.jsp?f=001">www.tonka.example</a></p>\r\n'
)


async def test_only_a_mailing_services_shared_from_lets_reply_to_vouch_for_its_links() -> None:
    """Through the plugin: Constant Contact's From writes for the Reply-To's business; any
    other From with a Reply-To naming the site a link shows earns nothing."""
    assert "HTML_LINK_MISMATCH" not in await _link_symbols(_TRACKED)
    forged = _TRACKED.replace(b"lyn-tonka.example@shared1.ccsend.com", b"lyn@mailer.example")
    assert "HTML_LINK_MISMATCH" in await _link_symbols(forged)
