"""Sender identity at DATA: does the message pretend to be someone it is not?

What a reader trusts is the display name and the domains in front of them, so this reads the
author (ctx.message.authors), Reply-To, the envelope sender and the link hosts, against the
served domains (config [relay] domains) and rules/brands.toml, freemail.toml, identity.toml
(gateway.identity). Lookalike domains are gateway.lookalike's.

Display names: IDENTITY_NAME_DOMAIN when a name shows a bare domain of another organisation
("paypal.com Support" <x@evil.example>; a shown *address* of another organisation is DMARC's
DMARC_FROM_DISPLAY_ADDRESS, not repeated here); IDENTITY_NAME_SERVED when it shows an address
or domain of a served domain, and IDENTITY_NAME_PROTECTED a protected name, on external mail
(a From outside the served domains, or inside them without a DMARC pass and not from a relay
network); IDENTITY_NAME_BRAND / IDENTITY_FREEMAIL_BRAND a brand's name on a domain the brand
does not own / on freemail.

Lookalikes: IDENTITY_*_LOOKALIKE_SERVED when a domain imitates a served one by homoglyphs,
typos or hyphenation; the served name under another suffix (ours.com / ours.de) only with
identity.toml served_tld_swaps = true, since it is far more often a sister domain or another
organisation of that name than a spoof. The served domains and identity.toml own_domains (the
organisation's other domains) are ours: never lookalikes, and one organisation for Reply-To and
display-name domains.

Reply-To: IDENTITY_REPLYTO_FREEMAIL and IDENTITY_REPLYTO_UNRELATED when answers go to another
organisation than the author's. Mailing lists are the normal case of that (Reply-To the list;
or From rewritten to the list and Reply-To the author): a Reply-To or From in the domain of the
message's List-Id or List-Post is not counted, nor a Reply-To of identity.toml reply_to_domains.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.auth.dmarc import DmarcResult, DmarcVerdict
from gateway.domains import DomainSet, registrable_domain
from gateway.identity import IdentityPolicy, domains_shown, same_organisation
from gateway.lookalike import Imitation, LookalikeIndex, Target, warm_up
from gateway.message import ParsedMessage
from gateway.plugin import MessageContext, Phase, PluginBase, Services
from gateway.rfc5322 import Mailbox, mailboxes_of
from gateway.text import printable
from gateway.verdict import Finding

MAX_MAILBOXES = 5  # of From or Reply-To looked at: one is normal, more is already a finding
MAX_LINK_HOSTS = 50  # distinct link hosts checked for lookalikes (the URL list is bounded too)
_ANGLE = re.compile(r"<([^<>]{1,300})>")

_LOOKALIKE = {
    "from": "IDENTITY_FROM_LOOKALIKE",
    "reply-to": "IDENTITY_REPLYTO_LOOKALIKE",
    "sender": "IDENTITY_SENDER_LOOKALIKE",
    "link": "IDENTITY_LINK_LOOKALIKE",
}


def _dmarc_passed(ctx: MessageContext) -> bool | None:
    """True when DMARC passed for every author domain, False when it failed for one, None when
    nothing is known (no record, no answer, the dmarc plugin not run)."""
    dmarc = ctx.results.get(DmarcResult)
    if dmarc is None or not dmarc.evaluations:
        return None
    verdicts = {ev.verdict for ev in dmarc.evaluations}
    if DmarcVerdict.FAIL in verdicts:
        return False
    return True if verdicts == {DmarcVerdict.PASS} else None


def served_index(domains: Sequence[str]) -> LookalikeIndex:
    """The served domains as lookalike targets: each one's organisation owns its domain and
    everything below it (a served "mail.corp.example" protects corp.example)."""
    targets: dict[str, Target] = {}
    for entry in domains:
        domain = registrable_domain(entry.removeprefix("."))
        label = domain.partition(".")[0]
        if not label or domain in targets:
            continue
        targets[domain] = Target(
            name=domain,
            names=frozenset({label}),
            domains=DomainSet(frozenset({domain}), frozenset({domain})),
        )
    return LookalikeIndex(tuple(targets.values()))


_LIST_FIELDS = ("list-id", "list-post", "list-help", "list-subscribe", "list-unsubscribe")
_MAILING_LIST = re.compile(r"list\s+[^\s@;]+@([^\s;>]+)", re.I)  # Mailing-List (ezmlm, Yahoo)
_URL_HOST = re.compile(r"^(?:mailto:[^@]*@|https?://)?([^/?#>:\s]+)", re.I)


def list_domains(message: ParsedMessage) -> set[str]:
    """Registrable domains of the mailing list (or bulk sender) that delivered the message:
    List-Id's "name.domain", the mailto: and web hosts of List-Post, -Help, -Subscribe and
    -Unsubscribe (RFC 2369, 2919), ezmlm's Mailing-List. Reply-To to the list is normal there,
    and so is a From rewritten to the list with the author in Reply-To."""
    found: set[str] = set()
    for name in _LIST_FIELDS:
        value = message.first(name)
        if not value:
            continue
        for inner in _ANGLE.findall(value[:1000])[:4]:
            match = _URL_HOST.match(inner.strip())
            host = match.group(1).rstrip(".").lower() if match else ""
            if "." in host:
                found.add(registrable_domain(host))
    legacy = message.first("mailing-list")
    if legacy:
        for host in _MAILING_LIST.findall(legacy[:1000])[:2]:
            found.add(registrable_domain(host.rstrip(".").lower()))
    return found


def _mailboxes(message: ParsedMessage, name: str) -> list[Mailbox]:
    return mailboxes_of(message.values(name), MAX_MAILBOXES)


class IdentityCheck(PluginBase):
    name: ClassVar[str] = "identity"
    phases: ClassVar[frozenset[Phase]] = frozenset({Phase.DATA})
    symbols: ClassVar[Mapping[str, str]] = {
        "IDENTITY_NAME_DOMAIN": "the From display name shows a domain of another organisation",
        "IDENTITY_NAME_SERVED": "external mail whose display name shows a served domain",
        "IDENTITY_NAME_PROTECTED": "external mail under a protected name (rules/identity.toml)",
        "IDENTITY_NAME_BRAND": "the display name names a brand; the From domain is not its",
        "IDENTITY_FREEMAIL_BRAND": "a freemail From whose display name names a brand",
        "IDENTITY_FROM_LOOKALIKE": "the From domain imitates a brand (rules/brands.toml)",
        "IDENTITY_FROM_LOOKALIKE_SERVED": "the From domain imitates a served domain",
        "IDENTITY_REPLYTO_LOOKALIKE": "the Reply-To domain imitates a brand",
        "IDENTITY_REPLYTO_LOOKALIKE_SERVED": "the Reply-To domain imitates a served domain",
        "IDENTITY_SENDER_LOOKALIKE": "the envelope sender's domain imitates a brand",
        "IDENTITY_SENDER_LOOKALIKE_SERVED": "the envelope sender's domain imitates a served one",
        "IDENTITY_LINK_LOOKALIKE": "a link host imitates a brand",
        "IDENTITY_LINK_LOOKALIKE_SERVED": "a link host imitates a served domain",
        "IDENTITY_REPLYTO_FREEMAIL": "replies go to a freemail address, not the author's domain",
        "IDENTITY_REPLYTO_UNRELATED": "replies go to another organisation than the author's",
    }
    optional_requires: ClassVar[frozenset[type[Any]]] = frozenset({DmarcResult})
    on_error = None  # advisory: a bug here must not hold mail back

    def __init__(self, services: Services) -> None:
        self.services = services
        relay = services.settings.relay
        self.served = DomainSet.parse(relay.domains)
        self.served_targets = served_index(relay.domains)
        self.relay_networks = relay.relay_networks
        warm_up()

    async def check(self, phase: Phase, ctx: MessageContext) -> Sequence[Finding]:
        policy = ctx.rules.identity
        message = ctx.message
        authors = message.authors.mailboxes[:MAX_MAILBOXES]
        external = self._external(ctx, authors)
        lists = list_domains(message)
        found: list[Finding] = []
        for box in authors:
            found += self._display_findings(policy, box, external)
        found += self._reply_to_findings(policy, message, authors, lists, _dmarc_passed(ctx))
        hosts: list[tuple[str, str]] = [("from", b.domain) for b in authors]
        hosts += [("reply-to", b.domain) for b in _mailboxes(message, "reply-to")]
        if ctx.mail_from and "@" in ctx.mail_from:
            hosts.append(("sender", ctx.mail_from.rpartition("@")[2]))
        seen_links: set[str] = set()
        for url in await message.urls():
            if url.host and url.host not in seen_links and len(seen_links) < MAX_LINK_HOSTS:
                seen_links.add(url.host)
                hosts.append(("link", url.host))
        found += self._lookalike_findings(policy, hosts)
        return _once(found)

    def _external(self, ctx: MessageContext, authors: Sequence[Mailbox]) -> bool:
        """Mail from outside: an author domain we do not serve, or one we serve that did not
        authenticate (no DMARC pass) and did not come from one of our relay networks."""
        if not authors or any(not self.served.matches(b.domain) for b in authors):
            return True
        if self._from_relay_network(ctx.client.ip):
            return False
        dmarc = ctx.results.get(DmarcResult)
        if dmarc is None or not dmarc.evaluations:
            return True
        return any(ev.verdict is not DmarcVerdict.PASS for ev in dmarc.evaluations)

    def _ours(self, policy: IdentityPolicy, host: str) -> bool:
        """A served domain (config [relay] domains, with their organisation's registrable
        domain) or one of identity.toml own_domains."""
        return bool(
            self.served.matches(host) or self.served_targets.owner(host) or policy.owns(host)
        )

    def _one_organisation(self, policy: IdentityPolicy, a: str, b: str) -> bool:
        """One registrable domain, or both ours (example.com and its sister example.de)."""
        return same_organisation(a, b) or (self._ours(policy, a) and self._ours(policy, b))

    def _from_relay_network(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.relay_networks)

    def _display_findings(
        self, policy: IdentityPolicy, box: Mailbox, external: bool
    ) -> list[Finding]:
        display = box.display
        if not display:
            return []
        found: list[Finding] = []
        sent = box.domain.rstrip(".").lower()
        shown_addresses, shown_bare = domains_shown(display)
        if external:
            for domain in shown_addresses + shown_bare:
                if self.served.matches(domain) or self.served_targets.owner(domain):
                    detail = f"{domain} shown, {box.local}@{sent} sent"
                    found.append(Finding("IDENTITY_NAME_SERVED", detail=printable(detail, 200)))
                    break
        for domain in shown_bare:
            if not self._one_organisation(policy, domain, sent):
                detail = f"{domain} shown, {sent} sent"
                found.append(Finding("IDENTITY_NAME_DOMAIN", detail=printable(detail, 200)))
                break
        if external:
            protected = policy.protected_named(display)
            if protected:
                detail = f"{protected!r} from {box.local}@{sent}"
                found.append(Finding("IDENTITY_NAME_PROTECTED", detail=printable(detail, 200)))
        brand = policy.brand_named(display)
        if brand:
            # a brand's own freemail service (outlook.com, icloud.com) is still freemail: the
            # brand writes from its corporate domains, anyone can write from those
            detail = printable(f"{brand} named, {sent} sent", 200)
            if policy.freemail.matches(sent):
                found.append(Finding("IDENTITY_FREEMAIL_BRAND", detail=detail))
            else:
                owner = policy.brands.owner(sent)
                if owner is None or owner.name != brand:
                    found.append(Finding("IDENTITY_NAME_BRAND", detail=detail))
        return found

    def _reply_to_findings(
        self,
        policy: IdentityPolicy,
        message: ParsedMessage,
        authors: Sequence[Mailbox],
        lists: set[str],
        dmarc_passed: bool | None = None,
    ) -> list[Finding]:
        """`dmarc_passed`: False when DMARC failed for the author's domain (a forged platform
        address then earns no exemption), None when unknown."""
        replies = _mailboxes(message, "reply-to")
        if not replies or not authors:
            return []
        author_domains = [b.domain.rstrip(".").lower() for b in authors]
        if any(registrable_domain(d) in lists for d in author_domains):
            return []  # From rewritten to the list: Reply-To is the real author
        if dmarc_passed is not False and all(
            policy.on_behalf_senders.matches(d)
            or policy.on_behalf_senders.matches(registrable_domain(d))
            for d in author_domains
        ):
            return []  # a calendar, a document service... writes for the person it names
        for box in replies:
            domain = box.domain.rstrip(".").lower()
            if any(self._one_organisation(policy, domain, d) for d in author_domains):
                continue
            # a company's national domains (email.trustedshops.de, trustedshops.com); the
            # served domains' sisters are the site's to declare (own_domains)
            sister = any(
                _sister_domains(domain, d)
                and not (self._ours(policy, domain) or self._ours(policy, d))
                for d in author_domains
            )
            if sister and dmarc_passed is not False:
                continue
            if registrable_domain(domain) in lists or policy.reply_to_domains.matches(domain):
                continue
            address = f"{box.local}@{domain}".lower()
            if any(address == f"{a.local}@{a.domain}".lower() for a in authors):
                continue
            detail = printable(f"{box.local}@{domain} for {author_domains[0]}", 200)
            if policy.freemail.matches(domain):
                return [Finding("IDENTITY_REPLYTO_FREEMAIL", detail=detail)]
            if box.display and any(box.display == a.display for a in authors):
                continue  # one person, two addresses of their own ("Neil" <a@x>, <b@y>)
            return [Finding("IDENTITY_REPLYTO_UNRELATED", detail=detail)]
        return []

    def _lookalike_findings(
        self, policy: IdentityPolicy, hosts: Sequence[tuple[str, str]]
    ) -> list[Finding]:
        found: list[Finding] = []
        for where, host in hosts:
            host = host.rstrip(".").lower()
            if not host or self._ours(policy, host):
                continue
            if policy.freemail.matches(host):  # gmx.net is no lookalike of gmail
                continue
            served: Imitation | None = self.served_targets.imitation(host)
            # the served name under another suffix (ours.com / ours.de / ours.net) is far more
            # often a sister domain or another organisation of that name than a spoof: it
            # counts only where the admin says the site owns no such domains
            if served is not None and (served.kind != "tld_swap" or policy.served_tld_swaps):
                symbol = _LOOKALIKE[where] + "_SERVED"
                found.append(Finding(symbol, detail=printable(served.describe(), 200)))
                continue
            brand = policy.brands.imitation(host)
            if brand is not None:
                found.append(Finding(_LOOKALIKE[where], detail=printable(brand.describe(), 200)))
        return found


def _once(found: list[Finding]) -> list[Finding]:
    """One finding per symbol (the first, with its detail): three lookalike links are one
    piece of evidence, not three."""
    seen: set[str] = set()
    out: list[Finding] = []
    for finding in found:
        if finding.symbol not in seen:
            seen.add(finding.symbol)
            out.append(finding)
    return out


def _sister_domains(a: str, b: str) -> bool:
    """The same name registered under two public suffixes (shop.de and shop.com): one company's
    national domains, however far apart a lookalike check would put the two. A name of three
    letters or fewer is too short to say so."""
    first, second = registrable_domain(a), registrable_domain(b)
    name = first.partition(".")[0]
    return len(name) > 3 and first != second and name == second.partition(".")[0]
