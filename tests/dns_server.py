"""The loopback DNS server of the tests: gateway.devdns, shared with the bench and demos.

Kept as its own module so tests import `DnsTestServer` from one place; the server itself, its
zone-data conventions and its faults are documented in gateway/devdns.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from gateway.devdns import ANY_TYPE, LoopbackDnsServer, Query, ZoneData

DnsTestServer = LoopbackDnsServer

# Outcomes of the SPF test-suite cases (tests/test_spf_suite.py), suite -> [passed, failed],
# reported at the end of the run by the dns_fixtures plugin.
SPF_SUITE_RESULTS: dict[str, list[int]] = {}


@contextlib.contextmanager
def running_dns_server(zone: ZoneData | None = None) -> Iterator[DnsTestServer]:
    """A started server with `zone` loaded; stopped on exit."""
    server = DnsTestServer().start()
    try:
        if zone:
            server.load(zone)
        yield server
    finally:
        server.stop()


__all__ = ["ANY_TYPE", "SPF_SUITE_RESULTS", "DnsTestServer", "Query", "running_dns_server"]
