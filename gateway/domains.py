"""One domain matcher and one registrable-domain function for the whole gateway.

Every list of domains an operator or admin writes (served domains, allow/block lists, TLS and
attachment exceptions, trusted ARC sealers, distrusted SPF includes) means the same thing:

    "example.com"    exactly that domain
    ".example.com"   every domain below example.com, but not example.com itself

(list both for both). Before, auth.toml read ".example.com" as "the domain and below" while the
other files read it as "below only": the same entry meant two things depending on the file.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


def normalized(domain: str) -> str:
    """Lower case, no final dot (a trailing dot names the same domain: it must not slip past)."""
    return domain.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class DomainSet:
    """Domains as an admin lists them: `exact` names, and `parents` from ".parent" entries."""

    exact: frozenset[str] = frozenset()
    parents: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> DomainSet:
        exact: set[str] = set()
        parents: set[str] = set()
        for entry in entries:
            name = normalized(entry)
            if name.startswith("."):
                parents.add(name[1:])
            elif name:
                exact.add(name)
        return cls(frozenset(exact), frozenset(parents))

    def __bool__(self) -> bool:
        return bool(self.exact or self.parents)

    def matches(self, domain: str) -> bool:
        """`domain` is listed exactly, or lies strictly below a ".parent" entry.

        Costs one set lookup per label of `domain`, whatever the length of the list."""
        name = normalized(domain)
        if not name:
            return False
        if name in self.exact:
            return True
        if not self.parents:
            return False
        dot = name.find(".")
        while dot != -1:
            if name[dot + 1 :] in self.parents:
                return True
            dot = name.find(".", dot + 1)
        return False


def domain_matches(domain: str, entries: Iterable[str]) -> bool:
    """`domain` matches one of `entries` (see the module docstring for what a leading dot means)."""
    return _cached_set(tuple(entries)).matches(domain)


@functools.lru_cache(maxsize=256)
def _cached_set(entries: tuple[str, ...]) -> DomainSet:
    return DomainSet.parse(entries)


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.lru_cache(maxsize=1 << 14)
def registrable_domain(host: str) -> str:
    """The registrable domain of `host` by the public suffix list ("www.example.co.uk" ->
    "example.co.uk"; "www.example.com" -> "example.com"), or the host itself when it has no
    registrable part (a bare suffix, an IP literal, an invalid name)."""
    name = normalized(host)
    if not name or ":" in name or _IPV4.fullmatch(name):
        return name
    try:
        found: str | None = _psl().privatesuffix(name)
    except (ValueError, UnicodeError):
        found = None
    return found or name
