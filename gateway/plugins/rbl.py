"""Reputation over DNS: the sending IP on DNSBLs, the message's domains on URI blocklists.

The lists, what they are asked and what their answers mean are policy (rules/reputation.toml,
read by gateway.reputation); how a query name is made and an answer read is gateway.dnsbl. This
plugin decides what to ask and asks it, all lookups of a phase at once, through the gateway's
one resolver (its cache and time limits):

- at CONNECT, the client IP against the IP lists, so rules/actions.toml may refuse a listed
  client at once (e.g. `RBL_SPAMHAUS_SBL = "reject"` answers the greeting with 554);
- at DATA, when the client is one of `[plugins.rbl] trusted_relays` (a relay of yours in
  front), the first untrusted hop of the Received fields instead (gateway.received_hops); and
  the registrable domains of the links (at most `max_link_domains`), the From and Reply-To
  addresses and the HELO name against the domain lists.

Advisory, never a reason to defer mail: a lookup that times out or fails is RBL_TEMPERROR
(scored 0), and the plugin's own failure has no forced action (`on_error = None`). A list that
refuses us, or an answer that no list gives (outside 127.0.0.0/8), suspends that list for
`suspend_seconds` with a WARNING and the metric mailgate_dnsbl_suspended{list}, and none of its
answers of that message is scored.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, field_validator

from gateway.dns import DnsResult, DnsStatus
from gateway.dnsbl import (
    Suspensions,
    domain_query_name,
    ip_query_name,
    listable_address,
    log,
    read_answer,
)
from gateway.domains import registrable_domain
from gateway.message import MAX_URLS
from gateway.metrics import count_dnsbl_suspension
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.received_hops import Network, first_untrusted_hop, trusted
from gateway.reputation import REPUTATION_SYMBOLS, TEMPERROR, DnsList
from gateway.rfc5322 import parse_address_list
from gateway.schema import Table
from gateway.text import printable
from gateway.verdict import Action, Finding

MAX_REPLY_TO_ADDRESSES = 5
_DETAIL_ITEMS = 3  # listings named in one finding's detail


class RblConfig(Table):
    """`[plugins.rbl]`: who is trusted to relay to us, and how much one message may ask."""

    # relays of your own in front of the gateway: their IP is never looked up, the host that
    # handed them the message (their Received field) is
    trusted_relays: list[str] = Field(default_factory=list)
    max_link_domains: int = Field(default=20, gt=0, le=MAX_URLS)  # distinct link domains asked
    suspend_seconds: float = Field(default=900.0, gt=0, allow_inf_nan=False)

    @field_validator("trusted_relays")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value


@dataclass(frozen=True, slots=True)
class _Query:
    dns_list: DnsList
    name: str
    target: str  # what is asked about, for the detail: "192.0.2.1 (client)"


class ReputationLists(PluginBase):
    name: ClassVar[str] = "rbl"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.CONNECT, Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = REPUTATION_SYMBOLS
    config: ClassVar[type[Table] | None] = RblConfig
    on_error: ClassVar[Action | None] = None  # advisory: a list that fails never defers mail

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        own = services.config_for(self.name, RblConfig) or RblConfig()
        self.relays: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in own.trusted_relays
        )
        self.max_link_domains = own.max_link_domains
        self.suspensions = Suspensions(own.suspend_seconds, count_dnsbl_suspension)

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        policy = ctx.rules.reputation
        relayed = bool(self.relays) and trusted(ctx.client.ip, self.relays)
        queries: list[_Query] = []
        if phase is Phase.CONNECT:
            if not relayed:
                queries += _ip_queries(policy.ip_lists, ctx.client.ip, "client")
            return await self._ask(queries)
        if relayed and policy.ip_lists:
            for ip in first_untrusted_hop(ctx.message, self.relays):
                queries += _ip_queries(policy.ip_lists, ip, "Received hop")
        if policy.domain_lists:
            for domain, sources in (await self._domains(ctx)).items():
                for dns_list in policy.domain_lists:
                    name = domain_query_name(domain, dns_list.zone)
                    if name is not None and dns_list.domains.intersection(sources):
                        queries.append(_Query(dns_list, name, f"{domain} ({', '.join(sources)})"))
        return await self._ask(queries)

    async def _domains(self, ctx: MessageContext) -> dict[str, list[str]]:
        """Registrable domain -> where it was seen ("links", "from", "reply_to", "helo")."""
        found: dict[str, list[str]] = {}

        def add(host: str, source: str) -> None:
            domain = registrable_domain(host) if host else ""
            if domain:
                sources = found.setdefault(domain, [])
                if source not in sources:
                    sources.append(source)

        message = ctx.message
        for domain in message.authors.domains:
            add(domain, "from")
        addresses = 0
        for value in message.values("reply-to"):
            for mailbox in parse_address_list(value).mailboxes:
                addresses += 1
                if addresses > MAX_REPLY_TO_ADDRESSES:
                    break
                add(mailbox.domain, "reply_to")
        helo = ctx.client.helo or ""
        if helo and not helo.startswith("["):
            add(helo, "helo")
        links = 0
        for url in await message.urls():
            if links >= self.max_link_domains:
                break
            if url.domain and "links" not in found.get(url.domain, ()):
                links += 1
                add(url.domain, "links")
        return found

    async def _ask(self, queries: list[_Query]) -> list[Finding]:
        queries = [q for q in queries if not self.suspensions.active(q.dns_list.name)]
        if not queries:
            return []
        resolver = self.services.resolver
        results = await asyncio.gather(*(resolver.query(q.name, "A") for q in queries))
        return self._read(queries, results)

    def _read(self, queries: Sequence[_Query], results: Sequence[DnsResult]) -> list[Finding]:
        listed: dict[str, list[str]] = {}  # symbol -> "zone code: target"
        by_list: dict[str, list[tuple[str, str]]] = {}  # list -> [(symbol, item)]
        refused: set[str] = set()
        failed: dict[str, str] = {}  # zone -> status
        for query, result in zip(queries, results, strict=True):
            dns_list = query.dns_list
            if result.status is DnsStatus.ANSWER:
                addresses = result.addresses()
                reading = read_answer(addresses, dns_list.meaning)
                if reading.refusal:
                    refused.add(dns_list.name)
                    self.suspensions.suspend(dns_list.name, dns_list.zone, reading.refusal)
                    continue
                if reading.unknown:
                    log.debug(
                        "rbl: %s answered %s for %s: no meaning in rules/reputation.toml",
                        dns_list.zone,
                        ",".join(reading.unknown),
                        query.target,
                    )
                code = ",".join(addresses)
                for symbol in reading.symbols:
                    item = f"{dns_list.zone} {code}: {query.target}"
                    by_list.setdefault(dns_list.name, []).append((symbol, item))
            elif result.status.is_temporary:
                failed.setdefault(dns_list.zone, result.status.value)
        for name, hits in by_list.items():
            if name in refused:  # the same list refused another query of this message
                continue
            for symbol, item in hits:
                listed.setdefault(symbol, []).append(item)
        found = [
            Finding(symbol, detail=printable(_joined(items), 300))
            for symbol, items in listed.items()
        ]
        if failed:
            detail = ", ".join(f"{zone}: {status}" for zone, status in sorted(failed.items()))
            found.append(Finding(TEMPERROR, detail=printable(detail, 300)))
        return found


def _ip_queries(lists: Sequence[DnsList], ip: str, role: str) -> list[_Query]:
    address = listable_address(ip)
    if address is None:
        return []
    return [
        _Query(dns_list, ip_query_name(address, dns_list.zone), f"{address} ({role})")
        for dns_list in lists
        if address.version == 4 or dns_list.ipv6
    ]


def _joined(items: list[str]) -> str:
    text = "; ".join(items[:_DETAIL_ITEMS])
    if len(items) > _DETAIL_ITEMS:
        text += f" (+{len(items) - _DETAIL_ITEMS} more)"
    return text
