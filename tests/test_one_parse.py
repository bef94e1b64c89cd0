"""One parsed message (gateway.message): every reader gives the same answer on hostile headers.

The two parser differentials of issue 12 go through the real gateway over SMTP (loopback DNS,
a real downstream) and are checked in the four places that read the From: header sanity, DMARC,
the log line and the quarantine record. Before, a junk line before From let DMARC see a From that
header sanity and the quarantine record missed, and `From :` before `From:` was two From fields
for DMARC but one for header sanity.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from auth_helpers import field_values, start_auth_gateway
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway, make_settings
from test_dmarc_gateway import load_zones, send

from gateway.config import Settings
from gateway.domains import DomainSet, domain_matches, registrable_domain
from gateway.header_edit import remove_forged
from gateway.message import ParsedMessage, scan_fields, urls_in
from gateway.plugin import ClientInfo, MessageContext
from gateway.policy import load_rules
from gateway.quarantine.view import view_message
from gateway.transaction import metadata
from gateway.verdict import Action, SmtpReply, Verdict

REST = (
    b"To: Bob <bob@example.com>\r\n"
    b"Subject: invoice\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <parse-1@quarantined.example>\r\n"
    b"\r\n"
    b"Please pay.\r\n"
)


@pytest.fixture
async def auth_gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    load_zones(dns_server)
    gw = await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)
    # Keep every such message in quarantine (never a 550) so its record can be read.
    actions = gw.settings.rules_dir / "actions.toml"
    text = actions.read_text()
    assert "reject = 15.0" in text
    actions.write_text(text.replace("reject = 15.0", "reject = 1000.0"))
    assert gw.gateway.reload_rules()
    return gw


async def quarantined(
    gw: RunningGateway, content: bytes, caplog: pytest.LogCaptureFixture
) -> tuple[bytes, dict[str, object], str]:
    """Send `content`; return the quarantined copy, its record, and the message's log line."""
    caplog.set_level(logging.INFO, logger="mailgate.message")
    _, reply = await send(gw, content, sender="bounce@attack.example")
    match = re.search(r"\(id=([0-9A-F]{12})\)", reply)
    assert match, reply
    raw, meta = gw.gateway.store.get(match.group(1))
    [line] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "mailgate.message" and match.group(1) in r.getMessage()
    ]
    return raw, dict(meta), line


def symbols_of(meta: dict[str, object]) -> set[str]:
    findings = meta["findings"]
    assert isinstance(findings, list)
    return {f["symbol"] for f in findings}


async def test_junk_line_before_from_is_one_reading_everywhere(
    auth_gw: RunningGateway, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    content = b"this line is not a header field\r\nFrom: CEO <ceo@quarantined.example>\r\n" + REST
    raw, meta, line = await quarantined(auth_gw, content, caplog)
    found = symbols_of(meta)
    # DMARC evaluated the From domain ...
    assert "DMARC_QUARANTINE" in found
    [ar] = field_values(raw, "Authentication-Results")
    assert "header.from=quarantined.example" in ar
    # ... and so header sanity sees that From (and the Date and Message-ID after the junk line)
    assert not found & {"HDR_FROM_MISSING", "HDR_NO_HEADERS", "HDR_DATE_MISSING"}, found
    assert "HDR_MESSAGE_ID_MISSING" not in found
    # ... the quarantine record names it, and so does the log line.
    assert meta["from"] == "CEO <ceo@quarantined.example>"
    assert meta["message_id"] == "<parse-1@quarantined.example>"
    assert 'header_from="CEO <ceo@quarantined.example>"' in line
    assert 'msgid="<parse-1@quarantined.example>"' in line
    assert sink.delivered == []


async def test_from_with_space_before_colon_counts_as_a_second_from(
    auth_gw: RunningGateway, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    content = b"From : a@quarantined.example\r\nFrom: b@monitor.example\r\n" + REST
    raw, meta, line = await quarantined(auth_gw, content, caplog)
    found = symbols_of(meta)
    # Two From fields for DMARC (both domains evaluated, the strictest counts) ...
    assert {"DMARC_FROM_MULTIPLE", "DMARC_QUARANTINE"} <= found, found
    [ar] = field_values(raw, "Authentication-Results")
    assert "header.from=quarantined.example" in ar and "header.from=monitor.example" in ar
    # ... and for header sanity too ...
    assert "HDR_FROM_MULTIPLE" in found
    assert "HDR_FROM_MISSING" not in found
    # ... and the record and the log line name the first one, as every reader does.
    assert meta["from"] == "a@quarantined.example"
    assert 'header_from="a@quarantined.example"' in line
    assert "HDR_FROM_MULTIPLE" in line and "DMARC_FROM_MULTIPLE" in line
    assert sink.delivered == []


# -- a header folded 100,000 times ---------------------------------------------------------------


def test_a_header_folded_100000_times_is_read_in_linear_time(tmp_path: Path) -> None:
    folded = b"Subject: start" + b"\r\n x" * 100_000 + b"\r\n"
    raw = b"From: a@example.net\r\n" + folded + b"Message-ID: <m@example.net>\r\n\r\nbody\r\n"
    ctx = MessageContext(
        client=ClientInfo("192.0.2.1", 25),
        rules=load_rules(Path(__file__).resolve().parents[1] / "rules"),
        settings=_settings(tmp_path),
        raw=raw,
    )
    verdict = Verdict(Action.QUARANTINE, 0.0, (), SmtpReply(250, "2.0.0", "kept"), "test")
    started = time.perf_counter()
    record = metadata(ctx, verdict)
    view = view_message(raw)
    elapsed = time.perf_counter() - started
    # generous on purpose (a loaded CI machine); the quadratic reading took minutes here
    assert elapsed < 5.0, elapsed
    assert record["from"] == "a@example.net"
    assert record["message_id"] == "<m@example.net>"
    subject = record["subject"]
    assert isinstance(subject, str) and subject.startswith("start x x")
    assert [name for name, _ in view.headers] == ["From", "Subject", "Message-ID"]
    assert len(ctx.message.fields) == 3


def _settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, 2525)


# -- the parse itself ----------------------------------------------------------------------------


def test_fields_carry_offsets_and_the_lenient_names() -> None:
    raw = b" Lead: x\r\nFrom\r\n : a@x\r\njunk\r\nSUBJECT: hi\r\n there\r\n\r\nFrom: body@x\r\n"
    fields = scan_fields(raw)
    assert [(f.name, f.odd_name) for f in fields] == [
        ("lead", True),
        ("from", True),
        ("", True),
        ("subject", False),
    ]
    assert b"".join(f.raw(raw) for f in fields) == raw[: raw.index(b"\r\n\r\n") + 2]
    message = ParsedMessage(raw)
    assert message.first("subject") == "hi there"
    assert message.count("from") == 1  # the From in the body is no field
    assert message.authors.domains == ("x",)


def test_forged_fields_are_cut_by_offset_and_the_rest_is_untouched() -> None:
    raw = (
        b"X-Mailgate-Action: relay\r\n"
        b"Received: from a\r\n"
        b"authentication-results : mx.gateway.test; dkim=pass\r\n"
        b"Authentication-Results: other.example; dkim=pass\r\n"
        b"Received-SPF: pass (mx.gateway.test: ok)\r\n"
        b"x-mailgate-score\r\n : -100\r\n"
        b"\r\nX-Mailgate-Action: in the body\r\n"
    )
    cleaned, forged = remove_forged(ParsedMessage(raw), "mx.gateway.test")
    assert cleaned == (
        b"Received: from a\r\n"
        b"Authentication-Results: other.example; dkim=pass\r\n"
        b"\r\nX-Mailgate-Action: in the body\r\n"
    )
    assert (forged.ours, forged.authentication_results, forged.received_spf) == (2, 1, 1)
    assert forged.note() == (
        "removed 2 forged X-Mailgate fields; removed 1 forged Authentication-Results; "
        "removed 1 forged Received-SPF"
    )


def test_the_context_reparses_only_when_its_bytes_change(tmp_path: Path) -> None:
    ctx = MessageContext(
        client=ClientInfo("192.0.2.1", 25),
        rules=load_rules(Path(__file__).resolve().parents[1] / "rules"),
        settings=_settings(tmp_path),
        raw=b"From: a@x\r\n\r\n",
    )
    first = ctx.message
    assert ctx.message is first
    ctx.raw = b"From: b@y\r\n\r\n"
    assert ctx.message is not first and ctx.message.first("from") == "b@y"


def test_urls_have_registrable_domains_by_the_public_suffix_list() -> None:
    text = "see https://www.shop.example.co.uk/a?b and www.Example.COM, http://192.0.2.1/x."
    assert [(u.host, u.domain) for u in urls_in(text)] == [
        ("www.shop.example.co.uk", "example.co.uk"),
        ("www.example.com", "example.com"),
        ("192.0.2.1", "192.0.2.1"),
    ]
    # the two approximations this replaces said "blogspot.com" and "kawasaki.jp" for these
    assert registrable_domain("someone.blogspot.com") == "someone.blogspot.com"
    assert registrable_domain("www.example.kawasaki.jp") == "www.example.kawasaki.jp"


# -- one meaning of a leading dot ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "listed"),
    [
        ("example.com", True),  # "example.com" is exactly it
        ("EXAMPLE.com.", True),
        ("a.example.com", False),
        ("a.example.org", True),  # ".example.org" is every domain below it ...
        ("a.b.example.org", True),
        ("example.org", False),  # ... but not example.org itself
        ("badexample.org", False),
        ("", False),
    ],
)
def test_a_leading_dot_means_subdomains_only(domain: str, listed: bool) -> None:
    entries = ("example.com", ".example.org")
    assert DomainSet.parse(entries).matches(domain) is listed
    assert domain_matches(domain, entries) is listed


def test_every_domain_list_uses_the_one_meaning(tmp_path: Path) -> None:
    from gateway.access import domain_served
    from gateway.auth.policy import AuthPolicy
    from gateway.mime.policy import _domain_match
    from gateway.policy import AddressList

    entries = ("example.com", ".example.org")
    readers = [
        lambda d: domain_served(d, entries),
        lambda d: AuthPolicy(trusted_sealers=entries).trusts_sealer(d),
        lambda d: AuthPolicy(distrust_includes=entries).distrusted_include(f"include:{d}") != "",
        lambda d: _domain_match(f"user@{d}", entries),
        lambda d: AddressList.parse(list(entries)).matches(f"user@{d}"),
    ]
    for domain in ("example.com", "a.example.com", "example.org", "a.example.org"):
        answers = {reader(domain) for reader in readers}
        assert answers == {domain in ("example.com", "a.example.org")}, domain
