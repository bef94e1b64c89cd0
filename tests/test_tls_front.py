"""Inbound STARTTLS over real loopback TLS: smtplib and swaks, the trace it leaves (Received,
quarantine, symbols), protocol versions and ciphers, STARTTLS command injection, certificate
reload."""

from __future__ import annotations

import asyncio
import logging
import shutil
import smtplib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import HARNESS_ORDER, LOOPBACK, REPO, RecordingSink, RunningGateway, message
from tls_helpers import (
    GATEWAY_NAME,
    client_context,
    need_swaks_with_tls,
    write_ca,
    write_cert,
)

from gateway.config import PluginSettings, TlsSettings
from gateway.plugin import ClientInfo, MessageContext, Phase, Services, TlsInfo
from gateway.plugins.tls import TlsSymbols
from gateway.policy import load_rules
from gateway.tls import ServerTls, server_context, weak_cipher


def header_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n")[0].decode()


def smtplib_send_over_tls(
    port: int, context: ssl.SSLContext, to: str = "bob@example.com"
) -> tuple[str, str, int]:
    """smtplib as a sending MTA: EHLO, STARTTLS, EHLO, send; returns (version, cipher, bits)."""
    with smtplib.SMTP(LOOPBACK, port, local_hostname="client.example.net", timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        code, _ = smtp.starttls(context=context)
        assert code == 220
        smtp.ehlo()
        assert not smtp.has_extn("starttls")  # RFC 3207 4.2: not offered again
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        version, cipher = sock.version(), sock.cipher()
        assert version is not None and cipher is not None
        smtp.sendmail("alice@example.net", [to], message(to=to))
    return version, cipher[0], cipher[2]


async def test_starttls_with_smtplib_verifying_the_certificate(
    start_tls_gateway: Any, sink: RecordingSink, ca: trustme.CA
) -> None:
    gw: RunningGateway = await start_tls_gateway()
    context = client_context(ca)  # verifies the chain and the name mx.gateway.test
    context.check_hostname = False  # smtplib connects to 127.0.0.1; the name is checked below
    version, cipher, bits = await asyncio.to_thread(smtplib_send_over_tls, gw.port, context)
    [delivered] = await sink.arrived(1)
    header = header_of(delivered.content)
    received = header.split("\r\nX-Mailgate-ID")[0]
    # RFC 3848: ESMTPS; the negotiated version and cipher, exactly as the client saw them.
    assert "with ESMTPS" in received, received
    assert f"({version}:{cipher}:{bits})" in received, received
    assert version == "TLSv1.3"


async def test_certificate_names_the_gateway_and_verifies_by_name(
    start_tls_gateway: Any, ca: trustme.CA
) -> None:
    gw: RunningGateway = await start_tls_gateway()

    def handshake(name: str) -> None:
        with smtplib.SMTP(LOOPBACK, gw.port, timeout=10) as smtp:
            smtp.ehlo()
            context = client_context(ca)
            smtp._host = name  # type: ignore[attr-defined]  # smtplib passes it as SNI/name
            smtp.starttls(context=context)

    await asyncio.to_thread(handshake, GATEWAY_NAME)
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(handshake, "other.example")


async def test_starttls_with_swaks(
    start_tls_gateway: Any, sink: RecordingSink, ca: trustme.CA, tmp_path: Path
) -> None:
    need_swaks_with_tls()
    gw: RunningGateway = await start_tls_gateway()
    proc = await asyncio.create_subprocess_exec(
        "swaks",
        *("--server", LOOPBACK, "--port", str(gw.port)),
        *("--from", "alice@example.net", "--to", "bob@example.com"),
        *("--helo", "client.example.net", "--tls", "--tls-verify"),
        *("--tls-ca-path", str(write_ca(ca, tmp_path))),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "TLS started" in text, text
    assert "<~  250 2.0.0 OK id=" in text, text  # the reply after DATA, read over TLS
    [delivered] = await sink.arrived(1)
    assert "with ESMTPS" in header_of(delivered.content)


async def test_plaintext_client_is_recorded_as_esmtp(
    start_tls_gateway: Any, sink: RecordingSink
) -> None:
    gw: RunningGateway = await start_tls_gateway()

    def send() -> None:
        with smtplib.SMTP(LOOPBACK, gw.port, local_hostname="client.example.net") as smtp:
            smtp.sendmail("alice@example.net", ["bob@example.com"], message())

    await asyncio.to_thread(send)
    [delivered] = await sink.arrived(1)
    header = header_of(delivered.content)
    assert "with ESMTP id" in header and "ESMTPS" not in header, header
    assert "(TLS" not in header


# -- protocol versions and ciphers ---------------------------------------------------------------


def old_tls_client() -> ssl.SSLContext:
    """A client that offers TLS 1.0 and 1.1 only, and lowers its own OpenSSL security level so
    it is the server's setting (not this client's library) that refuses the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.warns(DeprecationWarning):
        context.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.warns(DeprecationWarning):
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.starttls(context=context)
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        version, cipher = sock.version(), sock.cipher()
        assert version is not None and cipher is not None
        smtp.ehlo()
        return version, cipher[0]


async def test_tls_1_0_and_1_1_are_refused_by_default(
    start_tls_gateway: Any, sink: RecordingSink, caplog: pytest.LogCaptureFixture
) -> None:
    gw: RunningGateway = await start_tls_gateway()
    # The gateway's own setting, whatever OpenSSL's security level would add:
    context = gw.server.tls.context
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert TlsSettings().min_version == "TLSv1.2"
    caplog.set_level(logging.INFO, logger="mailgate.smtp")
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await asyncio.to_thread(handshake, gw.port, old_tls_client())
    # Logged as the client's failure, not as an error of ours with a traceback.
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert failures and all(r.levelno == logging.INFO for r in failures), caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # The gateway is unharmed: the next client negotiates TLS 1.2 or better.
    version, _ = await asyncio.to_thread(handshake, gw.port, client_context())
    assert version in ("TLSv1.2", "TLSv1.3")
    for _ in range(100):  # the refused connection is counted out exactly once
        if gw.gateway.total_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert (gw.gateway.total_connections, gw.gateway.connections) == (0, {})


async def test_tls_1_3_only_when_configured(start_tls_gateway: Any) -> None:
    gw: RunningGateway = await start_tls_gateway(tls={"min_version": "TLSv1.3"})
    tls12 = client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        await asyncio.to_thread(handshake, gw.port, tls12)
    version, _ = await asyncio.to_thread(handshake, gw.port, client_context())
    assert version == "TLSv1.3"


async def test_cipher_setting_is_what_tls_1_2_negotiates(start_tls_gateway: Any) -> None:
    gw: RunningGateway = await start_tls_gateway(tls={"ciphers": "ECDHE+CHACHA20"})
    tls12 = client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher = await asyncio.to_thread(handshake, gw.port, tls12)
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and cipher.endswith("-CHACHA20-POLY1305"), cipher


def test_default_ciphers_are_forward_secret_and_strong(ca: trustme.CA, tmp_path: Path) -> None:
    cert_file, key_file = write_cert(ca, tmp_path)
    context = server_context(TlsSettings(cert_file, key_file))
    assert context is not None
    for cipher in context.get_ciphers():
        name, bits = cipher["name"], cipher["strength_bits"]
        assert not weak_cipher(name, bits), name
        if cipher["protocol"] != "TLSv1.3":
            assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), name  # forward secrecy
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION


# -- STARTTLS command injection (CVE-2011-0411) --------------------------------------------------


def read_reply(sock: socket.socket | ssl.SSLSocket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def nothing_more(sock: ssl.SSLSocket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return True


@pytest.mark.parametrize(
    "injected",
    [
        b"RSET\r\n",
        b"EHLO evil.example\r\nMAIL FROM:<mallory@example.net>\r\n",
    ],
)
async def test_plaintext_pipelined_after_starttls_is_not_honoured(
    start_tls_gateway: Any, sink: RecordingSink, injected: bytes
) -> None:
    gw: RunningGateway = await start_tls_gateway()

    def attack() -> tuple[bytes, bytes, bool]:
        with socket.create_connection((LOOPBACK, gw.port), timeout=5) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert read_reply(raw).startswith(b"220 ")
            raw.sendall(b"EHLO client.example.net\r\n")
            assert b"STARTTLS" in read_reply(raw)
            # STARTTLS and the injected commands in one segment, as a man in the middle sends it.
            raw.sendall(b"STARTTLS\r\n" + injected)
            ready = read_reply(raw)
            with client_context().wrap_socket(raw, server_hostname=GATEWAY_NAME) as tls:
                # The first encrypted command gets the first encrypted reply: nothing left over
                # from plaintext. MAIL first, without EHLO: refused, TLS forgot the old HELO.
                tls.sendall(b"MAIL FROM:<alice@example.net>\r\n")
                first = read_reply(tls)
                quiet = nothing_more(tls)
                tls.sendall(b"QUIT\r\n")
                read_reply(tls)
            return ready, first, quiet

    ready, first, quiet = await asyncio.to_thread(attack)
    assert ready.startswith(b"220 "), ready
    assert ready.count(b"\r\n") == 1, ready  # only STARTTLS was answered in plaintext
    assert first.startswith(b"503 "), first  # "send HELO first": the injected EHLO never counted
    assert quiet, "a reply to an injected command arrived after the handshake"
    assert sink.commands == []  # no injected MAIL reached the delivery server


# -- trace: symbols, quarantine ------------------------------------------------------------------


async def test_tls_symbols_and_quarantine_metadata(
    start_tls_gateway: Any, sink: RecordingSink, ca: trustme.CA, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    with (rules / "actions.toml").open("a") as actions:
        actions.write('TLS_V1_3 = "quarantine"\n')
    order = (*HARNESS_ORDER, "tls")
    gw: RunningGateway = await start_tls_gateway(plugins=PluginSettings(order=order))
    context = client_context(ca)
    context.check_hostname = False
    version, cipher, _ = await asyncio.to_thread(smtplib_send_over_tls, gw.port, context)
    assert sink.delivered == []
    store = gw.gateway.store
    [entry_id] = await asyncio.to_thread(store.ids)
    stored, meta = await asyncio.to_thread(store.get, entry_id)
    assert meta["tls"] == {"version": version, "cipher": cipher}
    assert meta["action"] == "quarantine"
    assert "TLS_V1_3" in [f["symbol"] for f in meta["findings"]]
    assert "with ESMTPS" in header_of(stored)
    assert f"({version}:{cipher}:" in header_of(stored)
    # Without TLS the same policy relays, and says so in the symbols.

    def plain() -> None:
        with smtplib.SMTP(LOOPBACK, gw.port, local_hostname="client.example.net") as smtp:
            smtp.sendmail("alice@example.net", ["bob@example.com"], message())

    await asyncio.to_thread(plain)
    [delivered] = await sink.arrived(1)
    assert "TLS_NONE(0)" in header_of(delivered.content)


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (None, ["TLS_NONE"]),
        (TlsInfo("TLSv1", "ECDHE-RSA-AES128-SHA", 128), ["TLS_V1_0"]),
        (TlsInfo("TLSv1.1", "ECDHE-RSA-AES256-SHA", 256), ["TLS_V1_1"]),
        (TlsInfo("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128), ["TLS_V1_2"]),
        (TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256), ["TLS_V1_3"]),
        (TlsInfo("TLSv1.2", "RC4-SHA", 128), ["TLS_V1_2", "TLS_WEAK_CIPHER"]),
        (TlsInfo("TLSv1.2", "DES-CBC3-SHA", 112), ["TLS_V1_2", "TLS_WEAK_CIPHER"]),
        (TlsInfo("TLSv1.2", "ECDHE-RSA-NULL-SHA", 0), ["TLS_V1_2", "TLS_WEAK_CIPHER"]),
        (TlsInfo("TLSv1", "EXP-RC4-MD5", 40), ["TLS_V1_0", "TLS_WEAK_CIPHER"]),
        (TlsInfo("TLSv1.2", "ADH-AES256-GCM-SHA384", 256), ["TLS_V1_2", "TLS_WEAK_CIPHER"]),
    ],
)
async def test_tls_plugin_symbols(tls: TlsInfo | None, expected: list[str]) -> None:
    from gateway.config import load_settings

    settings = load_settings(None)
    ctx = MessageContext(
        client=ClientInfo(ip="192.0.2.1", port=25, tls=tls),
        rules=load_rules(REPO / "rules"),
        settings=settings,
    )
    findings = await TlsSymbols(Services(settings)).check(Phase.MAIL, ctx)
    assert [f.symbol for f in findings] == expected
    assert all(f.symbol in TlsSymbols.symbols for f in findings)


# -- certificate reload --------------------------------------------------------------------------


def peer_serial(port: int) -> int:
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_context())
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


async def test_reload_swaps_the_certificate_for_new_connections_and_keeps_it_when_broken(
    start_tls_gateway: Any, ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw: RunningGateway = await start_tls_gateway()
    tls = gw.server.tls
    assert isinstance(tls, ServerTls) and tls.settings is not None
    cert_file, key_file = tls.settings.cert_file, tls.settings.key_file
    assert cert_file is not None and key_file is not None
    first = await asyncio.to_thread(peer_serial, gw.port)

    # A renewed certificate at the same paths (what certbot does), then SIGHUP's reload().
    new_cert, new_key = write_cert(ca, tmp_path / "renewed")
    shutil.copy(new_cert, cert_file)
    shutil.copy(new_key, key_file)
    assert tls.reload()
    second = await asyncio.to_thread(peer_serial, gw.port)
    assert second != first

    caplog.set_level(logging.INFO, logger="mailgate.tls")
    # Broken renewals: a truncated certificate, then a key that is not the certificate's.
    cert_file.write_bytes(cert_file.read_bytes()[:200])
    assert not tls.reload()
    assert await asyncio.to_thread(peer_serial, gw.port) == second
    other_cert, _ = write_cert(ca, tmp_path / "other")
    shutil.copy(other_cert, cert_file)  # key_file still holds the renewed key
    assert not tls.reload()
    assert await asyncio.to_thread(peer_serial, gw.port) == second
    refusals = [r for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refusals) == 2 and all(r.levelno == logging.ERROR for r in refusals)
    assert str(cert_file) in refusals[0].getMessage()
