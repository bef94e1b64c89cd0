"""rules/reputation.toml -> `ReputationPolicy`: which DNS lists are asked, about what, and what
their answers mean.

Each `[[lists]]` entry names a list, its zone, whether it is asked about IPs (the sending IP) or
domains (link, From, Reply-To and HELO domains), its return codes (exact 127.0.0.x values, or
bits of a "multi" list's last octet) with the symbol each raises, and the codes by which it says
it refuses to answer us. The file is part of rules/: loaded and validated with the other rules
files by gateway.policy.load_rules (errors name file, line and key), swapped whole on SIGHUP.

Symbols are the rbl plugin's vocabulary (`REPUTATION_SYMBOLS`): each is declared and scored in
rules/scores.d/rbl.toml, so a list of your own uses RBL_LOCAL (IPs) or URIBL_LOCAL (domains),
or one of the shipped symbols whose meaning it shares.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, PlainValidator

from gateway.dnsbl import LIST_ANSWERS, ListCodes
from gateway.schema import TABLE_CONFIG, Array, DnsName, Flag, KeyProblem, Text, validate_table
from gateway.tomlfile import ConfigError, TomlFile

IP_SYMBOLS = {
    "RBL_SPAMHAUS_SBL": "sending IP is on the Spamhaus SBL (a known spam source or operation)",
    "RBL_SPAMHAUS_CSS": "sending IP is on the Spamhaus CSS (snowshoe or low-reputation spam)",
    "RBL_SPAMHAUS_XBL": "sending IP is on the Spamhaus XBL (an exploited host: bot, proxy)",
    "RBL_SPAMHAUS_DROP": "sending IP is in a Spamhaus DROP netblock (hijacked, spam-only)",
    "RBL_SPAMHAUS_PBL": "sending IP is on the Spamhaus PBL (an end-user range, not a mail "
    "server: should send through its provider)",
    "RBL_SPAMCOP": "sending IP is on bl.spamcop.net (reported by spam recipients lately)",
    "RBL_MAILSPIKE_WORST": "sending IP has the worst Mailspike reputation (L5)",
    "RBL_MAILSPIKE_VERYBAD": "sending IP has a very bad Mailspike reputation (L4)",
    "RBL_MAILSPIKE_BAD": "sending IP has a bad Mailspike reputation (L3)",
    "RBL_PSBL": "sending IP is on the Passive Spam Block List (psbl.surriel.com)",
    "RBL_LOCAL": "sending IP is on an IP list of your own (rules/reputation.toml)",
}
DOMAIN_SYMBOLS = {
    "DBL_SPAM": "a domain of the message is on the Spamhaus DBL as a spam domain",
    "DBL_PHISH": "a domain of the message is on the Spamhaus DBL as a phishing domain",
    "DBL_MALWARE": "a domain of the message is on the Spamhaus DBL as a malware domain",
    "DBL_BOTNET": "a domain of the message is on the Spamhaus DBL as a botnet C&C domain",
    "DBL_ABUSED_SPAM": "a domain of the message is a legitimate one abused for spam (DBL)",
    "DBL_ABUSED_REDIRECTOR": "a domain of the message is an abused redirector (DBL)",
    "DBL_ABUSED_PHISH": "a domain of the message is a legitimate one abused for phishing (DBL)",
    "DBL_ABUSED_MALWARE": "a domain of the message is a legitimate one abused for malware (DBL)",
    "DBL_ABUSED_BOTNET": "a domain of the message is a legitimate one abused for botnet C&C (DBL)",
    "SURBL_PHISH": "a domain of the message is on SURBL's phishing list (PH)",
    "SURBL_MALWARE": "a domain of the message is on SURBL's malware list (MW)",
    "SURBL_ABUSE": "a domain of the message is on SURBL's abuse list (spam and other abuse)",
    "SURBL_CRACKED": "a domain of the message is on SURBL's cracked-site list (CR)",
    "URIBL_BLACK": "a domain of the message is on URIBL black (spam sites)",
    "URIBL_GREY": "a domain of the message is on URIBL grey (bulk senders' sites)",
    "URIBL_RED": "a domain of the message is on URIBL red (freshly seen in spam)",
    "URIBL_LOCAL": "a domain of the message is on a domain list of your own "
    "(rules/reputation.toml)",
}
TEMPERROR = "RBL_TEMPERROR"
REPUTATION_SYMBOLS: Mapping[str, str] = {
    **IP_SYMBOLS,
    **DOMAIN_SYMBOLS,
    TEMPERROR: "a DNS list did not answer in time or failed (SERVFAIL): not a hit, scored 0",
}

Checks = Literal["ip", "domain"]
# What a domain list is asked about: link hosts' registrable domains, the From and Reply-To
# domains, the HELO name's registrable domain.
DomainSource = Literal["links", "from", "reply_to", "helo"]
DOMAIN_SOURCES: tuple[DomainSource, ...] = ("links", "from", "reply_to", "helo")

_LIST_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _list_name(value: Any) -> str:
    if not isinstance(value, str) or not _LIST_NAME.fullmatch(value):
        raise ValueError("a list name is lower-case letters, digits and _ (<= 32)")
    return value


def _list_symbol(value: Any) -> str:
    if not isinstance(value, str) or value not in REPUTATION_SYMBOLS or value == TEMPERROR:
        known = ", ".join(s for s in REPUTATION_SYMBOLS if s != TEMPERROR)
        raise ValueError(f"{value!r} is not a symbol of the rbl plugin (known: {known})")
    return value


def _answer_code(value: Any) -> str:
    try:
        address = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    if address is None or address.version != 4 or address not in LIST_ANSWERS:
        raise ValueError(f"{value!r} is not a list answer (an IPv4 address in 127.0.0.0/8)")
    return str(address)


def _bit(value: Any) -> int:
    try:
        mask = int(value) if isinstance(value, str) and value.isdigit() else 0
    except ValueError:
        mask = 0
    if not 1 <= mask <= 255:
        raise ValueError(f"{value!r} is not a bitmask of the answer's last octet (1 to 255)")
    return mask


ListName = Annotated[str, PlainValidator(_list_name)]
ListSymbol = Annotated[str, PlainValidator(_list_symbol)]
AnswerCode = Annotated[str, PlainValidator(_answer_code)]
Bit = Annotated[int, PlainValidator(_bit)]


def _entry_consistent(entry: ListEntry) -> ListEntry:
    if not entry.codes and not entry.bits:
        raise KeyProblem("codes", "a list needs codes or bits (what its answers mean)")
    allowed = IP_SYMBOLS if entry.checks == "ip" else DOMAIN_SYMBOLS
    for key, table in (("codes", entry.codes), ("bits", entry.bits)):
        for symbol in table.values():
            if symbol not in allowed:
                raise KeyProblem(key, f"{symbol} is not a symbol of a {entry.checks} list")
    overlap = set(entry.codes) & set(entry.refused)
    if overlap:
        raise KeyProblem("refused", f"{sorted(overlap)[0]} is also a listing code")
    if entry.checks == "ip" and entry.domains != DOMAIN_SOURCES:
        raise KeyProblem("domains", "only a domain list is asked about domains")
    return entry


@dataclass(frozen=True)
class ListEntry:
    """One `[[lists]]` entry as written."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    name: ListName
    zone: DnsName
    checks: Checks
    codes: Mapping[AnswerCode, ListSymbol] = field(default_factory=dict)
    bits: Mapping[Bit, ListSymbol] = field(default_factory=dict)
    refused: Array[AnswerCode] = ()
    enabled: Flag = True
    ipv6: Flag = True  # an ip list that answers for IPv6 (nibble format) too
    domains: Array[DomainSource] = DOMAIN_SOURCES
    description: Text | None = None


@dataclass(frozen=True)
class ReputationFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    lists: Array[Annotated[ListEntry, AfterValidator(_entry_consistent)]] = ()


@dataclass(frozen=True, slots=True)
class DnsList:
    """One list as the rbl plugin uses it."""

    name: str
    zone: str
    checks: Checks
    meaning: ListCodes
    ipv6: bool = True
    domains: frozenset[str] = frozenset(DOMAIN_SOURCES)
    description: str = ""


@dataclass(frozen=True)
class ReputationPolicy:
    """The enabled lists of rules/reputation.toml (none without the file)."""

    lists: tuple[DnsList, ...] = ()

    @property
    def ip_lists(self) -> tuple[DnsList, ...]:
        return tuple(entry for entry in self.lists if entry.checks == "ip")

    @property
    def domain_lists(self) -> tuple[DnsList, ...]:
        return tuple(entry for entry in self.lists if entry.checks == "domain")


def load_reputation_policy(doc: TomlFile, errors: list[ConfigError]) -> ReputationPolicy:
    """rules/reputation.toml as a policy; problems go to `errors` (file:line) and give an
    empty policy, which the caller then refuses with the other errors."""
    written = _names_unique_checked(doc, errors)
    if written is None:
        return ReputationPolicy()
    lists = tuple(
        DnsList(
            name=entry.name,
            zone=entry.zone,
            checks=entry.checks,
            meaning=ListCodes(
                codes=dict(entry.codes),
                bits=tuple(sorted(entry.bits.items())),
                refused=frozenset(entry.refused),
            ),
            ipv6=entry.ipv6,
            domains=frozenset(entry.domains),
            description=entry.description or "",
        )
        for entry in written.lists
        if entry.enabled
    )
    return ReputationPolicy(lists)


def _names_unique_checked(doc: TomlFile, errors: list[ConfigError]) -> ReputationFile | None:
    found = validate_table(doc, "", ReputationFile, doc.data, errors)
    if found is None:
        return None
    seen: dict[str, int] = {}
    for at, entry in enumerate(found.lists):
        if entry.name in seen:
            errors.append(
                doc.error(
                    f"lists[{at}].name",
                    f"the list name {entry.name!r} is already used by lists[{seen[entry.name]}]",
                )
            )
            return None
        seen[entry.name] = at
    return found
