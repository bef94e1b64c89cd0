"""Shared pieces of the DKIM / DMARC / ARC / Authentication-Results tests.

Keys come from the dkimpy test vectors in ../shared/vectors/dkimpy/tests/data; their public halves
are published in the loopback DNS server's zones (tests/dns_server.py). Messages are signed here
with dkimpy itself, then checked by the gateway's own stage over the wire.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import dkim
import nacl.encoding
import nacl.signing
from dns_server import DnsTestServer
from harness import REPO, GatewayFactory, RunningGateway, make_settings

from gateway.config import DnsSettings, PluginSettings

DATA = REPO.parent / "shared" / "vectors" / "dkimpy" / "tests" / "data"
ARC_SUITE = REPO.parent / "shared" / "vectors" / "arc_test_suite" / "tests"
AUTH_ORDER = ("lists", "headers", "limits", "spf", "dkim", "arc", "dmarc")

# The public key of dkimpy's own test for test2.message (Gmail's 2012 selector), as published
# then; it is in dkimpy's test source rather than its data folder.
GMAIL_2012_KEY = (
    "k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1Kd87/UeJjenpabgbFwh"
    "+eBCsSTrqmwIYYvywlbhbqoo2DymndFkbjOVIPIldNs/m40KF+yzMn1skyoxcTUGCQ"
    "s8g3FgD2Ap3ZB5DekAo5wMmk4wimDO+U8QzI3SD07y2+07wlNWwIt8svnxgdxGkVbb"
    "hzY8i+RQ9DpSVpPbF7ykQxtKXkv/ahW3KjViiAH+ghvvIhkx4xYSIc9oSwVmAl5Oct"
    "MEeWUwg8Istjqz8BZeTWbf41fbNhte7Y+YqZOwq1Sd0DbvYAD9NOZK9vlfuac0598H"
    "Y+vtSBczUiKERHv1yRbcaQtZFh5wtiRrN04BLUTD21MycBX5jYchHjPY/wIDAQAB"
)
# dkimpy's 512-bit sample key pair (too weak for RFC 8301), from its test source.
WEAK_PRIVATE = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIIBOwIBAAJBANmBe10IgY+u7h3enWTukkqtUD5PR52Tb/mPfjC0QJTocVBq6Za/
PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQJAYFUKsD+uMlcFu1D3YNaR
EGYGXjJ6w32jYGJ/P072M3yWOq2S1dvDthI3nRT8MFjZ1wHDAYHrSpfDNJ3v2fvZ
cQIhAPgRPmVYn+TGd59asiqG1SZqh+p+CRYHW7B8BsicG5t3AiEA4HYNOohlgWan
8tKgqLJgUdPFbaHZO1nDyBgvV8hvWZUCIQDDdCq6hYKuKeYUy8w3j7cgJq3ih922
2qNWwdJCfCWQbwIgTY0cBvQnNe0067WQIpj2pG7pkHZR6qqZ9SE+AjNTHX0CIQCI
Mgq55Y9MCq5wqzy141rnxrJxTwK9ABo3IAFMWEov3g==
-----END RSA PRIVATE KEY-----
"""
WEAK_PUBLIC = (
    "k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5PR52T"
    "b/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ=="
)


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def crlf(raw: bytes) -> bytes:
    """Line endings as SMTP carries them."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def record(name: str) -> str:
    """A key record file of the vectors as one TXT string."""
    return data(name).decode().strip()


def ed25519_public(seed_file: str) -> str:
    seed = data(seed_file).strip()
    key = nacl.signing.SigningKey(seed, encoder=nacl.encoding.Base64Encoder)
    return base64.b64encode(bytes(key.verify_key)).decode()


RSA1024 = data("test.private")  # public half: test.txt
RSA2048 = data("2048_testkey.key")  # public half: 2048_testkey_wo_markers.pub.txt
ED25519 = data("ed25519test.key")  # public half derived with PyNaCl


def key_zone() -> dict[str, list[tuple[str, str]]]:
    """Every public key of the vectors, at the names their signatures (or ours) use."""
    ed_public = f"v=DKIM1; k=ed25519; p={ed25519_public('ed25519test.key')}"
    return {
        "brisbane._domainkey.football.example.com": [
            ("TXT", f"v=DKIM1; k=ed25519; p={ed25519_public('rfc8032_7_1.key')}")
        ],
        "test._domainkey.football.example.com": [("TXT", record("test.txt"))],
        "sed._domainkey.test.ex": [("TXT", record("eximtest.dns"))],
        "20120113._domainkey.gmail.com": [("TXT", GMAIL_2012_KEY)],
        "rsa1024._domainkey.good.example": [("TXT", record("test.txt"))],
        "rsa2048._domainkey.good.example": [("TXT", record("2048_testkey_wo_markers.pub.txt"))],
        "pkcs8._domainkey.good.example": [("TXT", record("2048_testkey_PKCS8.key.pub.txt"))],
        "bare._domainkey.good.example": [("TXT", record("2048_testkey_wo_markers.pub.rsa.txt"))],
        "ed._domainkey.good.example": [("TXT", ed_public)],
        "weak._domainkey.good.example": [("TXT", WEAK_PUBLIC)],
        "badk._domainkey.good.example": [("TXT", record("badk.txt"))],
        "badversion._domainkey.good.example": [("TXT", record("badversion.txt"))],
        "tlsrpt._domainkey.good.example": [("TXT", record("test_tlsrpt.txt"))],
        "revoked._domainkey.good.example": [("TXT", "v=DKIM1; k=rsa; p=")],
        "sha1only._domainkey.good.example": [
            ("TXT", record("test.txt").replace("k=rsa;", "k=rsa; h=sha1;"))
        ],
        "slow._domainkey.good.example": [("TXT", "TIMEOUT")],
    }


def sign(
    message: bytes,
    selector: str = "rsa2048",
    domain: str = "good.example",
    key: bytes = RSA2048,
    **options: object,
) -> bytes:
    """`message` with a DKIM-Signature prepended (dkimpy)."""
    algorithm = b"ed25519-sha256" if key == ED25519 else b"rsa-sha256"
    kwargs: dict[str, object] = {"signature_algorithm": algorithm, **options}
    header: bytes = dkim.sign(message, selector.encode(), domain.encode(), key, **kwargs)
    return header + message


def mail(
    sender: str = "alice@good.example",
    body: bytes = b"Hello Bob.\r\n",
    extra: bytes = b"",
    from_field: bytes | None = None,
) -> bytes:
    head = from_field if from_field is not None else f"From: Alice <{sender}>\r\n".encode()
    return (
        head + b"To: Bob <bob@example.com>\r\n"
        b"Subject: lunch\r\n"
        b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <auth-1@good.example>\r\n" + extra + b"\r\n" + body
    )


async def start_auth_gateway(
    tmp_path: Path,
    sink_port: int,
    dns_server: DnsTestServer,
    start_gateway: GatewayFactory,
    order: tuple[str, ...] = AUTH_ORDER,
) -> RunningGateway:
    """A gateway with the authentication plugins on, asking only the loopback DNS server."""
    settings = make_settings(tmp_path, sink_port, plugins=PluginSettings(order=order, timeout=5))
    dns = DnsSettings(nameservers=(dns_server.host,), port=dns_server.port, timeout=0.5)
    running: RunningGateway = await start_gateway(settings=dataclasses.replace(settings, dns=dns))
    return running


def header_block(content: bytes) -> str:
    """The header section with folding undone, as text."""
    return (
        content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").decode()
    )


def field_values(content: bytes, name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [
        line.split(":", 1)[1].strip()
        for line in header_block(content).split("\r\n")
        if line.lower().startswith(prefix)
    ]
