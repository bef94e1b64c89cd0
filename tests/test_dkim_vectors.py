"""DKIM verification (gateway.auth.dkim) on dkimpy's test vectors, over the loopback DNS server.

Pre-signed vectors verify as dkimpy's own suite says; messages signed here with the vectors' keys
(RSA 1024/2048, PKCS#8, Ed25519) verify in every canonicalization; tampered copies fail. Every key
is fetched over the wire from tests/dns_server.py, never by dkimpy itself.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from auth_helpers import ED25519, RSA1024, RSA2048, WEAK_PRIVATE, crlf, data, key_zone, mail, sign
from dns_server import DnsTestServer

from gateway.auth.dkim import DkimVerdict, DkimVerifier
from gateway.dns import Resolver
from gateway.plugins.dkim import dkim_findings


@pytest.fixture
def verifier(dns_server: DnsTestServer, dns_resolver: Resolver) -> DkimVerifier:
    dns_server.load(key_zone())
    return DkimVerifier(dns_resolver, lifetime=3)


async def results(verifier: DkimVerifier, message: bytes) -> list[tuple[str, str, str]]:
    result = await verifier.verify(message)
    return [(s.result.value, s.domain, s.selector) for s in result.signatures]


# -- vectors signed by others -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # RFC 8463 appendix A: one Ed25519 and one RSA signature over the RFC 6376 example.
        (
            "rfc6376.signed.msg",
            [
                ("pass", "football.example.com", "brisbane"),
                ("pass", "football.example.com", "test"),
            ],
        ),
        ("rfc6376.signed.rsa.msg", [("pass", "football.example.com", "test")]),
        # The same signature with t= removed and x= added to the header: the hash changes.
        ("rfc6376.signed.no_t.msg", [("fail", "football.example.com", "test")]),
        # Exim's Ed25519 prototype (dkimpy test_verify_third_party).
        ("ed25519test2.msg", [("pass", "test.ex", "sed")]),
        # Gmail, degenerate folding of h= (dkimpy test_degenerate_folding).
        ("test2.message", [("pass", "gmail.com", "20120113")]),
        # d=legitimate.com(.attacker.com: not a DNS name, never looked up.
        ("test.message.baddomain", [("permerror", "legitimate.com(.attacker.com", "test")]),
    ],
)
async def test_presigned_vectors(
    verifier: DkimVerifier, dns_server: DnsTestServer, name: str, expected: list[tuple[str, ...]]
) -> None:
    assert await results(verifier, crlf(data(name))) == expected
    assert all("attacker" not in q.name for q in dns_server.queries)


@pytest.mark.parametrize("name", ["rfc6376.signed.msg", "ed25519test2.msg", "test2.message"])
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m + b"P.S. one more line\r\n", id="body-appended"),
        pytest.param(
            lambda m: m.replace(b"\r\n\r\n", b"\r\nSubject: added\r\n\r\n", 1), id="subject-added"
        ),
        pytest.param(lambda m: m.replace(b"From: ", b"From: Mallory ", 1), id="from-edited"),
    ],
)
async def test_tampered_copies_fail(verifier: DkimVerifier, name: str, tamper: object) -> None:
    original = crlf(data(name))
    assert callable(tamper)
    changed = tamper(original)
    assert changed != original
    outcome = await results(verifier, changed)
    assert outcome and all(result == "fail" for result, _, _ in outcome)


# -- vectors signed here, with the vectors' keys ------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "key", "bits"),
    [
        pytest.param("rsa1024", RSA1024, 1024, id="rsa1024"),
        pytest.param("rsa2048", RSA2048, 2048, id="rsa2048"),
        pytest.param("pkcs8", data("2048_testkey_PKCS8.key"), 2048, id="rsa2048-pkcs8"),
        # p= a bare RSAPublicKey rather than SubjectPublicKeyInfo (dkimpy accepts both)
        pytest.param("bare", RSA2048, 2048, id="rsa2048-bare-p"),
        pytest.param("ed", ED25519, 256, id="ed25519"),
    ],
)
@pytest.mark.parametrize(
    "canon",
    [(b"simple", b"simple"), (b"relaxed", b"relaxed"), (b"relaxed", b"simple")],
    ids=["simple", "relaxed", "relaxed-simple"],
)
@pytest.mark.parametrize("source", ["test.message", "rfc6376.msg", "test_extra.message"])
async def test_signed_here_verifies_and_tampering_fails(
    verifier: DkimVerifier,
    selector: str,
    key: bytes,
    bits: int,
    canon: tuple[bytes, bytes],
    source: str,
) -> None:
    message = crlf(data(source))
    signed = sign(message, selector=selector, key=key, canonicalize=canon)
    result = await verifier.verify(signed)
    [sig] = result.signatures
    assert (sig.result, sig.key_bits) == (DkimVerdict.PASS, bits), sig.reason
    assert sig.from_oversigned  # dkimpy signs From once more than the message has
    body_changed = signed.replace(b"\r\n\r\n", b"\r\n\r\nX", 1)
    [bad] = (await verifier.verify(body_changed)).signatures
    assert bad.result is DkimVerdict.FAIL and bad.reason == "body hash mismatch"


# -- keys that must not verify ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ("badk", "unusable key"),  # k=ed25519-sha256: no such key type
        ("badversion", "key record v= is not DKIM1"),  # v=DKIM1: (a colon, not DKIM1)
        ("tlsrpt", ""),  # s=tlsrpt: a key for TLS reports only (RFC 8460)
        ("revoked", "key revoked (empty p=)"),
        ("sha1only", "key h= does not allow the signature's hash"),
        ("nokey", "no key for signature"),
    ],
)
async def test_unusable_keys_are_permerrors(
    verifier: DkimVerifier, selector: str, reason: str
) -> None:
    signed = sign(crlf(data("test.message")), selector=selector, key=RSA1024)
    [sig] = (await verifier.verify(signed)).signatures
    assert sig.result is DkimVerdict.PERMERROR, sig
    assert sig.reason.startswith(reason)


async def test_ed25519_signature_against_an_rsa_key_is_a_permerror(verifier: DkimVerifier) -> None:
    signed = sign(crlf(data("test.message")), selector="rsa2048", key=ED25519)
    [sig] = (await verifier.verify(signed)).signatures
    assert (sig.result, sig.reason) == (DkimVerdict.PERMERROR, "key type does not match a=")


async def test_weak_key_verifies_but_is_not_valid(verifier: DkimVerifier) -> None:
    signed = sign(mail(), selector="weak", key=WEAK_PRIVATE)
    result = await verifier.verify(signed)
    [sig] = result.signatures
    assert (sig.result, sig.weak_key, sig.key_bits) == (DkimVerdict.POLICY, True, 512)
    assert not sig.gives_credit
    assert [f.symbol for f in dkim_findings(result)] == ["DKIM_WEAK_KEY"]


async def test_rsa_sha1_is_refused_without_a_lookup(
    verifier: DkimVerifier, dns_server: DnsTestServer
) -> None:
    signed = sign(mail(), selector="rsa1024", key=RSA1024, signature_algorithm=b"rsa-sha1")
    [sig] = (await verifier.verify(signed)).signatures
    assert sig.result is DkimVerdict.PERMERROR and "RFC 8301" in sig.reason
    assert dns_server.queries == []


async def test_body_length_leaving_a_tail_unsigned_gives_no_credit(verifier: DkimVerifier) -> None:
    signed = sign(mail(body=b"Pay invoice 1.\r\n"), selector="rsa2048", length=True)
    [clean] = (await verifier.verify(signed)).signatures
    assert clean.result is DkimVerdict.PASS and clean.body_length is not None
    appended = signed + b"Actually, pay account 666 instead.\r\n"
    result = await verifier.verify(appended)
    [sig] = result.signatures
    assert sig.result is DkimVerdict.POLICY and not sig.gives_credit
    assert sig.body_unsigned == len(b"Actually, pay account 666 instead.\r\n")
    assert "DKIM_BODY_LENGTH" in [f.symbol for f in dkim_findings(result)]


@pytest.mark.parametrize(
    ("domain", "selector"),
    [
        ("legitimate.com'a.attack.com", "test"),  # espoofer A4: result injection by quote
        ("legitimate.com", "selector._domainkey.attack.com.\x00.any"),  # espoofer A3: NUL
        ("legitimate.com(.attack.com", "test"),
        ("localhost", "test"),  # one label
        ("good.example", ""),
    ],
)
async def test_invalid_identities_are_findings_never_lookups(
    verifier: DkimVerifier, dns_server: DnsTestServer, domain: str, selector: str
) -> None:
    message = mail()
    header = (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};"
        " h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n"
    ).encode()
    result = await verifier.verify(header + message)
    [sig] = result.signatures
    assert sig.result is DkimVerdict.PERMERROR
    symbols = [f.symbol for f in dkim_findings(result)]
    assert symbols == ["DKIM_BAD_IDENTITY"]
    assert dns_server.queries == []


async def test_key_lookup_timeout_is_a_temperror(
    verifier: DkimVerifier, dns_server: DnsTestServer
) -> None:
    signed = sign(mail(), selector="slow", key=RSA2048)
    [sig] = (await verifier.verify(signed)).signatures
    assert sig.result is DkimVerdict.TEMPERROR
    dns_server.servfail("rsa2048._domainkey.good.example")
    [sig] = (await verifier.verify(sign(mail()))).signatures
    assert sig.result is DkimVerdict.TEMPERROR


# -- header repetition ("Composition Kills") ------------------------------------------------------


async def test_second_from_added_after_signing_fails(verifier: DkimVerifier) -> None:
    signed = sign(mail(), include_headers=[b"from", b"to", b"subject"])  # From signed once
    for added in (b"From: <admin@legitimate.com>\r\n", None):
        if added is None:  # appended below the signed one
            head, body = signed.split(b"\r\n\r\n", 1)
            forged = head + b"\r\nFrom: <admin@legitimate.com>\r\n\r\n" + body
        else:
            forged = added + signed
        [sig] = (await verifier.verify(forged)).signatures
        assert sig.result is DkimVerdict.FAIL  # dkimpy hashes one From more than h= lists


async def test_from_signed_once_is_not_oversigned(verifier: DkimVerifier) -> None:
    result = await verifier.verify(sign(mail(), include_headers=[b"from", b"to", b"subject"]))
    [sig] = result.signatures
    assert sig.result is DkimVerdict.PASS and not sig.from_oversigned
    assert "DKIM_FROM_NOT_OVERSIGNED" in [f.symbol for f in dkim_findings(result)]


async def test_signed_field_added_again_above_is_flagged(verifier: DkimVerifier) -> None:
    signed = sign(mail(), include_headers=[b"from", b"from", b"to", b"subject"])
    forged = b"Subject: Urgent: new bank details\r\n" + signed
    result = await verifier.verify(forged)
    [sig] = result.signatures
    assert sig.result is DkimVerdict.PASS  # the bottom Subject is the signed one
    assert sig.duplicated_fields == ("subject",)
    assert "DKIM_SIGNED_FIELD_REPEATED" in [f.symbol for f in dkim_findings(result)]


# -- limits and the loop ----------------------------------------------------------------------


async def test_every_signature_is_verified_up_to_the_limit(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(key_zone())
    message = mail()
    for _ in range(3):
        message = sign(message, selector="rsa1024", key=RSA1024)
    verifier = DkimVerifier(dns_resolver, max_signatures=2)
    result = await verifier.verify(message)
    assert [s.result for s in result.signatures] == [DkimVerdict.PASS] * 2
    assert result.skipped == 1
    assert dns_server.count("rsa1024._domainkey.good.example") == 1  # one fetch, shared


async def test_large_message_is_verified_off_the_loop(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(key_zone())
    body = b"".join(
        b"line %06d of a large attachment, base64 would look like this\r\n" % i
        for i in range(40000)
    )
    signed = sign(mail(body=body), canonicalize=(b"relaxed", b"relaxed"))
    verifier = DkimVerifier(dns_resolver, thread_threshold=64 * 1024)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    result = await verifier.verify(signed)
    elapsed = time.perf_counter() - started
    task.cancel()
    [sig] = result.signatures
    assert sig.result is DkimVerdict.PASS
    during = [t for t in ticks if t >= started]
    # The loop kept ticking while the 2.6 MB body was hashed in a thread.
    assert len(during) >= 2 or elapsed < 0.02


async def test_unsigned_message_costs_no_lookup(
    verifier: DkimVerifier, dns_server: DnsTestServer
) -> None:
    result = await verifier.verify(mail())
    assert result.signatures == () and [f.symbol for f in dkim_findings(result)] == ["DKIM_NONE"]
    assert dns_server.queries == []


def test_a_selector_with_an_underscore_is_a_selector() -> None:
    """Real signers use them (s=susede2_rsa); scoring them DKIM_BAD_IDENTITY hit list mail."""
    from gateway.auth.dkim import valid_selector

    assert valid_selector("susede2_rsa") and valid_selector("_a.b")
    assert not valid_selector("a b") and not valid_selector("a@b") and not valid_selector(".a")
