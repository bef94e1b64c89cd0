"""A small DNS server on loopback that answers from zone data: for tests, the bench and demos.

SPF, DKIM and DMARC code runs against it over the wire exactly as in production: the gateway's
resolver sends real packets to 127.0.0.1:<port> and parses real answers, over UDP and TCP on the
same port. It is one server for three users, so they cannot drift apart: the test suite
(tests/dns_server.py, tests/dns_fixtures.py) runs it in a background thread, the bench runs it as
its own process (bench/dnsd.py), and a `serve --demo` can serve a demo zone with it. It uses
dnspython only (a dependency of the product), and answers in its own event loop, so a delayed
answer never holds up another query. Zones are Python data::

    server.load({
        "example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all"), ("MX", (10, "mx.example.com"))],
        "mx.example.com": [("A", "192.0.2.25"), ("AAAA", "2001:db8::25")],
        "*.users.example.com": [("TXT", "v=spf1 -all")],  # any name below that has none itself
        "slow.example.com": ["TIMEOUT"],           # every type it has no records of times out
    })
    server.timeout("example.net", "TXT")           # no answer, for one type or all
    server.servfail("example.org")                 # SERVFAIL
    server.soa("example.com", minimum=60)          # negative answers carry this SOA

or the RFC 7208 test suite's zone data (`load_spf_suite`), with its conventions: SPF records are
also served as TXT unless the name has TXT records of its own, "NONE" means no record of that
type, a bare TIMEOUT makes every other type time out, and `TYPE: TIMEOUT` makes that type time out.

CNAMEs are followed inside the zone data, as a recursive resolver would do, so answers carry the
whole chain. A name with records or names below it and no record of the asked type is NODATA
(RFC 8020), any other NXDOMAIN. A UDP answer larger than the client's EDNS size (512 bytes without
EDNS) is sent truncated, so the client retries over TCP. Every query is recorded in `queries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SPF import SPF
from dns.rdtypes.ANY.TXT import TXT

LOOPBACK = "127.0.0.1"
ANY_TYPE = "*"
MAX_CHAIN = 10
RECORD_TYPES = ("A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME", "NS")

ZoneData = Mapping[str, Iterable[tuple[str, Any] | str]]


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _txt_chunks(value: Any) -> list[bytes]:
    """A TXT value as character-strings of at most 255 bytes (str is UTF-8 encoded)."""
    parts = [value] if isinstance(value, str | bytes) else list(value)
    out: list[bytes] = []
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        if not data:
            out.append(b"")
        while data:
            out.append(data[:255])
            data = data[255:]
    return out or [b""]  # a TXT RR has at least one character-string (RFC 1035 3.3.14)


def _literal_name(name: str) -> dns.name.Name:
    """A name whose labels are taken literally: no master-file escapes, odd octets kept."""
    labels = [label.encode("utf-8") for label in _norm(name).split(".") if label]
    return dns.name.Name([*labels, b""])


@dataclass(frozen=True)
class Query:
    name: str
    rtype: str
    protocol: str


@dataclass
class _Name:
    records: list[tuple[str, Any, int]] = field(default_factory=list)
    timeout_types: set[str] = field(default_factory=set)
    servfail_types: set[str] = field(default_factory=set)
    timeout_unlisted: bool = False  # the RFC 7208 suite's bare TIMEOUT
    delay: float = 0.0


class LoopbackDnsServer:
    """An authoritative-and-recursive-looking DNS server on loopback, answering zone data."""

    def __init__(self, host: str = LOOPBACK, default_ttl: int = 300) -> None:
        self.host = host
        self.port = 0
        self.default_ttl = default_ttl
        self.queries: list[Query] = []
        self.negative_soa_everywhere: int | None = None  # see `soa_for_every_domain`
        self._names: dict[str, _Name] = {}
        self._soas: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # -- zone data ----------------------------------------------------------------------------

    def _name(self, name: str) -> _Name:
        return self._names.setdefault(_norm(name), _Name())

    def add(self, name: str, rtype: str, value: Any, ttl: int | None = None) -> None:
        """One record: A/AAAA address, MX (preference, exchange), TXT/SPF text(s), PTR/CNAME/NS."""
        rtype = rtype.upper()
        if rtype not in RECORD_TYPES:
            raise ValueError(f"unsupported record type {rtype}")
        with self._lock:
            self._name(name).records.append(
                (rtype, value, self.default_ttl if ttl is None else ttl)
            )

    def load(self, zone: ZoneData) -> None:
        """Records by name; the entry "TIMEOUT" makes every type the name lacks time out."""
        for name, records in zone.items():
            self._name(name)
            for record in records:
                if isinstance(record, str):  # the only bare entry is "TIMEOUT"
                    if record != "TIMEOUT":
                        raise ValueError(f"{name}: {record!r} is not a (type, value) record")
                    self._name(name).timeout_unlisted = True
                    continue
                rtype, value = record
                if value == "TIMEOUT":
                    self.timeout(name, rtype)
                else:
                    self.add(name, rtype, value)

    def load_spf_suite(self, zonedata: Mapping[str, Sequence[Any]]) -> None:
        """Zone data of the RFC 4408/7208 test suites (YAML, as loaded by yaml.safe_load)."""
        for name, entries in zonedata.items():
            has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
            node = self._name(name)
            for entry in entries:
                if entry == "TIMEOUT":
                    # Records after a bare TIMEOUT are never reached by the suite's own driver.
                    node.timeout_unlisted = True
                    break
                for rtype, value in entry.items():
                    if value == "TIMEOUT":
                        self.timeout(name, rtype)
                        continue
                    if value == "NONE":
                        continue
                    if rtype == "MX":
                        value = (int(value[0]), str(value[1]))
                    self.add(name, rtype, value)
                    if rtype == "SPF" and not has_txt:
                        self.add(name, "TXT", value)

    def timeout(self, name: str, rtype: str = ANY_TYPE) -> None:
        """Never answer queries for `name` (for one type, or all)."""
        with self._lock:
            self._name(name).timeout_types.add(rtype.upper())

    def servfail(self, name: str, rtype: str = ANY_TYPE) -> None:
        """Answer SERVFAIL for `name` (for one type, or all)."""
        with self._lock:
            self._name(name).servfail_types.add(rtype.upper())

    def delay(self, name: str, seconds: float) -> None:
        """Answer queries for `name`, but only after `seconds`."""
        with self._lock:
            self._name(name).delay = seconds

    def soa(self, apex: str, minimum: int = 300, ttl: int = 300) -> None:
        """Negative answers for names at or below `apex` carry this SOA (RFC 2308)."""
        with self._lock:
            self._soas[_norm(apex)] = (ttl, minimum)

    def soa_for_every_domain(self, minimum: int = 300) -> None:
        """Negative answers for names under no `soa` apex carry an SOA of their last two labels,
        as the real parent zone would send, so resolvers may cache them (the bench's world)."""
        self.negative_soa_everywhere = minimum

    def clear(self) -> None:
        """Forget every record, fault and recorded query."""
        with self._lock:
            self._names.clear()
            self._soas.clear()
            self.queries.clear()

    def count(self, name: str, rtype: str | None = None) -> int:
        """How many queries for `name` (and `rtype`) arrived."""
        n = _norm(name)
        return sum(1 for q in self.queries if q.name == n and (rtype is None or q.rtype == rtype))

    # -- answering ----------------------------------------------------------------------------

    def answer(self, wire: bytes, protocol: str) -> tuple[bytes | None, float]:
        """The wire reply to one request (None: stay silent) and how long to wait first."""
        try:
            request = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, struct.error, IndexError):
            return None, 0.0
        if len(request.question) != 1:
            return None, 0.0
        question = request.question[0]
        # The labels as sent, not to_text(): that escapes spaces and other odd octets.
        qname = ".".join(
            label.decode("utf-8", "replace") for label in question.name.labels if label
        ).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        reply = dns.message.make_response(request)
        reply.flags |= dns.flags.AA | dns.flags.RA
        with self._lock:
            self.queries.append(Query(qname, qtype, protocol))
            node = self._names.get(qname)
            delay = node.delay if node else 0.0
            if node is not None and (
                qtype in node.timeout_types
                or ANY_TYPE in node.timeout_types
                or (node.timeout_unlisted and not any(r[0] == qtype for r in node.records))
            ):
                return None, 0.0
            if node is not None and (
                qtype in node.servfail_types or ANY_TYPE in node.servfail_types
            ):
                reply.set_rcode(dns.rcode.SERVFAIL)
                return reply.to_wire(), delay
            self._resolve(reply, qname, qtype)
        data = reply.to_wire(max_size=65535)  # make_response caps it at the EDNS size: see below
        if protocol == "udp":
            limit = max(512, request.payload) if request.edns >= 0 else 512
            if len(data) > limit:
                truncated = dns.message.make_response(request)
                truncated.flags |= dns.flags.TC | dns.flags.AA | dns.flags.RA
                data = truncated.to_wire()
        return data, delay

    def _lookup(self, name: str) -> _Name | None:
        """The node of `name`, or of the wildcard that covers it (RFC 4592, one level)."""
        node = self._names.get(name)
        if node is not None or "." not in name:
            return node
        if self._exists(name):
            return None  # an empty non-terminal is not covered by a wildcard
        return self._names.get("*." + name.split(".", 1)[1])

    def _resolve(self, reply: dns.message.Message, qname: str, qtype: str) -> None:
        name = qname
        seen: set[str] = set()
        node = None
        for _ in range(MAX_CHAIN + 1):
            node = self._lookup(name)
            records = [r for r in node.records if r[0] == qtype] if node else []
            if records:
                for rtype, value, ttl in records:
                    reply.answer.append(self._rrset(name, rtype, value, ttl))
                return
            cnames = [r for r in node.records if r[0] == "CNAME"] if node else []
            if cnames and qtype != "CNAME":
                _, target, ttl = cnames[0]
                reply.answer.append(self._rrset(name, "CNAME", target, ttl))
                seen.add(name)
                name = _norm(str(target))
                if name in seen:
                    return  # a loop: the chain ends without data
                continue
            break
        if node is None and not self._exists(name):
            reply.set_rcode(dns.rcode.NXDOMAIN)
        soa = self._soa_for(name)
        if soa is not None:
            reply.authority.append(soa)

    def _exists(self, name: str) -> bool:
        """A name with records, or an empty non-terminal (RFC 8020: NODATA, not NXDOMAIN)."""
        suffix = "." + name
        return any(
            n == name or (n.endswith(suffix) and (node.records or node.timeout_unlisted))
            for n, node in self._names.items()
        )

    def _soa_for(self, name: str) -> dns.rrset.RRset | None:
        labels = name.split(".")
        for i in range(len(labels)):
            apex = ".".join(labels[i:])
            if apex in self._soas:
                ttl, minimum = self._soas[apex]
                return self._soa_rrset(apex, ttl, minimum)
        if self.negative_soa_everywhere is not None and name:  # the root has no parent zone
            apex = ".".join(labels[-2:])
            return self._soa_rrset(apex, self.default_ttl, self.negative_soa_everywhere)
        return None

    @staticmethod
    def _soa_rrset(apex: str, ttl: int, minimum: int) -> dns.rrset.RRset:
        text = f"ns.{apex}. hostmaster.{apex}. 1 3600 600 86400 {minimum}"
        return dns.rrset.from_text(_literal_name(apex), ttl, "IN", "SOA", text)

    @staticmethod
    def _rrset(name: str, rtype: str, value: Any, ttl: int) -> dns.rrset.RRset:
        rdtype = dns.rdatatype.from_text(rtype)
        IN = dns.rdataclass.IN
        rdata: dns.rdata.Rdata
        if rtype == "TXT":
            rdata = TXT(IN, rdtype, _txt_chunks(value))
        elif rtype == "SPF":
            rdata = SPF(IN, rdtype, _txt_chunks(value))
        elif rtype == "MX":
            preference, exchange = value
            rdata = MX(  # type: ignore[no-untyped-call]
                IN, rdtype, int(preference), _literal_name(exchange or ".")
            )
        elif rtype == "PTR":
            rdata = PTR(  # type: ignore[no-untyped-call]
                IN, rdtype, _literal_name(str(value))
            )
        elif rtype == "CNAME":
            rdata = CNAME(  # type: ignore[no-untyped-call]
                IN, rdtype, _literal_name(str(value))
            )
        elif rtype == "NS":
            rdata = NS(  # type: ignore[no-untyped-call]
                IN, rdtype, _literal_name(str(value))
            )
        else:
            rdata = dns.rdata.from_text(IN, rdtype, str(value))
        rrset = dns.rrset.RRset(_literal_name(name), IN, rdtype)
        rrset.add(rdata, ttl)
        return rrset

    # -- sockets ------------------------------------------------------------------------------

    async def serve(self, port: int = 0, ready: threading.Event | None = None) -> None:
        """Answer on UDP and TCP, same port (0: ephemeral), until `stop()`."""
        loop = asyncio.get_running_loop()
        self._loop, self._stop = loop, asyncio.Event()
        for _ in range(20):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, port)
            )
            bound = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._handle_tcp, self.host, bound)
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for the loopback DNS server")
        self.port = bound
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
        finally:
            udp.close()
            tcp.close()
            await tcp.wait_closed()

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data, delay = self.answer(await reader.readexactly(length), "tcp")
                if delay:
                    await asyncio.sleep(delay)
                if data is None:
                    continue  # a simulated timeout: keep the connection, say nothing
                writer.write(struct.pack("!H", len(data)) + data)
                await writer.drain()
        writer.close()

    def start(self) -> LoopbackDnsServer:
        """Serve in a background thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self.serve(0, ready))
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="loopback-dns", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> LoopbackDnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: LoopbackDnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not a DatagramTransport subclass, but has its interface.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply, delay = self.server.answer(data, "udp")
        if reply is None or self.transport is None:
            return
        if delay:
            asyncio.get_running_loop().call_later(delay, self._send, reply, addr)
        else:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


__all__ = ["ANY_TYPE", "LOOPBACK", "LoopbackDnsServer", "Query", "ZoneData"]
