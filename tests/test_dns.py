"""The gateway's resolver against a real DNS server on loopback: statuses, cache, limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from dns_server import DnsTestServer

from gateway.config import DnsSettings, Settings, load_settings
from gateway.dns import DnsStatus, OfflineResolver, Resolver
from gateway.plugin import Services
from gateway.tomlfile import ConfigErrors


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: DnsTestServer, **kwargs: object) -> Resolver:
    options: dict[str, object] = {"timeout": 0.5, **kwargs}
    return Resolver([server.host], server.port, **options)  # type: ignore[arg-type]


ZONE = {
    "example.com": [
        ("A", "192.0.2.1"),
        ("AAAA", "2001:db8::1"),
        ("MX", (10, "mx.example.com")),
        ("MX", (20, "mx2.example.com")),
        ("TXT", "v=spf1 -all"),
        ("TXT", ["two ", "strings"]),
    ],
    "mx.example.com": [("A", "192.0.2.25")],
    "alias.example.com": [("CNAME", "mx.example.com")],
    "loop.example.com": [("CNAME", "loop2.example.com")],
    "loop2.example.com": [("CNAME", "loop.example.com")],
    "null.example.com": [("MX", (0, ""))],
    "1.2.0.192.in-addr.arpa": [("PTR", "mail.example.com")],
    "deep.sub.example.org": [("A", "192.0.2.9")],
}


async def test_answers_by_type(dns_server: DnsTestServer, dns_resolver: Resolver) -> None:
    dns_server.load(ZONE)
    a = await dns_resolver.query("example.com", "A")
    assert a.status is DnsStatus.ANSWER and a.addresses() == ["192.0.2.1"]
    assert (await dns_resolver.query("example.com", "AAAA")).addresses() == ["2001:db8::1"]
    mx = await dns_resolver.query("EXAMPLE.com.", "mx")
    assert sorted(mx.mx()) == [(10, "mx.example.com"), (20, "mx2.example.com")]
    txt = await dns_resolver.query("example.com", "TXT")
    assert sorted(txt.texts()) == [b"two strings", b"v=spf1 -all"]
    assert (b"two ", b"strings") in txt.txt_strings()
    ptr = await dns_resolver.query("1.2.0.192.in-addr.arpa", "PTR")
    assert ptr.targets() == ["mail.example.com"]
    null_mx = await dns_resolver.query("null.example.com", "MX")
    assert null_mx.mx() == [(0, "")]  # RFC 7505 null MX


async def test_cname_chain_is_followed(dns_server: DnsTestServer, dns_resolver: Resolver) -> None:
    dns_server.load(ZONE)
    result = await dns_resolver.query("alias.example.com", "A")
    assert result.status is DnsStatus.ANSWER
    assert result.addresses() == ["192.0.2.25"]
    assert result.canonical_name == "mx.example.com"


async def test_cname_loop_is_no_data_not_a_temporary_error(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(ZONE)
    result = await dns_resolver.query("loop.example.com", "A")
    assert result.status is DnsStatus.NODATA
    assert not result.is_temporary


async def test_nxdomain_nodata_and_empty_non_terminal(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(ZONE)
    assert (await dns_resolver.query("nope.example.com", "A")).status is DnsStatus.NXDOMAIN
    assert (await dns_resolver.query("mx.example.com", "TXT")).status is DnsStatus.NODATA
    # sub.example.org has no records but a name below it: it exists (RFC 8020).
    assert (await dns_resolver.query("sub.example.org", "A")).status is DnsStatus.NODATA


async def test_timeout_and_servfail_are_temporary_and_not_cached(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(ZONE)
    dns_server.timeout("example.com", "TXT")
    dns_server.servfail("example.net")
    timed_out = await dns_resolver.query("example.com", "TXT")
    assert timed_out.status is DnsStatus.TIMEOUT and timed_out.is_temporary
    failed = await dns_resolver.query("example.net", "A")
    assert failed.status is DnsStatus.SERVFAIL and failed.is_temporary
    # The other types of a name with a per-type timeout still answer.
    assert (await dns_resolver.query("example.com", "A")).status is DnsStatus.ANSWER
    before = dns_server.count("example.net")
    assert (await dns_resolver.query("example.net", "A")).status is DnsStatus.SERVFAIL
    assert dns_server.count("example.net") > before  # asked again: errors are not cached
    stats = dns_resolver.stats()
    assert stats.timeouts == 1 and stats.servfails == 2


async def test_timeout_is_bounded_by_the_configured_timeout(dns_server: DnsTestServer) -> None:
    dns_server.load({"slow.example.com": ["TIMEOUT"]})
    resolver = resolver_for(dns_server, timeout=0.3)
    started = time.monotonic()
    result = await resolver.query("slow.example.com", "A")
    elapsed = time.monotonic() - started
    assert result.status is DnsStatus.TIMEOUT
    assert 0.25 < elapsed < 3.0  # generous for a loaded machine; the default timeout is 5 s


async def test_positive_ttl_is_respected(dns_server: DnsTestServer) -> None:
    dns_server.add("ttl.example.com", "A", "192.0.2.7", ttl=60)
    clock = FakeClock()
    resolver = resolver_for(dns_server, clock=clock)
    first = await resolver.query("ttl.example.com", "A")
    assert first.ttl == 60
    assert (await resolver.query("TTL.example.com.", "A")).addresses() == ["192.0.2.7"]
    assert dns_server.count("ttl.example.com") == 1
    clock.now += 59
    await resolver.query("ttl.example.com", "A")
    assert dns_server.count("ttl.example.com") == 1
    clock.now += 2
    await resolver.query("ttl.example.com", "A")
    assert dns_server.count("ttl.example.com") == 2
    stats = resolver.stats()
    assert (stats.hits, stats.misses) == (2, 2)


async def test_max_ttl_caps_long_ttls(dns_server: DnsTestServer) -> None:
    dns_server.add("long.example.com", "A", "192.0.2.8", ttl=604800)
    resolver = resolver_for(dns_server, max_ttl=3600)
    assert (await resolver.query("long.example.com", "A")).ttl == 3600


async def test_zero_ttl_is_not_cached(dns_server: DnsTestServer) -> None:
    dns_server.add("zero.example.com", "A", "192.0.2.8", ttl=0)
    resolver = resolver_for(dns_server)
    await resolver.query("zero.example.com", "A")
    await resolver.query("zero.example.com", "A")
    assert dns_server.count("zero.example.com") == 2


async def test_negative_caching_uses_soa_minimum(dns_server: DnsTestServer) -> None:
    dns_server.load(ZONE)
    dns_server.soa("example.com", minimum=30, ttl=300)
    clock = FakeClock()
    resolver = resolver_for(dns_server, clock=clock)
    nx = await resolver.query("nope.example.com", "A")
    nodata = await resolver.query("mx.example.com", "TXT")
    assert (nx.status, nx.ttl) == (DnsStatus.NXDOMAIN, 30)  # min(SOA TTL, MINIMUM)
    assert (nodata.status, nodata.ttl) == (DnsStatus.NODATA, 30)
    assert (await resolver.query("nope.example.com", "A")).status is DnsStatus.NXDOMAIN
    assert dns_server.count("nope.example.com") == 1
    assert resolver.stats().negative_hits == 1
    clock.now += 31
    await resolver.query("nope.example.com", "A")
    assert dns_server.count("nope.example.com") == 2


async def test_negative_ttl_is_capped_and_needs_an_soa(dns_server: DnsTestServer) -> None:
    dns_server.load(ZONE)
    resolver = resolver_for(dns_server, max_negative_ttl=10)
    no_soa = await resolver.query("nope.example.com", "A")
    assert no_soa.ttl == 0  # RFC 2308 section 5: no SOA, not cached
    await resolver.query("nope.example.com", "A")
    assert dns_server.count("nope.example.com") == 2
    dns_server.soa("example.com", minimum=86400, ttl=86400)
    assert (await resolver.query("other.example.com", "A")).ttl == 10


async def test_cache_is_an_lru_with_a_size_bound(dns_server: DnsTestServer) -> None:
    for i in range(5):
        dns_server.add(f"h{i}.example.com", "A", f"192.0.2.{i + 1}")
    resolver = resolver_for(dns_server, cache_size=3)
    for i in range(3):
        await resolver.query(f"h{i}.example.com", "A")
    await resolver.query("h0.example.com", "A")  # h0 is now the most recently used
    await resolver.query("h3.example.com", "A")  # evicts h1, the least recently used
    await resolver.query("h4.example.com", "A")  # evicts h2
    stats = resolver.stats()
    assert stats.size == 3 and stats.evictions == 2
    await resolver.query("h0.example.com", "A")
    assert dns_server.count("h0.example.com") == 1
    await resolver.query("h1.example.com", "A")
    assert dns_server.count("h1.example.com") == 2


async def test_cache_size_zero_disables_the_cache(dns_server: DnsTestServer) -> None:
    dns_server.load(ZONE)
    resolver = resolver_for(dns_server, cache_size=0)
    await resolver.query("example.com", "A")
    await resolver.query("example.com", "A")
    assert dns_server.count("example.com", "A") == 2
    assert resolver.stats().size == 0


async def test_concurrent_queries_share_one_packet(dns_server: DnsTestServer) -> None:
    dns_server.load(ZONE)
    dns_server.delay("example.com", 0.2)
    resolver = resolver_for(dns_server)
    results = await asyncio.gather(*(resolver.query("example.com", "A") for _ in range(5)))
    assert all(r.addresses() == ["192.0.2.1"] for r in results)
    assert dns_server.count("example.com", "A") == 1
    assert resolver.stats().coalesced == 4


async def test_one_caller_giving_up_does_not_cancel_the_others(dns_server: DnsTestServer) -> None:
    dns_server.load(ZONE)
    dns_server.delay("example.com", 0.2)
    resolver = resolver_for(dns_server)
    impatient = asyncio.ensure_future(asyncio.wait_for(resolver.query("example.com", "A"), 0.05))
    patient = asyncio.ensure_future(resolver.query("example.com", "A"))
    with pytest.raises(TimeoutError):
        await impatient
    assert (await patient).addresses() == ["192.0.2.1"]


async def test_large_answers_fall_back_to_tcp(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    text = "v=spf1 " + " ".join(f"ip4:198.51.100.{i}" for i in range(200))
    dns_server.add("big.example.com", "TXT", text)
    result = await dns_resolver.query("big.example.com", "TXT")
    assert result.texts() == [text.encode()]
    assert [q.protocol for q in dns_server.queries] == ["udp", "tcp"]


@pytest.mark.parametrize(
    "name",
    ["", ".", "a..example.com", "x" * 64 + ".example.com", "é.example.com", ("a" * 60 + ".") * 5],
)
async def test_names_dns_cannot_carry_are_never_sent(
    dns_server: DnsTestServer, dns_resolver: Resolver, name: str
) -> None:
    result = await dns_resolver.query(name, "A")
    assert result.status is DnsStatus.INVALID
    assert not result.is_temporary
    assert dns_server.queries == []


async def test_labels_are_literal_not_master_file_escapes(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    # A macro expansion can put a backslash or a space in a label: it must go out as is.
    dns_server.add("a\\065 b.example.com", "A", "192.0.2.66")
    result = await dns_resolver.query("a\\065 b.example.com", "A")
    assert result.addresses() == ["192.0.2.66"]


async def test_unknown_record_type_is_invalid(dns_resolver: Resolver) -> None:
    assert (await dns_resolver.query("example.com", "NOPE")).status is DnsStatus.INVALID


async def test_the_event_loop_keeps_running_during_lookups(dns_server: DnsTestServer) -> None:
    """Slow DNS must not stall anything else on the loop."""
    dns_server.load(ZONE)
    dns_server.delay("example.com", 0.3)
    resolver = resolver_for(dns_server)
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    await resolver.query("example.com", "A")
    beat.cancel()
    assert len(gaps) > 10
    assert max(gaps) < 0.2  # the answer takes 0.3s: a blocking lookup would stall that long


async def test_aclose_cancels_lookups_in_flight(dns_server: DnsTestServer) -> None:
    dns_server.load({"slow.example.com": ["TIMEOUT"]})
    resolver = resolver_for(dns_server, timeout=5)
    waiting = asyncio.ensure_future(resolver.query("slow.example.com", "A"))
    await asyncio.sleep(0.05)
    await resolver.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiting


# -- test server conventions ----------------------------------------------------------------


async def test_spf_suite_zone_conventions(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load_spf_suite(
        {
            "spf.example.com": [{"SPF": "v=spf1 -all"}],
            "both.example.com": [{"SPF": "v=spf1 -all"}, {"TXT": "v=spf1 +all"}],
            "spfonly.example.com": [{"SPF": "v=spf1 -all"}, {"TXT": "NONE"}],
            "slow.example.com": [{"A": "192.0.2.1"}, "TIMEOUT"],
            "txtslow.example.com": [{"TXT": "TIMEOUT"}, {"A": "192.0.2.2"}],
        }
    )
    # SPF records are served as TXT too, unless the name has TXT records of its own.
    assert (await dns_resolver.query("spf.example.com", "TXT")).texts() == [b"v=spf1 -all"]
    assert (await dns_resolver.query("spf.example.com", "SPF")).texts() == [b"v=spf1 -all"]
    assert (await dns_resolver.query("both.example.com", "TXT")).texts() == [b"v=spf1 +all"]
    assert (await dns_resolver.query("spfonly.example.com", "TXT")).status is DnsStatus.NODATA
    # A bare TIMEOUT: listed types answer, every other type times out.
    assert (await dns_resolver.query("slow.example.com", "A")).status is DnsStatus.ANSWER
    assert (await dns_resolver.query("slow.example.com", "TXT")).status is DnsStatus.TIMEOUT
    # TYPE: TIMEOUT: that type times out, the others answer.
    assert (await dns_resolver.query("txtslow.example.com", "TXT")).status is DnsStatus.TIMEOUT
    assert (await dns_resolver.query("txtslow.example.com", "A")).status is DnsStatus.ANSWER


# -- configuration --------------------------------------------------------------------------


def test_default_is_the_system_resolver_from_resolv_conf(tmp_path: Path) -> None:
    """No [dns] nameservers: the nameserver lines of resolv.conf, as dnspython reads them (a
    file of our own here, so nothing but loopback is ever named)."""
    assert DnsSettings().nameservers is None
    assert DnsSettings().resolv_conf == Path("/etc/resolv.conf")
    conf = tmp_path / "resolv.conf"
    conf.write_text("# written by a test\nsearch example.com\nnameserver 127.0.0.1\n")
    resolver = Resolver.from_settings(DnsSettings(resolv_conf=conf))
    assert resolver.nameservers == ("127.0.0.1",) and resolver.port == 53
    assert resolver.describe() == f"127.0.0.1:53 (from {conf})"


def test_resolv_conf_without_nameservers_means_this_machine(tmp_path: Path) -> None:
    """resolv.conf(5): no nameserver line (or no file) means the server on this host."""
    empty = tmp_path / "resolv.conf"
    empty.write_text("options ndots:1\n")
    for path in (empty, tmp_path / "absent.conf"):
        resolver = Resolver.from_settings(DnsSettings(resolv_conf=path))
        assert resolver.nameservers == ("127.0.0.1", "::1")
        assert str(path) in resolver.describe() and "this machine" in resolver.describe()


def test_resolv_conf_is_read_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\nnameserver ::1\n")
    settings = load_settings(_config(tmp_path, '[dns]\nresolv_conf = "resolv.conf"\n'))
    assert settings.dns.resolv_conf == tmp_path / "resolv.conf"
    assert Services(settings).resolver.nameservers == ("127.0.0.1", "::1")


async def test_system_resolver_path_queries_the_server_resolv_conf_names(
    tmp_path: Path, dns_server: DnsTestServer
) -> None:
    dns_server.load(ZONE)
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {dns_server.host}\n")
    resolver = Resolver.from_settings(
        DnsSettings(resolv_conf=conf, port=dns_server.port, timeout=0.5)
    )
    result = await resolver.query("example.com", "A")
    assert result.status is DnsStatus.ANSWER and result.addresses() == ["192.0.2.1"]
    await resolver.aclose()


async def test_probe_says_the_server_answers(dns_server: DnsTestServer) -> None:
    resolver = resolver_for(dns_server)
    found = await resolver.probe()
    assert found.answered
    assert found.text == f"{dns_server.host}:{dns_server.port} (from the nameservers given) answers"
    assert [(q.name, q.rtype) for q in dns_server.queries] == [("", "NS")]  # one query


async def test_probe_names_the_server_that_does_not_answer(dns_server: DnsTestServer) -> None:
    dns_server.timeout("")  # the root: silent
    resolver = resolver_for(dns_server, timeout=0.3)
    found = await resolver.probe()
    assert not found.answered
    assert found.text == (
        f"no answer from {dns_server.host}:{dns_server.port} (from the nameservers given) "
        "within 0.3s"
    )


async def test_probe_reports_servfail(dns_server: DnsTestServer) -> None:
    dns_server.servfail("")
    found = await resolver_for(dns_server).probe()
    assert not found.answered and "answered SERVFAIL for the root zone" in found.text


async def test_offline_resolver_answers_nxdomain_and_sends_nothing(
    dns_server: DnsTestServer,
) -> None:
    resolver = OfflineResolver()
    for name, rdtype in [("example.com", "TXT"), ("2.0.0.127.zen.example", "A")]:
        result = await resolver.query(name, rdtype)
        assert result.status is DnsStatus.NXDOMAIN and not result.is_temporary
    assert (await resolver.query("bad..name", "A")).status is DnsStatus.INVALID
    assert (await resolver.probe()).answered
    assert resolver.stats().queries == 0
    assert dns_server.queries == []


def _config(tmp_path: Path, dns_table: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('[relay]\ndomains = ["example.com"]\n\n' + dns_table)
    return path


def test_dns_table_is_read(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        '[dns]\nnameservers = ["192.0.2.53", "2001:db8::53"]\nport = 5353\n'
        "timeout = 2.5\ncache_size = 0\n",
    )
    settings: Settings = load_settings(path)
    assert settings.dns == DnsSettings(("192.0.2.53", "2001:db8::53"), 5353, 2.5, 0)
    assert settings.dns.resolv_conf == Path("/etc/resolv.conf")  # not read: nameservers set
    resolver = Resolver.from_settings(settings.dns)
    assert resolver.timeout == 2.5 and resolver.cache_size == 0


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('nameservers = ["dns.example.com"]', "dns.nameservers"),
        ("nameservers = []", "dns.nameservers"),
        ("port = 0", "dns.port"),
        ("timeout = 0", "dns.timeout"),
        ("cache_size = -1", "dns.cache_size"),
        ("resolv_conf = true", "dns.resolv_conf"),
    ],
)
def test_bad_dns_settings_are_refused(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigErrors) as raised:
        load_settings(_config(tmp_path, f"[dns]\n{table}\n"))
    assert key in str(raised.value)


async def test_cached_answers_without_sending(
    dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(ZONE)
    assert dns_resolver.cached("example.com", "A") is None
    await dns_resolver.query("example.com", "A")
    hit = dns_resolver.cached("EXAMPLE.COM.", "a")
    assert hit is not None and hit.addresses() == ["192.0.2.1"]
    assert dns_server.count("example.com") == 1
    assert dns_resolver.stats().hits == 1
