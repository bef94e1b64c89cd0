"""gateway.devdns beyond what the resolver tests exercise: wildcards, the bench's negative SOAs,
a delayed answer that holds up no other query, and the bench zone served by the same server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest
from dns_server import DnsTestServer

from bench.dnsd import bench_server


@pytest.fixture
def server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as started:
        yield started


def ask(server: DnsTestServer, name: str, rtype: str = "TXT") -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    return dns.query.udp(query, server.host, port=server.port, timeout=10)


def test_a_wildcard_covers_names_without_records_of_their_own(server: DnsTestServer) -> None:
    server.load(
        {"*.users.example": [("TXT", "v=spf1 -all")], "own.users.example": [("A", "1.2.3.4")]}
    )
    assert ask(server, "anyone.users.example").answer[0].name.to_text() == "anyone.users.example."
    own = ask(server, "own.users.example")  # exists: NODATA, the wildcard does not apply
    assert own.rcode() == dns.rcode.NOERROR and not own.answer
    assert ask(server, "a.b.users.example").rcode() == dns.rcode.NXDOMAIN  # one level only


def test_negative_answers_can_carry_a_parent_soa_everywhere(server: DnsTestServer) -> None:
    server.soa_for_every_domain(minimum=300)
    reply = ask(server, "_dmarc.mail.example.org")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    [soa] = reply.authority
    assert soa.name.to_text() == "example.org." and soa[0].minimum == 300


def test_a_delayed_answer_holds_up_no_other_query(server: DnsTestServer) -> None:
    server.load({"slow.example": [("TXT", "slow")], "fast.example": [("TXT", "fast")]})
    server.delay("slow.example", 3600)  # would hang the test if it blocked the server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(
            dns.message.make_query("slow.example", "TXT").to_wire(), (server.host, server.port)
        )
        assert ask(server, "fast.example").answer[0][0].strings == (b"fast",)
    assert server.count("slow.example") == 1


def test_the_bench_zone() -> None:
    with bench_server({"sel._domainkey.bench.test": "k=rsa; p=" + "A" * 400}) as bench:
        sender = ask(bench, "m1.senders.bench.test")
        assert sender.answer[0][0].strings == (b"v=spf1 include:_spf.bench.test -all",)
        assert ask(bench, "m1.senders.bench.test", "A").rcode() == dns.rcode.NOERROR  # NODATA
        key = ask(bench, "sel._domainkey.bench.test").answer[0][0].strings
        assert b"".join(key) == b"k=rsa; p=" + b"A" * 400 and max(map(len, key)) <= 255
        outside = ask(bench, "_dmarc.gmail.com")
        assert outside.rcode() == dns.rcode.NXDOMAIN
        assert outside.authority[0].name.to_text() == "gmail.com."
