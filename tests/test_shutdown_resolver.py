"""The shared DNS resolver is closed when the server stops: no lookup task, socket or warning
outlives the gateway (pytest turns any ResourceWarning into an error, see pyproject.toml)."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from pathlib import Path

from harness import RecordingSink, make_settings

from gateway.app import Gateway
from gateway.config import DnsSettings
from gateway.server import GatewayServer


async def test_stop_cancels_lookups_in_flight_and_leaks_nothing(
    tmp_path: Path, sink: RecordingSink
) -> None:
    # A "nameserver" that never answers: the lookup below stays in flight until closed.
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", 0))
    try:
        port = blackhole.getsockname()[1]
        dns = DnsSettings(nameservers=("127.0.0.1",), port=port, timeout=30.0)
        gateway = Gateway.create(make_settings(tmp_path, sink.port, dns=dns))
        assert gateway.services is not None
        resolver = gateway.services.resolver
        server = GatewayServer(gateway)
        await server.start()
        lookup = asyncio.ensure_future(resolver.query("slow.example", "TXT"))
        for _ in range(100):  # until the query has left (the nameserver got a datagram)
            await asyncio.sleep(0.01)
            if resolver.stats().queries or resolver.stats().misses:
                break
        assert not lookup.done()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await asyncio.wait_for(server.stop(grace=0.5), timeout=5)
            await asyncio.sleep(0)
            assert lookup.done()
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert not resolver._inflight
        pending = [
            t
            for t in asyncio.all_tasks()
            if t is not asyncio.current_task() and "_fetch" in repr(t.get_coro())
        ]
        assert not pending
        lookup.cancel()
    finally:
        blackhole.close()


async def test_stop_without_services_is_fine(tmp_path: Path, sink: RecordingSink) -> None:
    gateway = Gateway.create(make_settings(tmp_path, sink.port))
    gateway.services = None  # a Gateway built by hand, without shared services
    server = GatewayServer(gateway)
    await server.start()
    await server.stop(grace=0.1)  # must not raise for want of a resolver to close
    assert gateway.shutting_down
    assert server.protocols == set()
