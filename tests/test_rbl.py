"""The rbl plugin over a real loopback DNS server: the list zones are served by gateway.devdns.

What a list answers decides everything here, so every test serves the answer and asserts the
symbols: a hit, a miss, a "multi" bitmask, IPv6 in nibble format, a list that refuses us
(suspended, with the WARNING, the metric, and no further query), an answer from outside
127.0.0.0/8, a timeout (not a hit), the first untrusted hop behind a trusted relay, and the
domains of links, From, Reply-To and HELO. Query names and answer readings are unit-tested too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest
from dns_fixtures import dns_settings_for
from dns_server import DnsTestServer
from harness import (
    GatewayFactory,
    RecordingSink,
    RunningGateway,
    make_settings,
    message,
)

from gateway.config import PluginSettings, Settings
from gateway.dns import Resolver
from gateway.dnsbl import (
    ListCodes,
    Suspensions,
    domain_query_name,
    ip_query_name,
    listable_address,
    read_answer,
)
from gateway.message import ParsedMessage
from gateway.metrics import DNSBL_SUSPENDED
from gateway.plugin import ClientInfo, MessageContext, Phase, Services
from gateway.plugins.rbl import RblConfig, ReputationLists
from gateway.policy import RuleSet, load_rules
from gateway.received_hops import first_untrusted_hop, sending_ips
from gateway.verdict import Finding

CLIENT = "192.0.2.99"
ZEN = "99.2.0.192.zen.spamhaus.org"


# -- query names and answers --------------------------------------------------------------------


def test_ipv4_query_name_reverses_the_octets() -> None:
    address = ipaddress.ip_address("192.0.2.99")
    assert ip_query_name(address, "zen.spamhaus.org") == ZEN


def test_ipv6_query_name_is_32_reversed_nibbles() -> None:
    address = ipaddress.ip_address("2001:db8::1")
    name = ip_query_name(address, "zen.spamhaus.org")
    assert name == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.zen.spamhaus.org"
    assert len(name.removesuffix(".zen.spamhaus.org").split(".")) == 32


def test_private_loopback_and_mapped_addresses() -> None:
    for ip in ("10.1.2.3", "127.0.0.1", "192.168.1.1", "172.16.0.1", "fe80::1", "::1", "junk"):
        assert listable_address(ip) is None, ip
    assert str(listable_address("::ffff:192.0.2.99")) == "192.0.2.99"
    assert str(listable_address("2001:db8::1")) == "2001:db8::1"


def test_domain_query_names() -> None:
    assert domain_query_name("Evil.Example.", "dbl.spamhaus.org") == "evil.example.dbl.spamhaus.org"
    assert domain_query_name("bücher.example", "z.test") == "xn--bcher-kva.example.z.test"
    for refused in ("192.0.2.1", "[192.0.2.1]", "2001:db8::1", "localhost", "", "a" * 64 + ".x"):
        assert domain_query_name(refused, "z.test") is None, refused


ZEN_CODES = ListCodes(
    codes={"127.0.0.2": "RBL_SPAMHAUS_SBL", "127.0.0.4": "RBL_SPAMHAUS_XBL"},
    refused=frozenset({"127.255.255.254"}),
)
MULTI = ListCodes(bits=((2, "URIBL_BLACK"), (4, "URIBL_GREY"), (8, "URIBL_RED")))


def test_exact_codes_each_raise_their_symbol() -> None:
    reading = read_answer(["127.0.0.2", "127.0.0.4"], ZEN_CODES)
    assert reading.symbols == ("RBL_SPAMHAUS_SBL", "RBL_SPAMHAUS_XBL") and not reading.refusal


def test_multi_bitmask_raises_every_bit_set() -> None:
    assert read_answer(["127.0.0.6"], MULTI).symbols == ("URIBL_BLACK", "URIBL_GREY")
    assert read_answer(["127.0.0.8"], MULTI).symbols == ("URIBL_RED",)
    assert read_answer(["127.0.0.16"], MULTI).unknown == ("127.0.0.16",)


def test_refusal_wins_over_listings_in_the_same_answer() -> None:
    reading = read_answer(["127.0.0.2", "127.255.255.254"], ZEN_CODES)
    assert reading.symbols == () and "refuses" in reading.refusal


def test_an_answer_outside_127_8_is_a_refusal() -> None:
    reading = read_answer(["198.51.100.80"], ZEN_CODES)
    assert reading.symbols == () and "outside 127.0.0.0/8" in reading.refusal


def test_unknown_codes_are_neither_hits_nor_refusals() -> None:
    reading = read_answer(["127.0.1.255"], ZEN_CODES)
    assert reading == type(reading)(unknown=("127.0.1.255",))


def test_suspension_ends_after_its_time() -> None:
    now = [100.0]
    counted: list[str] = []
    suspensions = Suspensions(60, counted.append, clock=lambda: now[0])
    suspensions.suspend("zen", "zen.spamhaus.org", "refused")
    suspensions.suspend("zen", "zen.spamhaus.org", "refused")  # same message: counted once
    assert suspensions.active("zen") and counted == ["zen"]
    now[0] += 60
    assert not suspensions.active("zen")


# -- Received hops ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ips"),
    [
        ("from mail.example.net (mail.example.net [192.0.2.5]) by mx.example.com", ("192.0.2.5",)),
        ("from [192.0.2.6] (helo=client) by mx.example.com with esmtp", ("192.0.2.6",)),
        ("from host (host [IPv6:2001:db8::5]) by mx", ("2001:db8::5",)),
        ("from host (192.0.2.7) by mx", ("192.0.2.7",)),
        ("by mx.example.com with local id 1", ()),
        ("from host (host [192.0.2.8]) by mx (from [203.0.113.9])", ("192.0.2.8",)),
    ],
)
def test_the_ips_a_received_field_names(value: str, ips: tuple[str, ...]) -> None:
    assert sending_ips(value) == ips


RELAYS = (ipaddress.ip_network("198.51.100.0/24"),)


def relayed(*received: str) -> ParsedMessage:
    fields = "".join(f"Received: {value}\r\n" for value in received)
    return ParsedMessage(fields.encode() + message())


def test_first_untrusted_hop_skips_trusted_relays_newest_first() -> None:
    parsed = relayed(
        "from relay2 (relay2 [198.51.100.2]) by relay1",
        "from bad.example (bad.example [192.0.2.66]) by relay2",
        "from forged (forged [192.0.2.77]) by bad.example",
    )
    assert first_untrusted_hop(parsed, RELAYS) == ("192.0.2.66",)


def test_a_helo_naming_a_trusted_ip_cannot_hide_the_real_hop() -> None:
    # Postfix writes the HELO first: "from HELO (rdns [ip])"; the sender chose the HELO
    parsed = relayed(
        "from [198.51.100.9] (unknown [192.0.2.66]) by relay1",
        "from forged (forged [192.0.2.77]) by somewhere",
    )
    assert first_untrusted_hop(parsed, RELAYS) == ("192.0.2.66",)


def test_an_unreadable_trusted_field_stops_the_walk() -> None:
    parsed = relayed("by relay1 with local", "from forged (forged [192.0.2.77]) by relay1")
    assert first_untrusted_hop(parsed, RELAYS) == ()


# -- the plugin over the loopback DNS server ------------------------------------------------------


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    settings = make_settings(tmp_path, 1)
    return load_rules(settings.rules_dir)


def plugin_for(
    tmp_path: Path, resolver: Resolver, dns_server: DnsTestServer, **table: Any
) -> tuple[ReputationLists, Settings]:
    settings = dataclasses.replace(
        make_settings(tmp_path, 1, plugins=PluginSettings(order=("rbl",))),
        dns=dns_settings_for(dns_server),
    )
    services = Services(settings, resolver)
    if table:
        services.tables["rbl"] = RblConfig(**table)
    return ReputationLists(services), settings


async def run(
    plugin: ReputationLists,
    settings: Settings,
    rules: RuleSet,
    raw: bytes = b"",
    ip: str = CLIENT,
    helo: str = "client.example.net",
) -> tuple[list[Finding], list[Finding]]:
    """The plugin's CONNECT and DATA findings for one message from `ip`."""
    ctx = MessageContext(
        client=ClientInfo(ip=ip, port=25, helo=helo), rules=rules, settings=settings
    )
    at_connect = list(await plugin.check(Phase.CONNECT, ctx))
    ctx.raw = raw or message()
    return at_connect, list(await plugin.check(Phase.DATA, ctx))


def symbols(findings: list[Finding]) -> set[str]:
    return {f.symbol for f in findings}


async def test_a_listed_client_is_found_at_connect(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load({ZEN: [("A", "127.0.0.2"), ("A", "127.0.0.10")]})
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    at_connect, at_data = await run(plugin, settings, rules)
    assert symbols(at_connect) == {"RBL_SPAMHAUS_SBL", "RBL_SPAMHAUS_PBL"}
    [sbl] = [f for f in at_connect if f.symbol == "RBL_SPAMHAUS_SBL"]
    assert "zen.spamhaus.org" in sbl.detail and "192.0.2.99 (client)" in sbl.detail
    assert not symbols(at_data) & {"RBL_SPAMHAUS_SBL", "RBL_SPAMHAUS_PBL"}  # asked once
    for zone in ("bl.spamcop.net", "rep.mailspike.net", "psbl.surriel.com"):
        assert dns_server.count(f"99.2.0.192.{zone}", "A") == 1  # asked, all at once


async def test_an_unlisted_client_raises_nothing(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.soa_for_every_domain()
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    at_connect, at_data = await run(plugin, settings, rules)
    assert at_connect == [] and at_data == []


async def test_a_loopback_client_is_never_asked_about(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    await run(plugin, settings, rules, ip="127.0.0.1")
    assert not [q for q in dns_server.queries if "zen.spamhaus.org" in q.name]


async def test_an_ipv6_client_is_asked_in_nibble_format(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    nibbles = "1." + "0." * 23 + "8.b.d.0.1.0.0.2"
    dns_server.load({f"{nibbles}.zen.spamhaus.org": [("A", "127.0.0.4")]})
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    at_connect, _ = await run(plugin, settings, rules, ip="2001:db8::1")
    assert symbols(at_connect) == {"RBL_SPAMHAUS_XBL"}
    # the lists marked ipv6 = false in rules/reputation.toml are not asked
    assert dns_server.count(f"{nibbles}.bl.spamcop.net") == 0


async def test_multi_lists_raise_each_bit_of_a_link_domain(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(
        {
            "evil.example.multi.uribl.com": [("A", "127.0.0.6")],
            "evil.example.multi.surbl.org": [("A", "127.0.0.24")],
        }
    )
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    body = b"Log in at https://login.evil.example/verify now.\r\n"
    _, at_data = await run(plugin, settings, rules, raw=message(body=body))
    assert symbols(at_data) == {"URIBL_BLACK", "URIBL_GREY", "SURBL_PHISH", "SURBL_MALWARE"}
    [black] = [f for f in at_data if f.symbol == "URIBL_BLACK"]
    assert "evil.example (links)" in black.detail and "127.0.0.6" in black.detail


async def test_domains_of_from_reply_to_and_helo_are_asked(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(
        {
            "spam.example.dbl.spamhaus.org": [("A", "127.0.1.2")],
            "phish.example.dbl.spamhaus.org": [("A", "127.0.1.4")],
            "botnet.example.dbl.spamhaus.org": [("A", "127.0.1.6")],
        }
    )
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    raw = message(sender="ceo@mail.spam.example", extra=b"Reply-To: <pay@phish.example>\r\n")
    _, at_data = await run(plugin, settings, rules, raw=raw, helo="mx1.botnet.example")
    assert symbols(at_data) == {"DBL_SPAM", "DBL_PHISH", "DBL_BOTNET"}
    details = {f.symbol: f.detail for f in at_data}
    assert "spam.example (from)" in details["DBL_SPAM"]
    assert "phish.example (reply_to)" in details["DBL_PHISH"]
    assert "botnet.example (helo)" in details["DBL_BOTNET"]


async def test_link_domains_are_bounded_per_message(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server, max_link_domains=5)
    links = "".join(f"http://www.site{i}.example/ http://a.site{i}.example/\r\n" for i in range(30))
    await run(plugin, settings, rules, raw=message(body=links.encode()))
    asked = {q.name for q in dns_server.queries if q.name.endswith("dbl.spamhaus.org")}
    link_domains = {name for name in asked if name.startswith("site")}
    assert link_domains == {f"site{i}.example.dbl.spamhaus.org" for i in range(5)}


async def test_a_refusing_list_is_suspended_with_a_warning_and_never_scored(
    tmp_path: Path,
    rules: RuleSet,
    dns_server: DnsTestServer,
    dns_resolver: Resolver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Spamhaus answers "query through a public resolver" for everything
    dns_server.load({ZEN: [("A", "127.255.255.254")]})
    before = DNSBL_SUSPENDED.labels("spamhaus_zen")._value.get()
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    with caplog.at_level(logging.WARNING, logger="mailgate.rbl"):
        at_connect, _ = await run(plugin, settings, rules)
    assert at_connect == []
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "spamhaus_zen" in warning.getMessage() and "zen.spamhaus.org" in warning.getMessage()
    assert "127.255.255.254" in warning.getMessage()
    assert DNSBL_SUSPENDED.labels("spamhaus_zen")._value.get() == before + 1
    # suspended: the next message does not ask it again, and nothing is scored
    dns_server.load({"100.2.0.192.zen.spamhaus.org": [("A", "127.0.0.2")]})
    at_connect, _ = await run(plugin, settings, rules, ip="192.0.2.100")
    assert at_connect == []
    assert dns_server.count("100.2.0.192.zen.spamhaus.org") == 0
    assert dns_server.count("100.2.0.192.bl.spamcop.net") == 1  # the other lists still are


async def test_an_answer_from_outside_127_8_suspends_the_list(
    tmp_path: Path,
    rules: RuleSet,
    dns_server: DnsTestServer,
    dns_resolver: Resolver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # an NXDOMAIN-rewriting resolver: every name "exists" at its advertising server
    dns_server.load(
        {
            "shop.example.multi.uribl.com": [("A", "198.51.100.80")],
            "news.example.multi.uribl.com": [("A", "198.51.100.80")],
        }
    )
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    body = b"See http://shop.example/ and http://news.example/\r\n"
    with caplog.at_level(logging.WARNING, logger="mailgate.rbl"):
        _, at_data = await run(plugin, settings, rules, raw=message(body=body))
    assert not symbols(at_data) & {"URIBL_BLACK", "URIBL_GREY", "URIBL_RED"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "uribl" in warnings[0] and "outside 127.0.0.0/8" in warnings[0]


async def test_a_uribl_refusal_drops_its_hits_of_the_same_message(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(
        {
            "evil.example.multi.uribl.com": [("A", "127.0.0.2")],
            "other.example.multi.uribl.com": [("A", "127.0.0.1")],  # "query refused"
        }
    )
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    body = b"http://evil.example/ http://other.example/\r\n"
    _, at_data = await run(plugin, settings, rules, raw=message(body=body))
    assert "URIBL_BLACK" not in symbols(at_data)


async def test_a_timeout_is_not_a_hit(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.timeout(ZEN)
    dns_server.load({"99.2.0.192.bl.spamcop.net": [("A", "127.0.0.2")]})
    plugin, settings = plugin_for(tmp_path, dns_resolver, dns_server)
    at_connect, _ = await run(plugin, settings, rules)
    assert symbols(at_connect) == {"RBL_SPAMCOP", "RBL_TEMPERROR"}
    [temperror] = [f for f in at_connect if f.symbol == "RBL_TEMPERROR"]
    assert "zen.spamhaus.org: timeout" in temperror.detail
    assert rules.scores["RBL_TEMPERROR"] == 0.0
    assert "RBL_TEMPERROR" not in rules.forced and "RBL_TIMEOUT" not in rules.forced


async def test_behind_a_trusted_relay_the_first_untrusted_hop_is_asked(
    tmp_path: Path, rules: RuleSet, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(
        {
            "66.2.0.192.zen.spamhaus.org": [("A", "127.0.0.3")],
            "77.2.0.192.zen.spamhaus.org": [("A", "127.0.0.2")],
        }
    )
    plugin, settings = plugin_for(
        tmp_path, dns_resolver, dns_server, trusted_relays=["198.51.100.0/24"]
    )
    fields = (
        b"Received: from relay2 (relay2 [198.51.100.2]) by relay1.example; x\r\n"
        b"Received: from bad.example (bad.example [192.0.2.66])\r\n by relay2.example; x\r\n"
        b"Received: from forged (forged [192.0.2.77]) by bad.example; x\r\n"
    )
    at_connect, at_data = await run(
        plugin, settings, rules, raw=fields + message(), ip="198.51.100.1"
    )
    assert at_connect == []
    assert symbols(at_data) == {"RBL_SPAMHAUS_CSS"}
    assert "192.0.2.66 (Received hop)" in at_data[0].detail
    assert dns_server.count("1.100.51.198.zen.spamhaus.org") == 0  # the relay itself
    assert dns_server.count("77.2.0.192.zen.spamhaus.org") == 0  # below the hop: forgeable


def test_trusted_relays_must_be_networks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        RblConfig(trusted_relays=["relay.example"])


# -- over SMTP: a listed client refused at connect, when actions.toml says so --------------------


async def test_forced_reject_of_a_listed_client_at_connect_over_smtp(
    tmp_path: Path,
    start_gateway: GatewayFactory,
    sink: RecordingSink,
    dns_server: DnsTestServer,
) -> None:
    dns_server.load({"23.100.51.198.zen.spamhaus.org": [("A", "127.0.0.2")]})
    settings = make_settings(
        tmp_path,
        sink.port,
        plugins=PluginSettings(order=("rbl",)),
        listen={"proxy_protocol": True, "proxy_trusted": (ipaddress.ip_network("127.0.0.0/8"),)},
    )
    settings = dataclasses.replace(settings, dns=dns_settings_for(dns_server))
    actions = settings.rules_dir / "actions.toml"
    actions.write_text(
        actions.read_text().replace(
            "[forced]\n",
            '[forced]\nRBL_SPAMHAUS_SBL = { action = "reject", '
            'reply = "554 5.7.1 Client host listed by Spamhaus SBL" }\n',
        )
    )
    gw: RunningGateway = await start_gateway(settings)
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    try:
        writer.write(b"PROXY TCP4 198.51.100.23 127.0.0.1 40000 25\r\n")
        greeting = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    assert greeting.startswith(b"554 5.7.1 Client host listed by Spamhaus SBL"), greeting


# -- rules/reputation.toml: validated with the rules, reloaded with them ---------------------------

BAD_FILES = {
    "unknown symbol": (
        '[[lists]]\nname = "x"\nzone = "bl.example"\nchecks = "ip"\n'
        'codes = { "127.0.0.2" = "RBL_NOPE" }\n',
        5,
        "not a symbol of the rbl plugin",
    ),
    "domain symbol on an ip list": (
        '[[lists]]\nname = "x"\nzone = "bl.example"\nchecks = "ip"\n'
        'codes = { "127.0.0.2" = "DBL_SPAM" }\n',
        5,
        "not a symbol of a ip list",
    ),
    "answer outside 127/8": (
        '[[lists]]\nname = "x"\nzone = "bl.example"\nchecks = "ip"\n'
        'codes = { "128.0.0.2" = "RBL_LOCAL" }\n',
        5,
        "not a list answer",
    ),
    "bit out of range": (
        '[[lists]]\nname = "x"\nzone = "bl.example"\nchecks = "domain"\n'
        'bits = { 256 = "URIBL_LOCAL" }\n',
        5,
        "not a bitmask",
    ),
    "no meaning": (
        '[[lists]]\nname = "x"\nzone = "bl.example"\nchecks = "ip"\n',
        1,
        "codes or bits",
    ),
    "unknown key": (
        '\n[[lists]]\nname = "x"\nzone = "bl.example"\nchecks = "ip"\nzonne = "typo"\n'
        'codes = { "127.0.0.2" = "RBL_LOCAL" }\n',
        6,
        "unknown setting",
    ),
    "duplicate name": (
        '[[lists]]\nname = "x"\nzone = "a.example"\nchecks = "ip"\n'
        'codes = { "127.0.0.2" = "RBL_LOCAL" }\n'
        '[[lists]]\nname = "x"\nzone = "b.example"\nchecks = "ip"\n'
        'codes = { "127.0.0.2" = "RBL_LOCAL" }\n',
        7,
        "already used by lists[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_reputation_file_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    text, line, words = BAD_FILES[case]
    rules_dir = make_settings(tmp_path, 1).rules_dir
    (rules_dir / "reputation.toml").write_text(text)
    with pytest.raises(Exception) as raised:
        load_rules(rules_dir)
    report = str(raised.value)
    assert f"reputation.toml:{line}" in report and words in report, report


def test_without_the_file_no_list_is_asked(tmp_path: Path) -> None:
    rules_dir = make_settings(tmp_path, 1).rules_dir
    (rules_dir / "reputation.toml").unlink()
    assert load_rules(rules_dir).reputation.lists == ()


def test_a_disabled_list_is_not_loaded(tmp_path: Path) -> None:
    rules_dir = make_settings(tmp_path, 1).rules_dir
    path = rules_dir / "reputation.toml"
    path.write_text(
        path.read_text().replace('name = "spamcop"', 'name = "spamcop"\nenabled = false')
    )
    names = [entry.name for entry in load_rules(rules_dir).reputation.lists]
    assert "spamcop" not in names and "spamhaus_zen" in names


def test_reload_picks_up_an_edited_reputation_file_and_refuses_a_broken_one(
    tmp_path: Path,
) -> None:
    from gateway.app import Gateway

    settings = make_settings(tmp_path, 1, plugins=PluginSettings(order=("rbl",)))
    gateway = Gateway.create(settings)
    assert gateway.rules.reputation.lists[0].name == "spamhaus_zen"
    path = settings.rules_dir / "reputation.toml"
    path.write_text(
        '[[lists]]\nname = "mine"\nzone = "bl.example.internal"\nchecks = "ip"\n'
        'codes = { "127.0.0.2" = "RBL_LOCAL" }\n'
    )
    assert gateway.reload_rules()
    assert [e.name for e in gateway.rules.reputation.lists] == ["mine"]
    path.write_text('[[lists]]\nname = "broken"\n')
    assert not gateway.reload_rules()
    assert [e.name for e in gateway.rules.reputation.lists] == ["mine"]


def test_the_shipped_lists_read_their_refusal_codes_as_refusals() -> None:
    from harness import REPO

    lists = {entry.name: entry for entry in load_rules(REPO / "rules").reputation.lists}
    assert {"spamhaus_zen", "spamhaus_dbl", "surbl", "uribl"} <= set(lists)
    refusals = {
        "spamhaus_zen": ("127.255.255.252", "127.255.255.254", "127.255.255.255"),
        "spamhaus_dbl": ("127.255.255.252", "127.255.255.254", "127.255.255.255"),
        "surbl": ("127.0.0.1",),
        "uribl": ("127.0.0.1",),
    }
    for name, codes in refusals.items():
        for code in codes:
            reading = read_answer([code], lists[name].meaning)
            assert reading.refusal and reading.symbols == (), (name, code)
    assert read_answer(["127.0.0.2"], lists["spamhaus_zen"].meaning).symbols == (
        "RBL_SPAMHAUS_SBL",
    )
