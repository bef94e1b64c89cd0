"""Who a message claims to be from, as a reader sees it: brands, freemail, protected names.

The policy is admin data in rules/ (validated on load with file:line errors, reloaded on SIGHUP
with the rest of the RuleSet):

    brands.toml     [brands.NAME] domains (what the brand owns), names (as written in a domain
                    label), display (as written in a display name), fuzzy, country_tlds
    freemail.toml   domains = [...] anyone can get an address at ("yahoo.*": any suffix)
    identity.toml   protected_names = [...] (executives and other names worth impersonating),
                    reply_to_domains = [...] (services that legitimately answer for others),
                    on_behalf_senders = [...] (services that write for a person, Reply-To
                    that person: calendar invitations, document shares, e-signatures),
                    own_domains = [...] (the organisation's other domains: never lookalikes
                    of the served ones), served_tld_swaps = false (whether the served name
                    under another suffix counts as a lookalike)

Display names are read the way a mail client shows them (gateway.rfc5322.shown_text: encoded
words decoded, compatibility forms folded, invisible characters dropped) and compared by their
skeleton (gateway.lookalike), so "J\u0430ne Doe" is Jane Doe.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, PlainValidator, Strict, StringConstraints

from gateway.domains import DomainSet, normalized, registrable_domain
from gateway.lookalike import LookalikeIndex, Target, known_registrable, skeleton
from gateway.rfc5322 import addresses_in, shown_text
from gateway.schema import TABLE_CONFIG, Array, DomainName, Flag, validate_table
from gateway.tomlfile import ConfigError, TomlFile

IDENTITY_RULE_FILES = ("identity.toml", "brands.toml", "freemail.toml")
MAX_DISPLAY = 300  # characters of a display name read: a name is short, hostile input is not
MAX_PHRASE_WORDS = 6

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# a host name written in text: labels of letters, digits and hyphens, at least one dot
_TEXT_DOMAIN = re.compile(
    r"(?<![\w@.-])((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}[a-z][a-z0-9-]{1,23})(?![\w@-])"
)


# -- the files as written ------------------------------------------------------------------------


def _freemail_entry(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a list of domain names (got {value!r})")
    entry = normalized(value)
    bare = entry.removesuffix(".*").removeprefix(".")
    if not bare or "@" in bare or "*" in bare or any(c.isspace() for c in bare):
        raise ValueError(f"{value!r} is not a domain name (or name.* for every suffix)")
    return entry


FreemailEntry = Annotated[str, PlainValidator(_freemail_entry)]
Phrase = Annotated[str, Strict(), StringConstraints(strip_whitespace=True, min_length=2)]
Label = Annotated[
    str, Strict(), StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[a-z0-9-]+$")
]


@dataclass(frozen=True)
class BrandEntry:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    domains: Array[DomainName]
    names: Array[Label] = ()
    display: Array[Phrase] = ()
    fuzzy: Flag = True
    country_tlds: Flag = False


@dataclass(frozen=True)
class BrandsFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    brands: Mapping[str, BrandEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class FreemailFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    domains: Array[FreemailEntry] = ()


@dataclass(frozen=True)
class IdentityFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    protected_names: Array[Phrase] = ()
    reply_to_domains: Array[DomainName] = ()
    on_behalf_senders: Array[DomainName] = ()
    own_domains: Array[DomainName] = ()
    served_tld_swaps: Flag = False


# -- the policy ----------------------------------------------------------------------------------


def words_of(text: str) -> tuple[str, ...]:
    """The words of a name by their skeletons ("J\u0430ne  DOE" -> ("jane", "doe")), bounded."""
    return tuple(skeleton(w) for w in _WORD.findall(text[:MAX_DISPLAY]))


@dataclass(frozen=True)
class Freemail:
    """Domains anyone can get a mailbox at: exact, ".below", and "name.*" for any suffix."""

    domains: DomainSet = field(default_factory=DomainSet)
    any_suffix: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Freemail:
        wild = {e.removesuffix(".*") for e in entries if e.endswith(".*")}
        return cls(DomainSet.parse(e for e in entries if not e.endswith(".*")), frozenset(wild))

    def matches(self, domain: str) -> bool:
        """`domain` is a freemail domain itself: a subdomain of "yahoo.*" (reply.yahoo.com)
        is the company's own service, not a mailbox anyone gets."""
        if self.domains.matches(domain):
            return True
        if not self.any_suffix:
            return False
        name = normalized(domain)
        registrable = registrable_domain(name)
        return registrable == name and registrable.partition(".")[0] in self.any_suffix


@dataclass(frozen=True)
class IdentityPolicy:
    """rules/brands.toml, freemail.toml and identity.toml, ready for questions."""

    brands: LookalikeIndex = field(default_factory=lambda: LookalikeIndex(()))
    freemail: Freemail = field(default_factory=Freemail)
    # display phrase (as words) -> brand name
    brand_phrases: Mapping[tuple[str, ...], str] = field(default_factory=dict)
    protected_names: Mapping[tuple[str, ...], str] = field(default_factory=dict)
    reply_to_domains: DomainSet = field(default_factory=DomainSet)
    # authors whose mail is written for a person whose address is the Reply-To
    on_behalf_senders: DomainSet = field(default_factory=DomainSet)
    # the organisation's own domains besides the served ones (sister domains, old names):
    # never lookalikes of the served domains
    own_domains: DomainSet = field(default_factory=DomainSet)
    # the served name under another suffix (ours.com / ours.net) counts as a lookalike: for
    # sites that own no sister domains; off by default (a sister domain is the usual case)
    served_tld_swaps: bool = False

    def owns(self, host: str) -> bool:
        """`host` is one of own_domains or below one (an entry "ours.de" covers mail.ours.de)."""
        return self.own_domains.matches(host) or self.own_domains.matches(registrable_domain(host))

    def brand_named(self, display: str) -> str:
        """The brand whose display phrase appears as whole words in `display`, or ""."""
        return _phrase_in(words_of(display), self.brand_phrases)

    def protected_named(self, display: str) -> str:
        """The protected name `display` shows (as whole words, either order of a two-word
        name: "Doe, Jane"), or ""."""
        return _phrase_in(words_of(display), self.protected_names)


def _phrase_in(words: tuple[str, ...], phrases: Mapping[tuple[str, ...], str]) -> str:
    if not phrases:
        return ""
    for size in range(1, min(MAX_PHRASE_WORDS, len(words)) + 1):
        for start in range(len(words) - size + 1):
            found = phrases.get(words[start : start + size])
            if found:
                return found
    return ""


def load_identity_policy(docs: Mapping[str, TomlFile], errors: list[ConfigError]) -> IdentityPolicy:
    """The identity policy from whichever of IDENTITY_RULE_FILES `docs` holds (each optional:
    no file, nothing listed); problems are appended to `errors`."""
    targets: list[Target] = []
    phrases: dict[tuple[str, ...], str] = {}
    if "brands.toml" in docs:
        doc = docs["brands.toml"]
        written = validate_table(doc, "", BrandsFile, doc.data, errors) or BrandsFile()
        for name, entry in written.brands.items():
            names = set(entry.names) or {name.lower()}
            owned = DomainSet.parse(entry.domains)
            exact = {registrable_domain(d) for d in owned.exact}
            if not entry.domains:
                errors.append(doc.error(f"brands.{name}.domains", "must not be empty"))
            targets.append(
                Target(
                    name=name,
                    names=frozenset(names),
                    domains=DomainSet(frozenset(owned.exact | exact), owned.parents),
                    fuzzy=entry.fuzzy,
                    country_tlds=entry.country_tlds,
                )
            )
            for phrase in entry.display or tuple(names):
                key = words_of(phrase)
                if key:
                    phrases.setdefault(key, name)
    freemail = Freemail()
    if "freemail.toml" in docs:
        doc = docs["freemail.toml"]
        found = validate_table(doc, "", FreemailFile, doc.data, errors) or FreemailFile()
        freemail = Freemail.parse(found.domains)
    protected: dict[tuple[str, ...], str] = {}
    reply_to = DomainSet()
    on_behalf = DomainSet()
    own = DomainSet()
    served_tld_swaps = False
    if "identity.toml" in docs:
        doc = docs["identity.toml"]
        written_identity = validate_table(doc, "", IdentityFile, doc.data, errors)
        if written_identity is not None:
            for index, name in enumerate(written_identity.protected_names):
                key = words_of(name)
                if not key:
                    errors.append(
                        doc.error("protected_names", f"item {index + 1}: {name!r} has no words")
                    )
                    continue
                protected.setdefault(key, name)
                if len(key) == 2:  # "Doe, Jane"
                    protected.setdefault((key[1], key[0]), name)
            reply_to = DomainSet.parse(written_identity.reply_to_domains)
            on_behalf = DomainSet.parse(written_identity.on_behalf_senders)
            own = DomainSet.parse(written_identity.own_domains)
            served_tld_swaps = written_identity.served_tld_swaps
    return IdentityPolicy(
        brands=LookalikeIndex(tuple(targets)),
        freemail=freemail,
        brand_phrases=phrases,
        protected_names=protected,
        reply_to_domains=reply_to,
        on_behalf_senders=on_behalf,
        own_domains=own,
        served_tld_swaps=served_tld_swaps,
    )


# -- reading display names -----------------------------------------------------------------------


# the suffixes a reader takes for a domain's: the old generic ones and the countries'. Under
# the newer ones a name is as often a person's ("r.hughes", "john.smith") as a domain
_READ_AS_DOMAIN = frozenset(("com", "net", "org", "info", "biz", "edu", "gov", "mil", "int"))


def domains_shown(display: str) -> tuple[list[str], list[str]]:
    """(domains of addresses, bare domains) a reader sees in a display name: "paypal.com
    Support" shows paypal.com; "ceo@corp.example" shows the address's domain. A bare domain
    counts only under a real public suffix ending in a country code or an old generic TLD, so
    "Node.js", "j.doe" or "r.hughes" is no domain."""
    text = shown_text(display[:MAX_DISPLAY])
    address_domains = [a.rpartition("@")[2].lower().rstrip(".") for a in addresses_in(text)]
    bare: list[str] = []
    lowered = unicodedata.normalize("NFKC", text).lower()
    for match in _TEXT_DOMAIN.finditer(lowered):
        domain = match.group(1)
        tld = domain.rpartition(".")[2]
        if not (len(tld) == 2 or tld in _READ_AS_DOMAIN):
            continue
        registrable = known_registrable(domain)
        if registrable is None or len(registrable.partition(".")[0]) < 2:
            continue
        if domain not in bare and domain not in address_domains:
            bare.append(domain)
    return address_domains, bare


def same_organisation(a: str, b: str) -> bool:
    """Both domains have one registrable domain (public suffix list)."""
    return bool(a) and registrable_domain(a) == registrable_domain(b)
