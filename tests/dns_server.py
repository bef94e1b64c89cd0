"""A real DNS server on loopback for tests: UDP and TCP, in threads, serving zones from data.

SPF, DKIM and DMARC code runs against it over the wire exactly as in production: the gateway's
resolver sends real packets to 127.0.0.1:<port> and parses real answers. Zones are Python data::

    server.load({
        "example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all"), ("MX", (10, "mx.example.com"))],
        "mx.example.com": [("A", "192.0.2.25"), ("AAAA", "2001:db8::25")],
        "slow.example.com": ["TIMEOUT"],           # every query for it goes unanswered
    })
    server.timeout("example.net", "TXT")           # no answer, for one type or all
    server.servfail("example.org")                 # SERVFAIL
    server.soa("example.com", minimum=60)          # negative answers carry this SOA

or the RFC 7208 test suite's zone data (`load_spf_suite`), with its conventions: SPF records are
also served as TXT unless the name has TXT records of its own, "NONE" means no record of that
type, a bare TIMEOUT makes every other type time out, and `TYPE: TIMEOUT` makes that type time out.

CNAMEs are followed inside the zone data, as a recursive resolver would do, so answers carry the
whole chain. A UDP answer larger than the client's EDNS size (512 bytes without EDNS) is sent
truncated, so the client retries over TCP. Every query is recorded in `queries`.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnslib import (
    AAAA,
    CNAME,
    MX,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSError,
    DNSLabel,
    DNSRecord,
)

LOOPBACK = "127.0.0.1"
ANY_TYPE = "*"
MAX_CHAIN = 10

# Outcomes of the SPF test-suite cases (tests/test_spf_suite.py), suite -> [passed, failed],
# reported at the end of the run by the dns_fixtures plugin.
SPF_SUITE_RESULTS: dict[str, list[int]] = {}


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


class DnsTestServer:
    """An authoritative-and-recursive-looking DNS server for tests, on loopback only."""

    def __init__(self, host: str = LOOPBACK, default_ttl: int = 300) -> None:
        self.host = host
        self.port = 0
        self.default_ttl = default_ttl
        self.queries: list[Query] = []
        self._names: dict[str, _Name] = {}
        self._soas: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    # -- zone data ----------------------------------------------------------------------------

    def _name(self, name: str) -> _Name:
        return self._names.setdefault(_norm(name), _Name())

    def add(self, name: str, rtype: str, value: Any, ttl: int | None = None) -> None:
        """One record: A/AAAA address, MX (preference, exchange), TXT/SPF text(s), PTR/CNAME."""
        rtype = rtype.upper()
        if rtype not in ("A", "AAAA", "MX", "TXT", "SPF", "PTR", "CNAME", "NS"):
            raise ValueError(f"unsupported record type {rtype}")
        with self._lock:
            self._name(name).records.append(
                (rtype, value, self.default_ttl if ttl is None else ttl)
            )

    def load(self, zone: Mapping[str, Iterable[tuple[str, Any] | str]]) -> None:
        """Records by name; the entry "TIMEOUT" makes every type the name lacks time out."""
        for name, records in zone.items():
            self._name(name)
            for record in records:
                if record == "TIMEOUT":
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

    def answer(self, request: DNSRecord, protocol: str) -> tuple[bytes | None, float]:
        """The wire reply to one request (None: stay silent) and how long to wait first."""
        question = request.q
        # The labels as sent, not str(qname): that escapes spaces and other odd octets.
        qname = ".".join(label.decode("utf-8", "replace") for label in question.qname.label).lower()
        qtype = QTYPE.get(question.qtype, str(question.qtype))
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
            reply = request.reply()
            if node is not None and (
                qtype in node.servfail_types or ANY_TYPE in node.servfail_types
            ):
                reply.header.rcode = RCODE.SERVFAIL
                return reply.pack(), delay
            self._resolve(reply, qname, qtype)
        data = reply.pack()
        if protocol == "udp":
            limit = 512
            for rr in request.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, int(rr.rclass))
            if len(data) > limit:
                truncated = request.reply()
                truncated.header.tc = 1
                data = truncated.pack()
        return data, delay

    def _resolve(self, reply: DNSRecord, qname: str, qtype: str) -> None:
        name = qname
        seen: set[str] = set()
        for _ in range(MAX_CHAIN + 1):
            node = self._names.get(name)
            records = [r for r in node.records if r[0] == qtype] if node else []
            if records:
                for rtype, value, ttl in records:
                    reply.add_answer(self._rr(name, rtype, value, ttl))
                return
            cnames = [r for r in node.records if r[0] == "CNAME"] if node else []
            if cnames and qtype != "CNAME":
                _, target, ttl = cnames[0]
                reply.add_answer(self._rr(name, "CNAME", target, ttl))
                seen.add(name)
                name = _norm(str(target))
                if name in seen:
                    return  # a loop: the chain ends without data
                continue
            break
        if node is None and not self._exists(name):
            reply.header.rcode = RCODE.NXDOMAIN
        soa = self._soa_for(name)
        if soa is not None:
            reply.add_auth(soa)

    def _exists(self, name: str) -> bool:
        """A name with records, or an empty non-terminal (RFC 8020: NODATA, not NXDOMAIN)."""
        suffix = "." + name
        return any(
            n == name or (n.endswith(suffix) and (node.records or node.timeout_unlisted))
            for n, node in self._names.items()
        )

    def _soa_for(self, name: str) -> RR | None:
        labels = name.split(".")
        for i in range(len(labels)):
            apex = ".".join(labels[i:])
            if apex in self._soas:
                ttl, minimum = self._soas[apex]
                rdata = SOA(f"ns.{apex}", f"hostmaster.{apex}", (1, 3600, 600, 86400, minimum))
                return RR(apex, QTYPE.SOA, rdata=rdata, ttl=ttl)
        return None

    @staticmethod
    def _rr(name: str, rtype: str, value: Any, ttl: int) -> RR:
        rdata: Any
        if rtype == "A":
            rdata = A(value)
        elif rtype == "AAAA":
            rdata = AAAA(value)
        elif rtype == "MX":
            preference, exchange = value
            rdata = MX(exchange or ".", int(preference))
        elif rtype in ("TXT", "SPF"):
            rdata = TXT(_txt_chunks(value))
        elif rtype == "PTR":
            rdata = PTR(value)
        elif rtype == "CNAME":
            rdata = CNAME(value)
        else:
            raise ValueError(rtype)
        # Labels taken literally: DNSLabel("a\\065") would read a master-file escape.
        owner = DNSLabel([label.encode("utf-8") for label in name.split(".")])
        return RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=ttl)

    # -- sockets ------------------------------------------------------------------------------

    def start(self) -> DnsTestServer:
        """Listen on UDP and TCP, same port (ephemeral), on loopback."""
        for _ in range(20):
            udp = _UdpServer((self.host, 0), _UdpHandler, self)
            port = udp.server_address[1]
            try:
                tcp = _TcpServer((self.host, port), _TcpHandler, self)
            except OSError:
                udp.server_close()
                continue
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for the test DNS server")
        self.port = port
        for server in (udp, tcp):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> DnsTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reply_for(server: DnsTestServer, data: bytes, protocol: str) -> bytes | None:
    try:
        request = DNSRecord.parse(data)
    except (DNSError, struct.error, IndexError, ValueError):
        return None
    if not request.questions:
        return None
    reply, delay = server.answer(request, protocol)
    if delay:
        time.sleep(delay)
    return reply


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], handler: type, dns: DnsTestServer) -> None:
        self.dns = dns
        super().__init__(address, handler)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, dns: DnsTestServer) -> None:
        self.dns = dns
        super().__init__(address, handler)


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        reply = _reply_for(self.server.dns, data, "udp")
        if reply is not None:
            with contextlib.suppress(OSError):
                sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            while True:
                header = _recv_exact(sock, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                data = _recv_exact(sock, length)
                if data is None:
                    return
                reply = _reply_for(self.server.dns, data, "tcp")
                if reply is None:
                    continue  # simulated timeout: keep the connection, say nothing
                sock.sendall(struct.pack("!H", len(reply)) + reply)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@contextlib.contextmanager
def running_dns_server(
    zone: Mapping[str, Iterable[tuple[str, Any] | str]] | None = None,
) -> Iterator[DnsTestServer]:
    """A started server with `zone` loaded; stopped on exit."""
    server = DnsTestServer().start()
    try:
        if zone:
            server.load(zone)
        yield server
    finally:
        server.stop()


__all__ = ["ANY_TYPE", "SPF_SUITE_RESULTS", "DnsTestServer", "Query", "running_dns_server"]
