"""TLS pytest fixtures: a trustme CA, a gateway serving STARTTLS, TLS-capable downstreams.

Registered by conftest.py's pytest_plugins; helpers (certificate files, client contexts, the
TLS recording downstream) are in tls_helpers.py.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import RecordingSink, RunningGateway, gateways, make_settings
from tls_helpers import TlsSink, write_cert

from gateway.config import Settings, TlsSettings
from gateway.tls import ServerTls


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def start_tls_gateway(
    tmp_path: Path, ca: trustme.CA, sink: RecordingSink
) -> AsyncIterator[Any]:
    """Start a gateway offering STARTTLS (a trustme certificate for mx.gateway.test).

    `await start_tls_gateway(delivery_port=..., tls={...}, delivery={...})`; the downstream is the
    plain `sink` unless `delivery_port` names another. `settings=` starts exactly those settings.
    """
    async with gateways() as launch_one:

        async def start(
            settings: Settings | None = None, delivery_port: int | None = None, **changes: Any
        ) -> RunningGateway:
            if settings is None:
                cert_file, key_file = write_cert(ca, tmp_path / "tls")
                tls = {"cert_file": cert_file, "key_file": key_file, **changes.pop("tls", {})}
                settings = make_settings(
                    tmp_path, delivery_port or sink.port, tls=TlsSettings(**tls), **changes
                )
            return await launch_one(settings, ServerTls.load(settings.tls))

        yield start


@pytest.fixture
def tls_sinks() -> Iterator[Any]:
    """Start TLS downstreams: `tls_sinks(context, offer_requiretls=False)`; stopped afterwards."""
    started: list[TlsSink] = []

    def start(context: ssl.SSLContext | None, offer_requiretls: bool = False) -> TlsSink:
        sink = TlsSink(context, offer_requiretls)
        sink.start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()
