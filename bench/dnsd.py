"""The bench's DNS server on loopback: the zone `bench.test` served by gateway.devdns (UDP and TCP).

Run as its own process (`python3 -m bench.dnsd --port P`) so the gateway's DNS checks (SPF today)
run over the wire exactly as in production, without a query leaving the machine and without its
CPU being counted against the gateway. It serves synthetic data only, never anything from the
corpus:

    <anything>.senders.bench.test  TXT "v=spf1 include:_spf.bench.test -all"   (envelope senders)
    _spf.bench.test                TXT "v=spf1 ip4:127.0.0.0/8 -all"           (the "provider")
    loadgen.bench.test             TXT "v=spf1 ip4:127.0.0.1 -all", A 127.0.0.1 (the HELO name)

Other names under bench.test are NXDOMAIN, known names asked for another type are NODATA (both
with an SOA, so they may be cached); a name outside bench.test is NXDOMAIN too, with an SOA of
its parent domain (negative TTL 300 s) (the DMARC and
DKIM lookups of the corpus's real From domains: this world has no other DNS). Each load-generator
message uses its own sender domain (bench.load.sender_domain), so every SPF check of the MAIL
FROM domain is a cache miss at the gateway and a real query here. The server is the one the
tests use (gateway.devdns), so the bench and the tests cannot answer the same query differently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.devdns import LoopbackDnsServer

ZONE = "bench.test"
TTL = 300
LOOPBACK = "127.0.0.1"
SENDER_SPF = "v=spf1 include:_spf.bench.test -all"
RECORDS: dict[str, list[tuple[str, str]]] = {
    "*.senders.bench.test": [("TXT", SENDER_SPF)],
    "_spf.bench.test": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
    "loadgen.bench.test": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("A", "127.0.0.1")],
}

log = logging.getLogger("bench.dnsd")


def bench_server(extra_txt: Mapping[str, str] | None = None) -> LoopbackDnsServer:
    """The bench world: RECORDS and `extra_txt` in bench.test (negative TTL 60 s there), every
    other name NXDOMAIN with an SOA of its parent domain (negative TTL 300 s)."""
    server = LoopbackDnsServer(host=LOOPBACK, default_ttl=TTL)
    server.load(RECORDS)
    server.load({owner: [("TXT", text)] for owner, text in (extra_txt or {}).items()})
    server.soa(ZONE, minimum=60, ttl=TTL)
    server.soa_for_every_domain(minimum=300)
    return server


async def serve(server: LoopbackDnsServer, port: int) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(server.serve(port))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.dnsd", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--records", type=Path, help="JSON file of more TXT records: {name: text} in bench.test"
    )
    args = parser.parse_args(argv)
    extra: dict[str, str] = {}
    if args.records is not None:
        for owner, text in json.loads(args.records.read_text()).items():
            name = owner.lower().rstrip(".")
            if name != ZONE and not name.endswith("." + ZONE):
                parser.error(f"{owner}: the bench DNS server serves bench.test only")
            extra[name] = text  # long values (DKIM keys) are split into 255-byte strings
    if args.host != LOOPBACK:
        parser.error("the bench DNS server listens on loopback only")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(bench_server(extra), args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
