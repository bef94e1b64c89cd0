"""TLS test helpers: certificate files from a trustme CA, client contexts, and a recording
downstream that speaks STARTTLS (and REQUIRETLS) so the delivery side can be tested for real.

Everything stays on loopback. `TlsSink` is harness.RecordingSink with an ssl context for
aiosmtpd's STARTTLS; it records, for every message it accepted, whether it came over TLS and
with which MAIL parameters (REQUIRETLS among them). The pytest fixtures are in tls_fixtures.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException
from harness import LOOPBACK, RecordingSink

from gateway.devsink import SinkController, SinkSMTP

GATEWAY_NAME = "mx.gateway.test"


def need_swaks_with_tls() -> None:
    """swaks does TLS through Net::SSLeay, only a Recommends of Debian's swaks package.

    Skipped on a developer machine without them; in CI (which installs both) a failure.
    """
    problem = None
    if shutil.which("swaks") is None:
        problem = "swaks is not installed (apt-get install swaks)"
    elif subprocess.run(["perl", "-MNet::SSLeay", "-e1"], capture_output=True).returncode:
        problem = "swaks has no TLS: Net::SSLeay missing (apt-get install libnet-ssleay-perl)"
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


def write_cert(
    ca: trustme.CA, directory: Path, *names: str, stem: str = "gateway"
) -> tuple[Path, Path]:
    """A certificate (full chain) and key from `ca` for `names`, as PEM files."""
    cert = ca.issue_cert(*(names or (GATEWAY_NAME,)))
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return cert_file, key_file


def write_ca(ca: trustme.CA, directory: Path) -> Path:
    path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def client_context(ca: trustme.CA | None = None) -> ssl.SSLContext:
    """What a verifying sender would use (trusting `ca`); without `ca`, no verification."""
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# -- a downstream that speaks STARTTLS ---------------------------------------------------------


@dataclass
class TlsRecord:
    """How one accepted message reached the downstream."""

    tls_version: str | None
    mail_options: list[str]


class _TlsSinkSMTP(SinkSMTP):
    """The recording server, accepting the REQUIRETLS MAIL parameter when it offers it."""

    _in_mail = False

    def connection_made(self, transport: Any) -> None:
        handler: TlsSink = self.event_handler
        handler.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        handler: TlsSink = self.event_handler
        handler.live.discard(self)
        super().connection_lost(error)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result: dict[str, str | bool] | None = super()._getparams(params)
        handler: TlsSink = self.event_handler
        if result is not None and self._in_mail and handler.offer_requiretls:
            result.pop("REQUIRETLS", None)
        return result


class _TlsSinkController(SinkController):
    protocol = _TlsSinkSMTP


class TlsSink(RecordingSink):
    """harness.RecordingSink with STARTTLS from `context` (None: no STARTTLS at all)."""

    controller_class = _TlsSinkController

    def __init__(self, context: ssl.SSLContext | None, offer_requiretls: bool = False) -> None:
        super().__init__()
        self.context = context
        self.offer_requiretls = offer_requiretls
        self.records: list[TlsRecord] = []
        self.handshakes = 0
        self.live: set[SMTP] = set()

    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        self.handshakes += 1
        return True

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            return "454 4.7.0 TLS handshake failed"  # the gateway gave up on our certificate
        raise error  # anything else: aiosmtpd's own report

    def ehlo_changes(self, session: Session) -> tuple[list[str], set[str]]:
        add, drop = super().ehlo_changes(session)
        if self.offer_requiretls and session.ssl is not None:
            add = [*add, "REQUIRETLS"]
        return add, drop

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply: str = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            ssl_object = (session.ssl or {}).get("ssl_object")
            version = ssl_object.version() if ssl_object is not None else None
            self.records.append(TlsRecord(version, list(envelope.mail_options)))
        return reply

    def controller_options(self) -> dict[str, Any]:
        return {"tls_context": self.context} if self.context else {}

    def stop(self) -> None:
        """Close what is still connected first: the gateway's side of a TLS connection may
        outlive the test by an SSL shutdown, and aiosmtpd's controller closes its loop without
        closing live transports (a ResourceWarning, an error under -W error)."""
        if self.controller is not None and self.live:

            async def close_all() -> None:
                for protocol in list(self.live):
                    if isinstance(protocol.transport, asyncio.Transport):
                        protocol.transport.abort()
                for _ in range(50):
                    if not self.live:
                        break
                    await asyncio.sleep(0.01)

            asyncio.run_coroutine_threadsafe(close_all(), self.controller.loop).result(5)
        super().stop()


def sink_server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """The downstream's own certificate, from `ca`, for `names` (default: 127.0.0.1)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or (LOOPBACK,))).configure_cert(context)
    return context
