"""Does a domain imitate one it is not? Brands (rules/brands.toml) and the served domains.

Phishers register names a reader takes for the real one at a glance. The tricks, each a `kind`
of `Imitation`, checked on the registrable domain (public suffix list) and the labels above it:

    homoglyph        letters of other scripts or ASCII lookalikes ("p\u0430ypal", "paypa1",
                     "rnicrosoft"), punycode (xn--) decoded first: the label's skeleton (Unicode
                     confusables, package confusable-homoglyphs) is the brand's name
    edit_distance    one or two letters changed, added, dropped or swapped ("paypall",
                     "micorsoft": Damerau-Levenshtein, <= 1 from 5 letters, <= 2 from 10,
                     never for a label under 5 letters: "mail" is not "gmail")
    tld_swap         the brand's name under a real suffix it does not own ("paypal.co"; a
                     typo's unknown suffix, "yahoo.comm", cannot be registered)
    hyphenated       the name as a hyphen-separated part ("paypal-secure-login.com",
                     "paypal-com.net")
    embedded_name    the name glued to words of a phishing lure ("securepaypal.com",
                     "dhldelivery.com"; LURE_WORDS), not to any word: "netflixtechblog.com"
                     and "googleprojectzero" are the brands' own blogs
    embedded_domain  one of the brand's own domains as labels of another ("paypal.com.evil.net")

A host of the target's own domains never imitates it, nor does a host whose registrable domain
belongs to any target (amazon.de is not a lookalike of amazon.com when Amazon owns it: each
brand lists its domains, or says `country_tlds`). A brand's exact name under a private suffix
of the list (google.github.io, an account on a hosting platform) is not a TLD swap either: those
names are accounts the brand usually holds.

Cost: one skeleton and a few set lookups per host, an edit distance only against names of a
close length, and a bounded cache of answers per index, so a message of 200 links costs little.
"""

from __future__ import annotations

import contextlib
import functools
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from publicsuffixlist import PublicSuffixList

from gateway.domains import DomainSet, normalized, registrable_domain


def _word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


MAX_HOST = 253
_CACHE_SIZE = 4096
# ccTLDs sold as generic names or handed out free: a brand owns its national domains, not these
RISKY_COUNTRY_TLDS = _word_set(
    "co cc ws tk ml ga cf gq io me ly to tv nu su ai am fm gg la sh st vc xyz"
)
# words phishers glue to a brand's name to make a domain: "paypalsecure", "dhldelivery"
LURE_WORDS = _word_set(
    """
    secure security login signin logon verify verification account accounts support
    service services help helpdesk update updates online billing payment payments pay
    delivery express parcel parcels track tracking shipping shipment notice notices alert
    alerts center centre team id auth confirm customer care official portal access unlock
    recovery reset wallet bank banking cloud drive docs share file files document
    documents sign inc corp us uk mail web app apps my e 365 live info
    """
)
_MAX_LURE_WORDS = 2
# ASCII sequences that render like another letter (lower case, before the confusables map)
_ASCII_FOLDS = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("|", "l"))


@functools.cache
def _confusable_map() -> Mapping[int, str]:
    """Non-ASCII character -> the ASCII letter or digit it renders as, from the Unicode
    confusables data shipped in confusable-homoglyphs (MIT; Unicode data licence)."""
    text = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text()
    data: dict[str, list[dict[str, str]]] = json.loads(text)
    table: dict[int, str] = {}
    for char, entries in data.items():
        if len(char) != 1 or char.isascii():
            continue
        for entry in entries:
            target = entry["c"]
            if len(target) == 1 and target.isascii() and (target.isalnum() or target == "-"):
                table[ord(char)] = target.lower()
                break
    return table


def skeleton(label: str) -> str:
    """What `label` looks like, as lower-case ASCII where it can: NFKC, confusable letters of
    other scripts mapped to the ASCII ones, then ASCII lookalikes folded (rn -> m, 0 -> o,
    1 -> l). Two labels with one skeleton look the same to a reader."""
    folded = unicodedata.normalize("NFKC", label).lower()
    folded = "".join(c for c in folded if unicodedata.category(c) not in ("Cf", "Mn"))
    folded = folded.translate(_confusable_map())
    for seq, letter in _ASCII_FOLDS:
        folded = folded.replace(seq, letter)
    return folded


def unicode_host(host: str) -> str:
    """`host` lower case, without a final dot, each xn-- label decoded (kept when invalid)."""
    labels = normalized(host).split(".")
    out: list[str] = []
    for label in labels:
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError, ValueError):  # invalid: kept as written
                label = label.encode("ascii").decode("idna")
        out.append(label)
    return ".".join(out)


def edit_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (optimal string alignment) of `a` and `b`, or `limit + 1`
    as soon as it must exceed `limit` (so a long label costs no more than the band)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            value = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, previous2[j - 2] + 1)
            current[j] = value
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def fuzzy_limit(name: str) -> int:
    """How many edits still read as `name`: none below 5 letters (too many real words are one
    edit from "ups" or "citi"), one from 5, two from 10."""
    if len(name) >= 10:
        return 2
    return 1 if len(name) >= 5 else 0


@functools.cache
def _icann_psl() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True)


@functools.cache
def _known_psl() -> PublicSuffixList:
    return PublicSuffixList(accept_unknown=False)


def known_suffix(host: str) -> bool:
    """`host` ends in a suffix of the public suffix list (a TLD one can register under)."""
    return _known_psl().publicsuffix(host) is not None


def known_registrable(host: str) -> str | None:
    """The registrable domain of `host` under a known suffix, or None (unknown TLD, a bare
    suffix): what text like "j.doe" or "node.js" is not."""
    found: str | None = _known_psl().privatesuffix(host)
    return found


def warm_up() -> None:
    """Load the suffix lists and the confusables table now (a few hundred ms), at start-up,
    not on the event loop in the middle of the first message."""
    _confusable_map()
    _icann_psl()
    _known_psl()
    registrable_domain("warm.example.com")


def looks_like_host(host: str) -> bool:
    """Letters (any script), digits, hyphens and dots only: what a URL extractor that ran on
    into "%2f" or "&nbsp;" hands over is no host to compare."""
    return all(c.isalnum() or c in ".-" for c in host)


def glued_to_lure(label: str, name: str) -> bool:
    """`label` is `name` with up to two LURE_WORDS before or after it ("securepaypal",
    "appleidverify", "dhldelivery")."""
    at = label.find(name)
    while at != -1:
        if _lure_words(label[:at]) and _lure_words(label[at + len(name) :]):
            return label != name
        at = label.find(name, at + 1)
    return False


def _lure_words(rest: str, depth: int = 0) -> bool:
    """`rest` is empty, or one to _MAX_LURE_WORDS lure words written together."""
    if not rest:
        return True
    if depth >= _MAX_LURE_WORDS:
        return False
    return any(
        rest.startswith(word) and _lure_words(rest[len(word) :], depth + 1) for word in LURE_WORDS
    )


def split_registrable(host: str) -> tuple[str, str, str]:
    """(labels above the registrable domain, its first label, its suffix) of a Unicode host:
    "login.paypal.com.evil.co.uk" -> ("login.paypal.com", "evil", "co.uk")."""
    domain = registrable_domain(host)
    label, _, suffix = domain.partition(".")
    above = host[: -len(domain)].rstrip(".") if host != domain else ""
    return above, label, suffix


def private_suffix(host: str) -> bool:
    """The registrable domain of `host` sits under a private suffix of the list (github.io,
    blogspot.com, herokuapp.com...): an account on someone's platform, not a registration."""
    domain = registrable_domain(host)
    icann: str | None = _icann_psl().privatesuffix(domain)
    return icann is not None and icann != domain


@dataclass(frozen=True, slots=True)
class Target:
    """Something worth imitating: a brand, or the organisation of a served domain.

    `names`: the brand's names as written in a domain label ("paypal"); `domains`: what it owns
    (exact registrable domains, ".parent" for below); `fuzzy`: whether a name one or two edits
    away still imitates it (off for dictionary words: "apple" and "apply"); `country_tlds`: the
    name under any national suffix is its own (amazon.de), but not under RISKY_COUNTRY_TLDS.
    """

    name: str
    names: frozenset[str]
    domains: DomainSet
    fuzzy: bool = True
    country_tlds: bool = False

    def owns(self, host: str) -> bool:
        domain = registrable_domain(host)
        if self.domains.matches(host) or self.domains.matches(domain):
            return True
        if not self.country_tlds:
            return False
        label, _, suffix = domain.partition(".")
        if label not in self.names:
            return False
        parts = suffix.split(".")
        national = len(parts[-1]) == 2 and parts[-1] not in RISKY_COUNTRY_TLDS
        generic_second = len(parts) == 1 or parts[0] in ("co", "com", "ne", "or", "org")
        return national and generic_second and len(parts) <= 2


@dataclass(frozen=True, slots=True)
class Imitation:
    """`host` imitates `target` by `kind` (see the module docstring)."""

    target: str
    kind: str
    host: str

    def describe(self) -> str:
        return f"{self.host} imitates {self.target} ({self.kind.replace('_', ' ')})"


@dataclass
class LookalikeIndex:
    """Targets arranged for fast questions: exact skeletons, names by length, own domains."""

    targets: Sequence[Target]
    _by_skeleton: dict[str, Target] = field(default_factory=dict, init=False)
    _fuzzy_by_length: dict[int, list[tuple[str, Target]]] = field(default_factory=dict, init=False)
    _glued: list[tuple[str, Target]] = field(default_factory=list, init=False)
    _own_exact: dict[str, Target] = field(default_factory=dict, init=False)
    _own_parents: dict[str, Target] = field(default_factory=dict, init=False)
    _own_national: dict[str, Target] = field(default_factory=dict, init=False)
    _cache: dict[str, Imitation | None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for target in self.targets:
            for name in target.names:
                key = skeleton(name)
                self._by_skeleton.setdefault(key, target)
                if target.fuzzy and fuzzy_limit(key):
                    self._fuzzy_by_length.setdefault(len(key), []).append((key, target))
                if len(key) >= 3:
                    self._glued.append((key, target))
            for domain in target.domains.exact:
                self._own_exact.setdefault(domain, target)
            for domain in target.domains.parents:
                self._own_parents.setdefault(domain, target)
            if target.country_tlds:
                for name in target.names:
                    self._own_national.setdefault(name, target)

    def owner(self, host: str) -> Target | None:
        """The target owning `host` (its own domain), if any: a few dictionary lookups."""
        name = normalized(host)
        domain = registrable_domain(name)
        found = self._own_exact.get(name) or self._own_exact.get(domain)
        if found is not None:
            return found
        if self._own_parents:
            dot = name.find(".")
            while dot != -1:
                found = self._own_parents.get(name[dot + 1 :])
                if found is not None:
                    return found
                dot = name.find(".", dot + 1)
        found = self._own_national.get(domain.partition(".")[0])
        return found if found is not None and found.owns(domain) else None

    def imitation(self, host: str) -> Imitation | None:
        """What `host` imitates, or None (also for a host some target owns)."""
        key = normalized(host)
        if key in self._cache:
            return self._cache[key]
        found = self._imitation(key)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def _imitation(self, host: str) -> Imitation | None:
        if not host or len(host) > MAX_HOST or "." not in host or not looks_like_host(host):
            return None
        if host.replace(".", "").isdigit():  # an IPv4 literal: the links checks' business
            return None
        shown = unicode_host(host)
        if self.owner(shown) is not None or (shown != host and self.owner(host) is not None):
            return None
        above, label, suffix = split_registrable(shown)
        if not label or not suffix:
            return None
        seen = skeleton(label)
        target = self._by_skeleton.get(seen)
        if target is not None:
            if seen != label.lower():
                return Imitation(target.name, "homoglyph", host)
            if not private_suffix(shown) and known_suffix(shown):
                return Imitation(target.name, "tld_swap", host)
        parts = [p for p in seen.split("-") if p]
        if len(parts) > 1:
            for part in parts:
                target = self._by_skeleton.get(part)
                if target is not None:
                    return Imitation(target.name, "hyphenated", host)
        if len(seen) >= 5:
            for name, target in self._fuzzy_by_length_near(len(seen)):
                limit = fuzzy_limit(name)
                if 0 < edit_distance(seen, name, limit) <= limit:
                    return Imitation(target.name, "edit_distance", host)
        for name, target in self._glued:
            if len(seen) > len(name) and name in seen and glued_to_lure(seen, name):
                return Imitation(target.name, "embedded_name", host)
        if above:
            labels = above.split(".")
            for start in range(len(labels)):
                for stop in range(start + 2, min(start + 4, len(labels) + 1)):
                    target = self._own_exact.get(".".join(labels[start:stop]))
                    if target is not None:
                        return Imitation(target.name, "embedded_domain", host)
        return None

    def _fuzzy_by_length_near(self, length: int) -> Iterable[tuple[str, Target]]:
        for near in range(length - 2, length + 3):
            yield from self._fuzzy_by_length.get(near, ())
