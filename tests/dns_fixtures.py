"""pytest fixtures for DNS: a real DNS server on loopback and the gateway's resolver pointed at it.

Enable with `pytest_plugins = ("harness", "dns_fixtures")` in tests/conftest.py (or import the
fixtures into a test module). Nothing here ever sends a packet off loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from dns_server import SPF_SUITE_RESULTS, DnsTestServer

from gateway.config import DnsSettings
from gateway.dns import Resolver

TEST_DNS_TIMEOUT = 1.5  # seconds per query: simulated timeouts stay fast, yet a loaded
# 2-core machine (the test server is a thread of the busy test process) still answers within it


@pytest.fixture
def dns_server() -> Iterator[DnsTestServer]:
    """A started DNS server on 127.0.0.1:<ephemeral port>, empty; tests load their zones."""
    server = DnsTestServer().start()
    try:
        yield server
    finally:
        server.stop()


def dns_settings_for(server: DnsTestServer, timeout: float = TEST_DNS_TIMEOUT) -> DnsSettings:
    """The [dns] settings that point a gateway at `server`."""
    return DnsSettings(nameservers=(server.host,), port=server.port, timeout=timeout)


@pytest.fixture
async def dns_resolver(dns_server: DnsTestServer) -> AsyncIterator[Resolver]:
    """The gateway's resolver, asking only `dns_server`, with a short timeout."""
    resolver = Resolver.from_settings(dns_settings_for(dns_server))
    yield resolver
    await resolver.aclose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report the SPF suites' pass counts at the end of the run."""
    for suite, (passed, failed) in sorted(SPF_SUITE_RESULTS.items()):
        terminalreporter.write_line(
            f"SPF test suite {suite}: {passed} of {passed + failed} cases passed"
            + (f", {failed} failed" if failed else "")
        )
