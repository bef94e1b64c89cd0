"""The world of `serve --demo` and `serve --dev`: DNS zones on loopback and a sender that signs.

A demo must show what the gateway is for (SPF, DKIM and DMARC passing for a real-looking
sender, and a spoof of a DMARC p=reject domain refused) without anything leaving the machine.
So the gateway's resolver is pointed at a `LoopbackDnsServer` serving these zones, and the demo
sender signs its message with a key made at start-up and published there:

    example.net              SPF: loopback may send for it; DMARC p=reject; a fresh DKIM key
    attacker.example         SPF: loopback may send for it too (so its SPF passes, unaligned)

Every other name answers NXDOMAIN: mail from elsewhere reads SPF/DKIM/DMARC "none".
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import DnsSettings
from gateway.devdns import LOOPBACK, LoopbackDnsServer

SENDER_DOMAIN = "example.net"
SELECTOR = "demo"
SPOOFER_DOMAIN = "attacker.example"
# Workers of `workers = N` are other processes: the supervisor runs the demo DNS server and
# tells them where it is through this variable (set by us, read by `mailgate serve --worker`).
PORT_VARIABLE = "MAILGATE_DEMO_DNS_PORT"
# Who may send for the demo domains: the demo connects over loopback.
LOOPBACK_SENDERS = "ip4:127.0.0.0/8 ip6:::1"

DEMO_MESSAGE = (
    b"From: Demo Sender <demo@example.net>\r\n"
    b"To: Postmaster <postmaster@example.com>\r\n"
    b"Subject: mailgate demo\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <demo@example.net>\r\n"
    b"\r\n"
    b"This message went through mailgate end to end.\r\n"
)

SPOOF_MESSAGE = (
    b"From: Example Billing <billing@example.net>\r\n"
    b"To: Postmaster <postmaster@example.com>\r\n"
    b"Subject: mailgate demo: a spoof of example.net\r\n"
    b"Date: Fri, 27 Nov 2026 10:01:00 +0000\r\n"
    b"Message-ID: <spoof@attacker.example>\r\n"
    b"\r\n"
    b"This one claims to come from example.net, which publishes DMARC p=reject.\r\n"
)


def _fresh_key() -> tuple[bytes, str]:
    """A new RSA 2048 key: the PEM private key and the public half as a DKIM p= value."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(public).decode("ascii")


@dataclass
class DemoWorld:
    """The demo zones on a loopback DNS server, and the demo sender's signing key."""

    server: LoopbackDnsServer = field(default_factory=LoopbackDnsServer)
    private_key: bytes = b""

    def zones(self, public_key: str) -> dict[str, list[tuple[str, Any]]]:
        spf = f"v=spf1 {LOOPBACK_SENDERS} -all"
        return {
            SENDER_DOMAIN: [("TXT", spf), ("MX", (10, f"mx.{SENDER_DOMAIN}"))],
            f"demo.{SENDER_DOMAIN}": [("TXT", spf), ("A", LOOPBACK)],
            f"mx.{SENDER_DOMAIN}": [("A", LOOPBACK)],
            f"{SELECTOR}._domainkey.{SENDER_DOMAIN}": [("TXT", f"v=DKIM1; k=rsa; p={public_key}")],
            f"_dmarc.{SENDER_DOMAIN}": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=r")],
            SPOOFER_DOMAIN: [("TXT", spf)],
            f"mail.{SPOOFER_DOMAIN}": [("TXT", spf), ("A", LOOPBACK)],
        }

    def start(self) -> DemoWorld:
        self.private_key, public_key = _fresh_key()
        self.server.load(self.zones(public_key))
        self.server.soa_for_every_domain(300)  # negative answers cacheable, as in real DNS
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def dns_settings(self, configured: DnsSettings) -> DnsSettings:
        """The configured [dns] with its servers replaced by the demo server."""
        return demo_dns_settings(configured, self.server.port)

    def signed_message(self) -> bytes:
        """The demo message with a DKIM signature of example.net (aligned with its From)."""
        signature: bytes = dkim.sign(
            DEMO_MESSAGE,
            SELECTOR.encode(),
            SENDER_DOMAIN.encode(),
            self.private_key,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return signature + DEMO_MESSAGE


def demo_dns_settings(configured: DnsSettings, port: int) -> DnsSettings:
    return DnsSettings(
        nameservers=(LOOPBACK,),
        port=port,
        timeout=configured.timeout,
        cache_size=configured.cache_size,
    )


def advertise(world: DemoWorld) -> None:
    """Tell worker processes started after this where the demo DNS server listens."""
    os.environ[PORT_VARIABLE] = str(world.server.port)


def advertised_port() -> int | None:
    value = os.environ.get(PORT_VARIABLE, "")
    return int(value) if value.isdigit() else None
