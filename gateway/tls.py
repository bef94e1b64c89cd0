"""TLS on both sides of the gateway: the STARTTLS context we offer, and the one we use toward the
delivery server.

Inbound: `server_context` builds a context from [tls] (certificate chain and key in PEM, TLS 1.2
or 1.3 minimum, a forward-secret cipher list). `ServerTls` holds the live one: every new
connection takes the current context, and `reload()` (on SIGHUP) loads the files into a *fresh*
context and swaps it in only when that worked, so a renewal gone wrong (a truncated file, a key
that does not match) keeps the running certificate and says why in the log.

Outbound: `DeliveryTls` is the [delivery] TLS policy: none, opportunistic or required STARTTLS,
optionally verified against a CA file (chain and host name) or pinned SHA-256 fingerprints.
Required-but-failed is always a 4xx to the client (never a silent downgrade to plaintext), and
a handshake or verification failure is a 4xx in opportunistic mode too: only a server that does
not offer STARTTLS at all is spoken to in plaintext.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import ssl
from dataclasses import dataclass

from gateway.config import DeliverySettings, TlsSettings
from gateway.verdict import SmtpReply

log = logging.getLogger("mailgate.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsReplies:
    """Replies about TLS, with RFC 3463 / RFC 8689 enhanced codes."""

    # RFC 8689 5: the message cannot be relayed with the TLS it demands (the delivery server
    # lacks REQUIRETLS). Refusing REQUIRETLS from a client is policy: rules/actions.toml.
    REQUIRETLS_UNSUPPORTED = SmtpReply(550, "5.7.30", "REQUIRETLS support required")
    # Toward the delivery server (RFC 3463: 4.7.4 security features not supported, 4.7.5
    # cryptographic failure); temporary, so the sender retries and nothing is lost.
    DOWNSTREAM_NO_STARTTLS = SmtpReply(
        451, "4.7.4", "TLS to the delivery server is required but not offered, try again later"
    )
    DOWNSTREAM_TLS_FAILED = SmtpReply(
        451, "4.7.5", "TLS to the delivery server failed, try again later"
    )
    DOWNSTREAM_NOT_VERIFIED = SmtpReply(
        451, "4.7.5", "The delivery server's certificate could not be verified, try again later"
    )


# -- inbound ---------------------------------------------------------------------------------------


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The STARTTLS context for [tls], or None when no certificate is configured.

    Raises OSError or ssl.SSLError (a ValueError for some problems) when the files are unusable.
    """
    if settings.cert_file is None or settings.key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
    context.set_ciphers(settings.ciphers)
    context.verify_mode = ssl.CERT_NONE  # MX clients rarely present certificates
    context.load_cert_chain(settings.cert_file, settings.key_file)
    return context


class ServerTls:
    """The live inbound TLS context; new connections take `context`, SIGHUP calls `reload`."""

    def __init__(self, settings: TlsSettings | None, context: ssl.SSLContext | None) -> None:
        self.settings = settings
        self._context = context

    @classmethod
    def load(cls, settings: TlsSettings) -> ServerTls:
        """Build from settings; a broken certificate at start-up raises (nothing to keep yet)."""
        return cls(settings, server_context(settings))

    @classmethod
    def fixed(cls, context: ssl.SSLContext | None) -> ServerTls:
        """A context made elsewhere, never reloaded (tests, embedding)."""
        return cls(None, context)

    @property
    def context(self) -> ssl.SSLContext | None:
        return self._context

    def install(self, settings: TlsSettings, context: ssl.SSLContext | None) -> None:
        """Swap in a context built elsewhere (a whole-configuration reload, gateway.reload)."""
        self.settings, self._context = settings, context
        if context is not None:
            log.info("TLS certificate reloaded from %s", settings.cert_file)

    def reload(self) -> bool:
        """Load the certificate files again into a fresh context; keep the old one on error."""
        if self.settings is None or self.settings.cert_file is None:
            return True
        try:
            context = server_context(self.settings)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error(
                "TLS certificate reload refused, keeping the running certificate: %s: %s (%s)",
                self.settings.cert_file,
                exc,
                type(exc).__name__,
            )
            return False
        self._context = context
        log.info("TLS certificate reloaded from %s", self.settings.cert_file)
        return True


# -- what was negotiated ---------------------------------------------------------------------------

# Broken or export-grade algorithms; with the default cipher list none can be negotiated.
_WEAK = re.compile(
    r"(^|[-_])(NULL|EXP|EXPORT|RC4|RC2|DES|3DES|DES-CBC3|MD5|ADH|AECDH|anon)($|[-_])"
)


def weak_cipher(name: str, bits: int) -> bool:
    """A cipher suite no one should rely on: under 128 bits, or a broken algorithm in its name."""
    return bits < 128 or _WEAK.search(name) is not None


# -- toward the delivery server --------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryTls:
    """The [delivery] TLS policy with its client context built once."""

    mode: str  # none, opportunistic, required
    context: ssl.SSLContext | None
    server_name: str
    fingerprints: frozenset[str]
    verified: bool  # a CA file or pins: a successful handshake authenticates the server

    def check_peer(self, der: bytes | None) -> str | None:
        """After the handshake: why the peer is not acceptable (a pin mismatch), else None."""
        if not self.fingerprints:
            return None
        if der is None:
            return "the delivery server presented no certificate"
        digest = certificate_fingerprint(der)
        if digest not in self.fingerprints:
            return f"certificate fingerprint sha256:{digest} is not pinned in tls_fingerprints"
        return None


@functools.lru_cache(maxsize=16)
def delivery_tls(settings: DeliverySettings) -> DeliveryTls:
    """Built once per settings: loading a CA bundle for every connection would cost a lot."""
    if settings.tls == "none":
        return DeliveryTls("none", None, settings.host, frozenset(), verified=False)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_ca_file is not None:
        context.load_verify_locations(cafile=str(settings.tls_ca_file))
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:  # unverified (encryption only) or pinned: the pin is checked after the handshake
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return DeliveryTls(
        mode=settings.tls,
        context=context,
        server_name=settings.tls_server_name or settings.host,
        fingerprints=frozenset(settings.tls_fingerprints),
        verified=settings.tls_verified,
    )


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lowercase hex, as [delivery] tls_fingerprints holds it."""
    return hashlib.sha256(der).hexdigest()
