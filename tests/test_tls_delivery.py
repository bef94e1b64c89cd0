"""TLS toward the delivery server, and REQUIRETLS (RFC 8689) end to end.

A real TLS-capable downstream (aiosmtpd with STARTTLS, tls_helpers.TlsSink) on loopback; the
gateway's reply is checked for each case: verified by CA or by pinned fingerprint, verification
failed, a server without STARTTLS (required: 451 4.7.4; opportunistic: plaintext), never a silent
downgrade. The downstream connects at MAIL, so that is where a TLS failure is answered.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from harness import LOOPBACK, RunningGateway, message
from tls_helpers import TlsSink, client_context, sink_server_context, write_ca

from gateway.config import DeliverySettings
from gateway.relay import Downstream
from gateway.tls import certificate_fingerprint, delivery_tls

SinkFactory = Callable[..., TlsSink]


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    """A CA the gateway does not trust."""
    return trustme.CA()


def fingerprint_of(port: int) -> str:
    """The SHA-256 of the certificate a downstream presents, read off a real handshake."""
    import smtplib

    with smtplib.SMTP(LOOPBACK, port, timeout=5) as smtp:
        smtp.starttls(context=client_context())
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
    return certificate_fingerprint(der)


async def send(
    gw: RunningGateway,
    *,
    tls: bool = True,
    ca: trustme.CA | None = None,
    options: tuple[str, ...] = (),
) -> tuple[int, str]:
    """One message through the gateway; the reply that decided it (MAIL's if refused there)."""
    async with aiosmtplib.SMTP(
        hostname=gw.host,
        port=gw.port,
        start_tls=False,
        local_hostname="client.example.net",
        tls_context=client_context(ca),
    ) as smtp:
        await smtp.ehlo()
        if tls:
            await smtp.starttls(server_hostname="mx.gateway.test")
            await smtp.ehlo()
        reply = await smtp.execute_command(
            b"MAIL", b"FROM:<alice@example.net>", *[o.encode() for o in options]
        )
        if reply.code != 250:  # without the queue id, which changes every time
            return reply.code, re.sub(r" \(id=[0-9A-F]+\)$", "", reply.message)
        await smtp.rcpt("bob@example.com")
        data = await smtp.data(message())
        return data.code, data.message


# -- verified, failed verification, no STARTTLS ---------------------------------------------------


async def test_required_tls_verified_by_ca_file(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA, tmp_path: Path
) -> None:
    downstream = tls_sinks(sink_server_context(ca))
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": "required", "tls_ca_file": write_ca(ca, tmp_path)},
    )
    code, text = await send(gw)
    assert code == 250 and text.startswith("2.0.0 OK id="), text
    [record] = downstream.records
    assert record.tls_version == "TLSv1.3"
    assert len(await downstream.arrived(1)) == 1


async def test_verified_by_name_given_in_tls_server_name(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA, tmp_path: Path
) -> None:
    downstream = tls_sinks(sink_server_context(ca, "postfix.internal.test"))
    delivery = {"tls": "required", "tls_ca_file": write_ca(ca, tmp_path)}
    # Connecting to 127.0.0.1, the certificate names another host: not verified.
    gw: RunningGateway = await start_tls_gateway(delivery_port=downstream.port, delivery=delivery)
    assert await send(gw) == (
        451,
        "4.7.5 The delivery server's certificate could not be verified, try again later",
    )
    assert downstream.commands == []
    # Told the name to expect, it verifies.
    gw = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={**delivery, "tls_server_name": "postfix.internal.test"},
    )
    assert (await send(gw))[0] == 250
    assert downstream.records[0].tls_version is not None


@pytest.mark.parametrize("mode", ["required", "opportunistic"])
async def test_failed_verification_is_a_4xx_never_a_downgrade(
    start_tls_gateway: Any,
    tls_sinks: SinkFactory,
    ca: trustme.CA,
    other_ca: trustme.CA,
    tmp_path: Path,
    mode: str,
) -> None:
    downstream = tls_sinks(sink_server_context(other_ca))  # signed by a CA we do not trust
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": mode, "tls_ca_file": write_ca(ca, tmp_path)},
    )
    code, text = await send(gw)
    assert (code, text.split(" ")[0]) == (451, "4.7.5"), text
    assert downstream.commands == []  # not even MAIL went out, in clear or otherwise
    assert downstream.delivered == []


async def test_pinned_fingerprint(
    start_tls_gateway: Any, tls_sinks: SinkFactory, other_ca: trustme.CA
) -> None:
    downstream = tls_sinks(sink_server_context(other_ca))  # no CA needed with a pin
    pin = fingerprint_of(downstream.port)
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port, delivery={"tls": "required", "tls_fingerprints": (pin,)}
    )
    assert (await send(gw))[0] == 250
    assert downstream.records[0].tls_version == "TLSv1.3"
    # A different pin: the same server is refused.
    wrong = ("0" * 64,)
    gw = await start_tls_gateway(
        delivery_port=downstream.port, delivery={"tls": "required", "tls_fingerprints": wrong}
    )
    code, text = await send(gw)
    assert (code, text.split(" ")[0]) == (451, "4.7.5"), text
    assert len(downstream.delivered) == 1


async def test_required_tls_to_a_server_without_starttls_is_451(
    start_tls_gateway: Any, tls_sinks: SinkFactory
) -> None:
    downstream = tls_sinks(None)  # no STARTTLS offered
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port, delivery={"tls": "required"}
    )
    assert await send(gw) == (
        451,
        "4.7.4 TLS to the delivery server is required but not offered, try again later",
    )
    assert downstream.commands == [] and downstream.delivered == []


async def test_opportunistic_tls_to_a_server_without_starttls_is_plain(
    start_tls_gateway: Any, tls_sinks: SinkFactory
) -> None:
    downstream = tls_sinks(None)
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port, delivery={"tls": "opportunistic"}
    )
    assert (await send(gw))[0] == 250
    assert downstream.records[0].tls_version is None


async def test_opportunistic_tls_when_offered_encrypts_without_verifying(
    start_tls_gateway: Any, tls_sinks: SinkFactory, other_ca: trustme.CA
) -> None:
    downstream = tls_sinks(sink_server_context(other_ca))
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port, delivery={"tls": "opportunistic"}
    )
    assert (await send(gw, tls=False))[0] == 250
    assert (await send(gw, tls=False))[0] == 250
    assert [r.tls_version for r in downstream.records] == ["TLSv1.3", "TLSv1.3"]


async def test_tls_none_never_starts_tls(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA
) -> None:
    downstream = tls_sinks(sink_server_context(ca))
    gw: RunningGateway = await start_tls_gateway(delivery_port=downstream.port)
    assert gw.settings.delivery.tls == "none"
    assert (await send(gw))[0] == 250
    assert downstream.records[0].tls_version is None


async def test_one_downstream_tls_connection_serves_several_transactions(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA, tmp_path: Path
) -> None:
    downstream = tls_sinks(sink_server_context(ca))
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": "required", "tls_ca_file": write_ca(ca, tmp_path)},
    )
    async with aiosmtplib.SMTP(hostname=gw.host, port=gw.port, start_tls=False) as smtp:
        for n in range(3):
            await smtp.sendmail("alice@example.net", ["bob@example.com"], message(f"m{n}"))
    assert [r.tls_version for r in downstream.records] == ["TLSv1.3"] * 3
    assert downstream.handshakes == 1


def test_delivery_tls_context_is_built_once_per_settings(tmp_path: Path, ca: trustme.CA) -> None:
    settings = DeliverySettings(tls="required", tls_ca_file=write_ca(ca, tmp_path))
    assert delivery_tls(settings) is delivery_tls(settings)
    first, second = Downstream(settings, "gw"), Downstream(settings, "gw")
    assert first.tls is second.tls
    assert first.tls.verified and first.tls.context is not None
    assert first.tls.context.verify_mode == ssl.CERT_REQUIRED and first.tls.context.check_hostname


# -- REQUIRETLS (RFC 8689) -----------------------------------------------------------------------


async def ehlo_keywords(gw: RunningGateway, tls: bool) -> set[str]:
    async with aiosmtplib.SMTP(
        hostname=gw.host, port=gw.port, start_tls=False, tls_context=client_context()
    ) as smtp:
        await smtp.ehlo()
        if tls:
            await smtp.starttls()
            await smtp.ehlo()
        return {k.upper() for k in smtp.esmtp_extensions}


@pytest.fixture
async def requiretls_gateway(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA, tmp_path: Path
) -> tuple[RunningGateway, TlsSink]:
    """Verified TLS to a downstream that offers REQUIRETLS: everything RFC 8689 needs."""
    downstream = tls_sinks(sink_server_context(ca), offer_requiretls=True)
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": "required", "tls_ca_file": write_ca(ca, tmp_path)},
    )
    return gw, downstream


async def test_requiretls_is_offered_only_inside_tls(
    requiretls_gateway: tuple[RunningGateway, TlsSink],
) -> None:
    gw, _ = requiretls_gateway
    assert "REQUIRETLS" not in await ehlo_keywords(gw, tls=False)
    assert "REQUIRETLS" in await ehlo_keywords(gw, tls=True)


async def test_requiretls_is_not_offered_without_verified_delivery(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA
) -> None:
    downstream = tls_sinks(sink_server_context(ca), offer_requiretls=True)
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": "required"},  # encrypted, not verified
    )
    assert "REQUIRETLS" not in await ehlo_keywords(gw, tls=True)
    # A client that asks anyway is refused as RFC 8689 says, before anything is relayed.
    assert await send(gw, options=("REQUIRETLS",)) == (550, "5.7.30 REQUIRETLS support required")
    assert downstream.commands == []


async def test_requiretls_message_is_relayed_over_verified_tls_and_passed_on(
    requiretls_gateway: tuple[RunningGateway, TlsSink],
) -> None:
    gw, downstream = requiretls_gateway
    code, text = await send(gw, options=("REQUIRETLS",))
    assert code == 250, text
    [record] = downstream.records
    assert record.tls_version == "TLSv1.3"
    assert "REQUIRETLS" in record.mail_options


async def test_requiretls_without_tls_is_530(
    requiretls_gateway: tuple[RunningGateway, TlsSink],
) -> None:
    gw, downstream = requiretls_gateway
    code, text = await send(gw, tls=False, options=("REQUIRETLS",))
    assert (code, text) == (
        530,
        "5.7.0 Must issue a STARTTLS command first (REQUIRETLS asks for TLS)",
    )
    assert downstream.commands == []


async def test_requiretls_with_a_value_is_a_syntax_error(
    requiretls_gateway: tuple[RunningGateway, TlsSink],
) -> None:
    gw, _ = requiretls_gateway
    code, _ = await send(gw, options=("REQUIRETLS=YES",))
    assert code == 501


async def test_requiretls_refused_when_the_delivery_server_lacks_it(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA, tmp_path: Path
) -> None:
    downstream = tls_sinks(sink_server_context(ca), offer_requiretls=False)
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": "required", "tls_ca_file": write_ca(ca, tmp_path)},
    )
    assert await send(gw, options=("REQUIRETLS",)) == (550, "5.7.30 REQUIRETLS support required")
    assert not any(c.startswith("MAIL") for c in downstream.commands)
    # The same connection still carries ordinary mail.
    assert (await send(gw))[0] == 250


async def test_requiretls_never_rides_an_opportunistic_plaintext_connection(
    start_tls_gateway: Any, tls_sinks: SinkFactory, ca: trustme.CA, tmp_path: Path
) -> None:
    downstream = tls_sinks(None)  # no STARTTLS: opportunistic mode talks plaintext
    gw: RunningGateway = await start_tls_gateway(
        delivery_port=downstream.port,
        delivery={"tls": "opportunistic", "tls_ca_file": write_ca(ca, tmp_path)},
    )
    assert await send(gw, options=("REQUIRETLS",)) == (550, "5.7.30 REQUIRETLS support required")
    assert (await send(gw))[0] == 250  # ordinary mail goes in clear, as configured
    assert [r.tls_version for r in downstream.records] == [None]
