"""A tiny authoritative DNS server on loopback for the bench zone `bench.test` (UDP and TCP).

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
FROM domain is a cache miss at the gateway and a real query here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

ZONE = dns.name.from_text("bench.test.")
SENDERS = dns.name.from_text("senders.bench.test.")
TTL = 300
LOOPBACK = "127.0.0.1"
SENDER_SPF = '"v=spf1 include:_spf.bench.test -all"'
RECORDS: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], str] = {
    (dns.name.from_text("_spf.bench.test."), dns.rdatatype.TXT): '"v=spf1 ip4:127.0.0.0/8 -all"',
    (dns.name.from_text("loadgen.bench.test."), dns.rdatatype.TXT): '"v=spf1 ip4:127.0.0.1 -all"',
    (dns.name.from_text("loadgen.bench.test."), dns.rdatatype.A): "127.0.0.1",
}
KNOWN = {name for name, _ in RECORDS}
# TXT records given with --records (the DKIM key and DMARC policy of the signed part of the mix)
EXTRA_TXT: dict[dns.name.Name, str] = {}
SOA = "ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 60"
OTHER_SOA = "ns.invalid. hostmaster.invalid. 1 3600 600 86400 300"  # negative TTL 300 s

log = logging.getLogger("bench.dnsd")


def answer(wire: bytes) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # garbage on a bench socket: nothing to answer
        return None
    response = dns.message.make_response(query)
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    question = query.question[0]
    name, rdtype = question.name, question.rdtype
    if not name.is_subdomain(ZONE):
        # The bench world has no other DNS: DMARC and DKIM lookups of the corpus's real From
        # domains get "no such name" (DMARC none, DKIM no key), answered fast, never a timeout.
        # With an SOA of the name's parent domain, as any real server sends, so that the answer
        # may be cached for its negative TTL (RFC 2308) like it would be in production.
        log.debug("query outside the bench zone: NXDOMAIN for %s", name)
        response.set_rcode(dns.rcode.NXDOMAIN)
        owner = name.split(3)[1] if len(name) > 3 else name
        response.authority.append(dns.rrset.from_text(owner, TTL, "IN", "SOA", OTHER_SOA))
        return response.to_wire()
    response.flags |= dns.flags.AA
    text = RECORDS.get((name, rdtype))
    if text is None and rdtype == dns.rdatatype.TXT:
        text = EXTRA_TXT.get(name)
    is_sender = name.is_subdomain(SENDERS) and name != SENDERS
    if text is None and is_sender and rdtype == dns.rdatatype.TXT:
        text = SENDER_SPF
    if text is not None:
        response.answer.append(
            dns.rrset.from_text(name, TTL, dns.rdataclass.IN, dns.rdatatype.RdataType(rdtype), text)
        )
    else:
        if not (is_sender or name in KNOWN or name in EXTRA_TXT or name == ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text(ZONE, TTL, "IN", "SOA", SOA))
    return response.to_wire()


class UdpServer(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not a DatagramTransport subclass, but has its interface.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


async def handle_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            reply = answer(await reader.readexactly(size))
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(UdpServer, local_addr=(host, port))
    tcp = await asyncio.start_server(handle_tcp, host, port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    udp.close()
    tcp.close()
    await tcp.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.dnsd", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--records", type=Path, help="JSON file of more TXT records: {name: text} in bench.test"
    )
    args = parser.parse_args(argv)
    if args.records is not None:
        for owner, text in json.loads(args.records.read_text()).items():
            name = dns.name.from_text(owner)
            if not name.is_subdomain(ZONE):
                parser.error(f"{owner}: the bench DNS server serves bench.test only")
            # TXT strings are at most 255 bytes: split long values (DKIM keys)
            EXTRA_TXT[name] = " ".join(f'"{text[i : i + 250]}"' for i in range(0, len(text), 250))
    if args.host != LOOPBACK:
        parser.error("the bench DNS server listens on loopback only")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
