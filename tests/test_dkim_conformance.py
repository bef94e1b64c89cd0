"""DKIM tag lists as RFC 6376 reads them, where dkimpy 1.1.8 reads them otherwise.

Each signature here is built tag by tag (the tag text exactly as written, then signed with the
vectors' RSA 2048 key), each key published on the loopback DNS server; gateway.auth.dkim then
verifies it over the wire. The cases: the three bugs of issue 13 (a q= list, i= in
dkim-quoted-printable, a key s= list) with their neighbours, and the other checks of dkimpy's
verify path that disagree with the RFC (h= without From, x= not after t=, l= past the body, tag
names, digits beyond the int() limit, i= without "@").
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from pathlib import Path

import aiosmtplib
import dkim
import pytest
from auth_helpers import RSA2048, field_values, key_zone, mail, record, start_auth_gateway
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key
from dns_server import DnsTestServer
from harness import GatewayFactory, RecordingSink, RunningGateway

from gateway.auth.dkim import DkimVerdict, DkimVerifier
from gateway.auth.dkim_tags import check_key, decode_quoted_printable
from gateway.dns import Resolver

KEY = record("2048_testkey_wo_markers.pub.txt")  # the public half of RSA2048
SERVICE_KEYS = {
    "emailweb": "email:web",
    "webemail": "web : email",
    "web": "web",
    "star": "*",
    "email": "email",
    "tlsrpt": "tlsrpt",
    "upper": "EMAIL",
}
NOW = int(time.time())


def signed_with_tags(message: bytes, tags: str, key: bytes = RSA2048) -> bytes:
    """`message` with a DKIM-Signature whose tag list is `tags` exactly as written ("BH" is
    replaced by the body hash; the list must end with "b="), signed with `key` (rsa-sha256)."""
    headers, body = dkim.rfc822_parse(message)
    parsed = lenient_tags(tags.replace("BH", "").encode())
    canon = CanonicalizationPolicy.from_c_value(parsed.get(b"c", b"simple/simple").lower())
    canonical = canon.canonicalize_body(body)
    length = parsed.get(b"l", b"")
    if length.isdigit() and len(length) < 20:
        canonical = canonical[: int(length)]
    body_hash = base64.b64encode(hashlib.sha256(canonical).digest()).decode()
    value = (" " + tags.replace("BH", body_hash)).encode()
    hasher = dkim.HashThrough(hashlib.sha256())
    signed = [h.strip().lower() for h in re.split(rb"\s*:\s*", parsed[b"h"])]
    dkim.hash_headers(
        hasher,
        canon,
        canon.canonicalize_headers(headers),
        signed,
        (b"DKIM-Signature", value),
        parsed,
    )
    signature = RSASSA_PKCS1_v1_5_sign(hasher, parse_pem_private_key(key))
    return b"DKIM-Signature:" + value + base64.b64encode(signature) + b"\r\n" + message


def lenient_tags(text: bytes) -> dict[bytes, bytes]:
    """What the signer needs of a tag list that may be invalid on purpose (duplicates...)."""
    pairs = (spec.partition(b"=") for spec in text.split(b";") if b"=" in spec)
    return {name.strip(): value.strip() for name, _, value in pairs}


def tags(selector: str = "rsa2048", extra: str = "", h: str = "from:to:subject") -> str:
    return (
        f"v=1; a=rsa-sha256; c=relaxed/relaxed; d=good.example; s={selector}; h={h}; "
        f"{extra}bh=BH; b="
    )


@pytest.fixture
def verifier(dns_server: DnsTestServer, dns_resolver: Resolver) -> DkimVerifier:
    zone = key_zone()
    for selector, services in SERVICE_KEYS.items():
        zone[f"{selector}._domainkey.good.example"] = [("TXT", f"{KEY}; s={services}")]
    dns_server.load(zone)
    return DkimVerifier(dns_resolver, lifetime=3)


async def outcome(verifier: DkimVerifier, message: bytes) -> tuple[DkimVerdict, str, str]:
    [sig] = (await verifier.verify(message)).signatures
    return sig.result, sig.reason, sig.identity


PASS = (DkimVerdict.PASS, "")


# -- q=: a list of query methods, unknown ones ignored (RFC 6376 3.5) ----------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("dns/txt", PASS),
        ("foo:dns/txt", PASS),  # issue 13: dkimpy refused it
        ("dns/txt:foo", PASS),
        ("foo/bar : dns/txt", PASS),  # FWS around the colon is allowed
        ("DNS/TXT", PASS),  # ABNF literals are case-insensitive
        ("foo", (DkimVerdict.PERMERROR, "q= lists no supported query method")),
        ("dns", (DkimVerdict.PERMERROR, "q= lists no supported query method")),
        ("", (DkimVerdict.PERMERROR, "q= lists no supported query method")),
    ],
)
async def test_query_method_list(
    verifier: DkimVerifier, q: str, expected: tuple[DkimVerdict, str]
) -> None:
    result, reason, _ = await outcome(verifier, signed_with_tags(mail(), tags(extra=f"q={q}; ")))
    assert (result, reason[: len(expected[1])]) == expected, reason


# -- i=: dkim-quoted-printable, decoded before it is compared with d= ------------------------------


@pytest.mark.parametrize(
    ("i", "expected", "identity"),
    [
        ("alice=40good.example", PASS, "alice@good.example"),  # issue 13: =40 is "@"
        ("alice@sub=2Egood.example", PASS, "alice@sub.good.example"),
        ("al=20ice@good.example", PASS, "al ice@good.example"),
        ("@good.example", PASS, "@good.example"),
        ("@Mail.GOOD.example", PASS, "@Mail.GOOD.example"),
        ("alice@good.example", PASS, "alice@good.example"),
        ("alice=40evil.example", (DkimVerdict.PERMERROR, "i= domain is not d="), ""),
        ("alice@evil.example=2Egood.example", PASS, "alice@evil.example.good.example"),
        ("@evilgood.example", (DkimVerdict.PERMERROR, "i= domain is not d="), ""),
        ("good=40evil.example", (DkimVerdict.PERMERROR, "i= domain is not d="), ""),
        ("@good.example.evil.example", (DkimVerdict.PERMERROR, "i= domain is not d="), ""),
        # dkimpy raised IndexError on an i= exactly as long as d= (the plugin failed: 4xx)
        ("good.example", (DkimVerdict.PERMERROR, "i= is not [local-part]@domain"), ""),
        ("sub.good.example", (DkimVerdict.PERMERROR, "i= is not [local-part]@domain"), ""),
        ("alice=4@good.example", (DkimVerdict.PERMERROR, "i= is not [local-part]@domain"), ""),
    ],
)
async def test_identity_is_decoded_before_the_comparison(
    verifier: DkimVerifier, i: str, expected: tuple[DkimVerdict, str], identity: str
) -> None:
    message = signed_with_tags(mail(), tags(extra=f"i={i}; "))
    result, reason, shown = await outcome(verifier, message)
    assert (result, reason[: len(expected[1])]) == expected, reason
    if identity:
        assert shown == identity


def test_quoted_printable_decoding() -> None:
    assert decode_quoted_printable(b"a=40b =2e c") == b"a@b.c"  # FWS ignored, hex any case
    assert decode_quoted_printable(b"=4") is None and decode_quoted_printable(b"a=zz") is None


# -- key s=: a list of service types (RFC 6376 3.6.1) -----------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("emailweb", PASS),  # issue 13: dkimpy refused it with the reason "None"
        ("webemail", PASS),
        ("star", PASS),
        ("email", PASS),
        ("upper", PASS),
        ("web", (DkimVerdict.PERMERROR, "key is not for email (s=web)")),
        ("tlsrpt", (DkimVerdict.PERMERROR, "key is not for email (s=tlsrpt)")),
    ],
)
async def test_key_service_types(
    verifier: DkimVerifier, selector: str, expected: tuple[DkimVerdict, str]
) -> None:
    result, reason, _ = await outcome(verifier, signed_with_tags(mail(), tags(selector)))
    assert (result, reason) == expected
    assert reason != "None"


def test_key_record_handed_to_dkimpy_keeps_its_key() -> None:
    checked = check_key(f"v=DKIM1; k=RSA; s=email:web; {KEY.partition('p=')[1]}AAAA".encode())
    assert checked.problem == "" and b"s=" not in checked.record and b"k=rsa" in checked.record


# -- the other checks of dkimpy's verify path -----------------------------------------------------


@pytest.mark.parametrize(
    ("tag_list", "expected"),
    [
        pytest.param(
            tags(h="to:subject"),
            (DkimVerdict.PERMERROR, "From field not signed (RFC 6376 6.1.1)"),
            id="h-without-from",  # dkimpy passed it: it gave DMARC credit to any From
        ),
        pytest.param(tags(h="From : To:subject"), PASS, id="h-case-and-fws"),
        pytest.param(tags(h="from:to:"), PASS, id="h-trailing-colon"),
        pytest.param(
            tags(h="from:t o"), (DkimVerdict.PERMERROR, "h= is not a list"), id="h-bad-name"
        ),
        pytest.param(
            tags(extra=f"t={NOW - 100}; x={NOW - 100}; "),
            (DkimVerdict.PERMERROR, "x= is not later than t="),
            id="x-equal-to-t",
        ),
        pytest.param(tags(extra=f"t={NOW - 100}; x={NOW + 86400}; "), PASS, id="t-and-x"),
        pytest.param(
            tags(extra=f"t={NOW - 9 * 86400}; x={NOW - 8 * 86400}; "),
            (DkimVerdict.PERMERROR, "signature expired"),
            id="expired",
        ),
        pytest.param(
            tags(extra=f"t={NOW + 5 * 86400}; "),
            (DkimVerdict.PERMERROR, "t= is in the future"),
            id="t-future",
        ),
        pytest.param(
            tags(extra="t=1234567890123; "),
            (DkimVerdict.PERMERROR, "t= is not a number of 1 to 12 digits"),
            id="t-13-digits",
        ),
        # thousands of digits: int() raised ValueError inside dkimpy and in _base (plugin error)
        pytest.param(
            tags(extra="l=" + "9" * 5000 + "; "),
            (DkimVerdict.PERMERROR, "l= is not a number"),
            id="l-5000-digits",
        ),
        pytest.param(
            tags(extra="x=" + "9" * 5000 + "; "),
            (DkimVerdict.PERMERROR, "x= is not a number"),
            id="x-5000-digits",
        ),
        pytest.param(  # dkimpy's \d{,76} accepts it, then int(b"") raised ValueError
            tags(extra="l=; "),
            (DkimVerdict.PERMERROR, "l= is not a number"),
            id="l-empty",
        ),
        pytest.param(
            tags(extra="l=100000; "),
            (DkimVerdict.PERMERROR, "l= is larger than the body"),
            id="l-over-length",
        ),
        pytest.param(
            tags(extra="z z=1; "), (DkimVerdict.PERMERROR, "malformed tag name"), id="tag-name"
        ),
        pytest.param(
            tags(extra="d=good.example; "),
            (DkimVerdict.PERMERROR, "duplicate tag d="),
            id="duplicate-tag",
        ),
        pytest.param(tags(extra="D=other.example; "), PASS, id="tag-names-are-case-sensitive"),
        pytest.param(
            " v = 1 ;a=\r\n\trsa-sha256 ; c = relaxed/relaxed;d=good.example ;\r\n s=rsa2048; "
            "h = from\r\n : to ; bh = BH ;b=",
            PASS,
            id="whitespace-and-folding",
        ),
        pytest.param(tags().replace("rsa-sha256", "RSA-SHA256"), PASS, id="a-upper-case"),
        pytest.param(tags().replace("relaxed/relaxed", "Relaxed/Simple"), PASS, id="c-mixed"),
        pytest.param(tags().replace("v=1", "v=2"), (DkimVerdict.PERMERROR, "v= is not 1"), id="v2"),
        pytest.param(tags().replace("v=1; ", ""), (DkimVerdict.PERMERROR, "missing v="), id="no-v"),
    ],
)
async def test_signature_tags(
    verifier: DkimVerifier, tag_list: str, expected: tuple[DkimVerdict, str]
) -> None:
    result, reason, _ = await outcome(verifier, signed_with_tags(mail(), tag_list))
    assert (result, reason[: len(expected[1])]) == expected, reason


async def test_bad_body_hash_characters_are_refused(verifier: DkimVerifier) -> None:
    """dkimpy checked bh= with b='s value; base64 decoding then skipped the junk."""
    message = signed_with_tags(mail(), tags())
    head, _, rest = message.partition(b"bh=")
    forged = head + b"bh=!!!!" + rest
    result, reason, _ = await outcome(verifier, forged)
    assert (result, reason) == (DkimVerdict.PERMERROR, "bh= is not base64")


async def test_from_signed_twice_stops_a_second_from(verifier: DkimVerifier) -> None:
    """h=from:from over a message with one From: a From added later, above or below, breaks the
    signature (dkimpy also hashes one From more than h= lists, so h=from alone does too)."""
    message = signed_with_tags(mail(), tags(h="from:from:to:subject"))
    assert (await outcome(verifier, message))[:2] == PASS
    above = b"From: <ceo@good.example>\r\n" + message
    head, _, body = message.partition(b"\r\n\r\n")
    below = head + b"\r\nFrom: <ceo@good.example>\r\n\r\n" + body
    for forged in (above, below):
        result, _, _ = await outcome(verifier, forged)
        assert result is DkimVerdict.FAIL


# -- in a running gateway: what the verdicts mean for DMARC ---------------------------------------


@pytest.fixture
async def auth_gw(
    tmp_path: Path, sink: RecordingSink, dns_server: DnsTestServer, start_gateway: GatewayFactory
) -> RunningGateway:
    dns_server.load(key_zone())
    dns_server.load(
        {
            "_dmarc.good.example": [("TXT", "v=DMARC1; p=reject")],
            "client.test.example": [("A", "127.0.0.1")],
        }
    )
    return await start_auth_gateway(tmp_path, sink.port, dns_server, start_gateway)


async def send(gw: RunningGateway, content: bytes) -> None:
    await aiosmtplib.send(
        content,
        sender="bounce@relay.example",  # no SPF: only DKIM can align
        recipients=["bob@example.com"],
        hostname=gw.host,
        port=gw.port,
        local_hostname="client.test.example",
    )


async def test_conforming_signature_earns_dmarc_pass(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    """q= with an unknown method and an =40-encoded i=: dkimpy's refusal bounced this (p=reject)."""
    content = signed_with_tags(mail(), tags(extra="q=foo:dns/txt; i=alice=40good.example; "))
    await send(auth_gw, content)
    [delivered] = await sink.arrived(1)
    [symbols] = field_values(delivered.content, "X-Mailgate-Symbols")
    assert "DKIM_VALID" in symbols and "DMARC_PASS" in symbols
    [results] = field_values(delivered.content, "Authentication-Results")
    assert "header.i=alice@good.example" in results


async def test_identity_as_long_as_the_domain_is_refused_not_a_plugin_error(
    auth_gw: RunningGateway, sink: RecordingSink
) -> None:
    """i=good.example made dkimpy raise IndexError: the dkim plugin failed and the message was
    deferred (4xx) on every retry. Now the signature is a permerror and DMARC decides."""
    content = signed_with_tags(mail(), tags(extra="i=good.example; "))
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(auth_gw, content)
    assert refused.value.code == 550  # p=reject, no aligned pass
    assert sink.delivered == []


def test_dkimpy_entry_point_we_rely_on() -> None:
    """gateway.auth.dkim calls DomainSigner.verify_sig(sig, include_headers, sig_header,
    dnsfunc) directly (pyproject pins dkimpy <1.2); a release that changes it must fail here."""
    import inspect

    params = list(inspect.signature(dkim.DKIM.verify_sig).parameters)
    assert params == ["self", "sig", "include_headers", "sig_header", "dnsfunc"]
