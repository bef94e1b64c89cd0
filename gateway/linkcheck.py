"""Link checks: where each URL of a message really goes, and whether that is how phishing looks.

Reads the message's one URL list (`ParsedMessage.urls()`: plain-text URLs, HTML links with the
text they show, form actions, frames, meta refreshes, HTML attachments too) and the lists of
rules/links.toml (shorteners, redirectors, form and file hosting services, click trackers).

A redirect target in the query (google.com/url?q=..., Outlook Safe Links' url=...) is decoded
and checked like the link itself, so wrapping a link does not hide it. Safe redirectors (the
recipient's or the sender's own link-protection service) are not findings themselves; open
redirectors are. "Text shows one site, link goes to another" holds only when the text IS an
address: newsletters route their links through click trackers, and a name in a sentence
("Walmart.com") is not a claim about where the link goes. A link of the sender's own domain, or
to a sibling of the shown site under another suffix (brand.com and brand.co.uk), is no mismatch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import ConfigDict, PlainValidator

from gateway.domains import DomainSet, normalized, registrable_domain
from gateway.message import Url, host_of, html_url, ip_literal, make_url
from gateway.schema import TABLE_CONFIG, Array, Text, validate_table
from gateway.tomlfile import ConfigError, TomlFile
from gateway.verdict import Finding

LINK_SYMBOLS: dict[str, str] = {
    "LINK_IP_HOST": "a link to a bare IP address (dotted, decimal, hex or octal form)",
    "LINK_SHORTENER": "a link through a URL shortener (rules/links.toml), which hides its target",
    "LINK_REDIRECTOR": "a link through an open redirector (rules/links.toml) to another site",
    "LINK_PUNYCODE": "a link to an internationalised (punycode, xn--) host name",
    "LINK_USERINFO": "a link with user@ before its host (http://bank.example@evil.example/)",
    "LINK_SCRIPT_URI": "a javascript: or vbscript: address in a link, frame or form",
    "LINK_DATA_URI": "a data: address in a link, frame, form or refresh (a page carried inline)",
    "LINK_HOSTING_SERVICE": (
        "a link to a form, site-building or file-sharing service often used for credential"
        " theft (rules/links.toml)"
    ),
    "HTML_LINK_MISMATCH": "a link whose visible text is an address of another site than its target",
    "HTML_FORM_OFFSITE": (
        "an HTML form that posts to another site than the sender's, or to a form service"
    ),
}

MAX_REDIRECTS = 3  # redirect targets decoded inside one another
_DETAIL = 100


# -- patterns: "host" or "host/path-prefix", hosts as gateway.domains reads them ------------------


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a host or host/path (got {value!r})")
    host, slash, path = value.strip().partition("/")
    name = normalized(host)
    bare = name.removeprefix(".")
    if not bare or not re.fullmatch(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*", bare):
        raise ValueError(f'{value!r}: not a host name ("example.com", ".example.com")')
    return f"{name}{slash}{path.lower()}"


Pattern = Annotated[str, PlainValidator(_pattern)]


@dataclass(frozen=True)
class UrlPatterns:
    """Host patterns with an optional path prefix, grouped by prefix: a lookup costs one
    DomainSet match per distinct prefix (a handful), whatever the length of the list."""

    by_path: Mapping[str, DomainSet] = field(default_factory=dict)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> UrlPatterns:
        grouped: dict[str, list[str]] = {}
        for entry in entries:
            host, slash, path = entry.partition("/")
            grouped.setdefault(slash + path, []).append(host)
        return cls({path: DomainSet.parse(hosts) for path, hosts in grouped.items()})

    def matches(self, host: str, path: str) -> bool:
        path = path.lower() or "/"
        return any(
            path.startswith(prefix) and hosts.matches(host)
            for prefix, hosts in self.by_path.items()
        )


# -- rules/links.toml as written ----------------------------------------------------------------


def _format(value: Any) -> str:
    if value not in _FORMATS:
        raise ValueError(f"must be one of {', '.join(sorted(_FORMATS))} (got {value!r})")
    return str(value)


# How a redirector writes its target: "url" (the parameter holds the address), "host" (only a
# host name: Mimecast's domain=), "proofpoint" (Proofpoint v2: "-3A" for "%3A", "_" for "/"),
# "path" (the address sits in the path between two `param` marks: Proofpoint v3's "__")
_FORMATS = frozenset({"url", "host", "proofpoint", "path"})
Format = Annotated[str, PlainValidator(_format)]


@dataclass(frozen=True)
class RedirectorEntry:
    """A redirector: the URL pattern, the query parameter that holds the target and how the
    target is written there (`format`)."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    match: Pattern
    param: Text
    format: Format = "url"


@dataclass(frozen=True)
class RedirectorsTable:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    open: Array[RedirectorEntry] = ()
    safe: Array[RedirectorEntry] = ()


@dataclass(frozen=True)
class PatternList:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    match: Array[Pattern] = ()


@dataclass(frozen=True)
class LinksFile:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    shorteners: PatternList = PatternList()
    redirectors: RedirectorsTable = RedirectorsTable()
    hosting: PatternList = PatternList()
    trackers: PatternList = PatternList()


@dataclass(frozen=True)
class Redirectors:
    """Redirector patterns, each with the query parameter that holds its target and the way
    the target is written."""

    entries: tuple[tuple[UrlPatterns, tuple[str, str]], ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[RedirectorEntry]) -> Redirectors:
        by_param: dict[tuple[str, str], list[str]] = {}
        for entry in entries:
            by_param.setdefault((entry.param, entry.format), []).append(entry.match)
        return cls(tuple((UrlPatterns.parse(m), p) for p, m in by_param.items()))

    def param(self, host: str, path: str) -> tuple[str, str] | None:
        """(parameter, format) of the redirector `host`/`path` is, or None."""
        for patterns, param in self.entries:
            if patterns.matches(host, path):
                return param
        return None


@dataclass(frozen=True)
class LinkPolicy:
    """rules/links.toml, compiled: what the links plugin looks up for every URL."""

    shorteners: UrlPatterns = field(default_factory=UrlPatterns)
    open_redirectors: Redirectors = field(default_factory=Redirectors)
    safe_redirectors: Redirectors = field(default_factory=Redirectors)
    hosting: UrlPatterns = field(default_factory=UrlPatterns)
    trackers: UrlPatterns = field(default_factory=UrlPatterns)


def load_link_policy(doc: TomlFile, errors: list[ConfigError]) -> LinkPolicy:
    """rules/links.toml as a LinkPolicy; its problems (file:line, key) go to `errors`."""
    written = validate_table(doc, "", LinksFile, doc.data, errors) or LinksFile()
    return LinkPolicy(
        shorteners=UrlPatterns.parse(written.shorteners.match),
        open_redirectors=Redirectors.parse(written.redirectors.open),
        safe_redirectors=Redirectors.parse(written.redirectors.safe),
        hosting=UrlPatterns.parse(written.hosting.match),
        trackers=UrlPatterns.parse(written.trackers.match),
    )


# -- reading one URL ------------------------------------------------------------------------------

_SCHEMES_WITH_HOST = ("http", "https", "")


@dataclass(frozen=True, slots=True)
class Target:
    """One URL as a browser reads it: scheme, host (percent-decoded, lower case), path, query."""

    url: str
    scheme: str
    host: str
    path: str
    query: str
    userinfo: bool

    @classmethod
    def of(cls, url: str) -> Target:
        scheme = make_url(url).scheme
        if scheme not in _SCHEMES_WITH_HOST:
            return cls(url, scheme, "", "", "", False)
        # a backslash ends the authority like a slash (WHATWG); the host is Url's reading
        web = url if "//" in url[:8] else f"http://{url}"
        try:
            parts = urlsplit(web.replace("\\", "/"))
        except ValueError:
            return cls(url, scheme, "", "", "", False)
        return cls(
            url, scheme or "http", host_of(url), parts.path, parts.query, "@" in parts.netloc
        )


_PROOFPOINT_ESCAPE = re.compile(r"-([0-9A-Fa-f]{2})")


def _redirect_target(target: Target, how: tuple[str, str]) -> str | None:
    param, form = how
    if form == "path":  # the address between two `param` marks, the second before ";"
        path = unquote(target.path)
        start = path.find(param)
        end = path.find(param + ";", start + len(param)) if start >= 0 else -1
        candidates = [path[start + len(param) : end if end > 0 else None]] if start >= 0 else []
    else:
        candidates = [
            value
            for key, value in parse_qsl(target.query, keep_blank_values=False)
            if key.lower() == param.lower()
        ]
    for value in candidates[:1]:
        decoded = value.strip()
        if form == "proofpoint":
            decoded = unquote(_PROOFPOINT_ESCAPE.sub(r"%\1", decoded.replace("_", "/")))
        elif form == "host":
            host = decoded.strip("/").split("/")[0]
            return f"https://{host}/" if re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host) else None
        if decoded[:2] == "//" or decoded.lower().startswith(("http:", "https:")):
            return decoded
    return None


def _brand(domain: str) -> str:
    """The label that names a registrable domain ("brand" of brand.co.uk and brand.com)."""
    return domain.split(".", 1)[0]


def _same_site(a: str, b: str) -> bool:
    """The same registrable domain, or the same brand under another suffix (example.com and
    example.de, ibm.com and ibm.co.uk): two letters name no brand (co, go...)."""
    a, b = _ascii(a), _ascii(b)
    return a == b or (bool(a) and _brand(a) == _brand(b) and len(_brand(a)) >= 3)


def _ascii(domain: str) -> str:
    """A domain in its ASCII (punycode) form: text shows müller.de, the link says xn--..."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


_SHOWN = re.compile(
    r"(?:https?://|www\.)[^\s/?#<>\"']{1,253}", re.I
)  # the address a link's text shows (text that IS an address)


def _shown_address(text: str) -> str | None:
    """The address a link's text shows (when the text IS an address), or None."""
    text = text.strip().strip("<>[]()\"'")
    match = _SHOWN.match(text)
    if not match or len(text) > 2 * match.end() + 200:
        return None  # an address followed by a sentence is a caption, not the address shown
    return text.split()[0] if text.split() else None


def _shown_host(text: str) -> str | None:
    address = _shown_address(text)
    match = _SHOWN.match(address) if address else None
    if match is None:
        return None
    host = Target.of(match.group(0)).host
    return host if "." in host else None


# -- the check -----------------------------------------------------------------------------------


class LinkChecker:
    """Findings for a message's URLs under one LinkPolicy and one sender domain."""

    def __init__(
        self, policy: LinkPolicy, sender_domain: str, reply_domains: frozenset[str] = frozenset()
    ) -> None:
        self.policy = policy
        self.sender_domain = sender_domain
        # registrable domains of Reply-To: the business a mailing service writes for (its
        # From is the service's shared domain, its links go through the service's tracker)
        self.reply_domains = reply_domains
        self.details: dict[str, list[str]] = {}
        self.hidden = False

    def _add(self, symbol: str, detail: str) -> None:
        found = self.details.setdefault(symbol, [])
        detail = detail[:_DETAIL]
        if detail not in found and len(found) < 3:
            found.append(detail)

    def findings(self) -> list[Finding]:
        return [Finding(s, detail="; ".join(d)[:300]) for s, d in self.details.items()]

    def check(self, urls: Iterable[Url]) -> list[Finding]:
        for url in urls:
            self.check_url(url)
        return self.findings()

    def _chain(self, target: Target) -> Iterator[tuple[Target, bool]]:
        """The URL and each redirect target decoded from it, with whether the hop that led
        there was an open redirector. Sets `hidden` when the last hop is a safe redirector
        whose target could not be decoded (then nobody knows where the link goes)."""
        self.hidden = False
        yield target, False
        for _hop in range(MAX_REDIRECTS):
            how = self.policy.safe_redirectors.param(target.host, target.path)
            opened = how is None
            if how is None:
                how = self.policy.open_redirectors.param(target.host, target.path)
            if how is None:
                return
            inner = _redirect_target(target, how)
            if inner is None:
                self.hidden = not opened
                return
            target = Target.of(inner)
            yield target, opened

    def check_url(self, url: Url) -> None:
        scheme = url.scheme
        if scheme in ("javascript", "vbscript"):
            self._add("LINK_SCRIPT_URI", f"{url.source}={url.url[:60]}")
            return
        if scheme == "data":
            media = url.url[5:40].lower()
            if url.source != "src" or not media.startswith("image/"):
                self._add("LINK_DATA_URI", f"{url.source}={url.url[:60]}")
            return
        if scheme not in _SCHEMES_WITH_HOST:
            return
        final = first = Target.of(url.url)
        for target, through_open in self._chain(first):
            final = target
            if through_open and registrable_domain(target.host) != registrable_domain(first.host):
                self._add("LINK_REDIRECTOR", f"{first.host} -> {target.host}"[:_DETAIL])
            self._check_target(target, url)
        if url.source == "href" and url.text and not self.hidden:
            self._check_shown(url, first, final)
        if url.source == "action":
            self._check_form(url, first, final)

    def _check_target(self, target: Target, url: Url) -> None:
        host = target.host
        if not host:
            return
        if ip_literal(host) is not None:
            self._add("LINK_IP_HOST", target.url)
        elif host.startswith("xn--") or ".xn--" in host or not host.isascii():
            self._add("LINK_PUNYCODE", host)
        if target.userinfo and target.scheme in ("http", "https"):
            self._add("LINK_USERINFO", target.url)
        shortened = self.policy.shorteners.matches(host, target.path)
        if shortened and url.source in ("href", "text", "refresh"):
            self._add("LINK_SHORTENER", target.url)
        # a link (not an address quoted in a text: people paste their slides and blogs)
        if url.source in ("href", "refresh") and self.policy.hosting.matches(host, target.path):
            self._add("LINK_HOSTING_SERVICE", target.url)

    def _shown_through_safe(self, text: str) -> str | None:
        """The host a link's text shows, or where it goes when the text itself is an address
        rewritten by a safe redirector (a reply quotes Safe Links' form of a link)."""
        shown = _shown_host(text)
        address = _shown_address(text)
        if shown is None or address is None:
            return shown
        target = Target.of(address)
        for _hop in range(MAX_REDIRECTS):
            how = self.policy.safe_redirectors.param(target.host, target.path)
            inner = _redirect_target(target, how) if how else None
            if inner is None:
                break
            target = Target.of(inner)
            shown = target.host or shown
        return shown

    def _check_shown(self, url: Url, first: Target, final: Target) -> None:
        shown = self._shown_through_safe(url.text)
        if shown is None or not final.host:
            return
        shown_domain = registrable_domain(shown)
        goes_to = registrable_domain(final.host)
        if _same_site(shown_domain, goes_to):
            return
        first_domain = registrable_domain(first.host)
        if self.sender_domain and self.sender_domain in (first_domain, goes_to):
            return  # the sender's own redirect (its click tracking), or its own site
        if (
            shown_domain == self.sender_domain or shown_domain in self.reply_domains
        ) and self.policy.trackers.matches(first.host, first.path):
            return  # the sender's site, through its mailing service's click tracker
        self._add("HTML_LINK_MISMATCH", f"shows {shown[:40]}, goes to {final.host[:40]}")

    def _check_form(self, url: Url, first: Target, final: Target) -> None:
        """A form that asks for more than a search word and posts to another site than the
        sender's, or any form posting to a form service; in an attachment (a page saved on
        the reader's disk has no site of its own) every form posting to the web."""
        inputs = set(url.text.split())
        asks = url.attachment or bool(inputs & _CREDENTIAL_INPUTS) or len(inputs - _PLAIN) > 0
        for target in (first, final):
            if not target.host:
                continue
            if self.policy.hosting.matches(target.host, target.path):
                self._add("HTML_FORM_OFFSITE", f"posts to {target.host[:60]}")
                return
            if asks and not _same_site(registrable_domain(target.host), self.sender_domain):
                self._add("HTML_FORM_OFFSITE", f"posts to {target.host[:60]}")
                return


# input types of a form that asks for credentials or card data, and those that do not
_CREDENTIAL_INPUTS = frozenset({"password", "email", "tel", "number"})
_PLAIN = frozenset(
    {"text", "search", "hidden", "submit", "image", "button", "reset", "radio", "checkbox"}
)


def check_links(
    urls: Iterable[Url],
    policy: LinkPolicy,
    sender_domain: str,
    reply_domains: frozenset[str] = frozenset(),
) -> list[Finding]:
    """The link findings for `urls` (see the module docstring)."""
    return LinkChecker(policy, sender_domain, reply_domains).check(urls)


__all__ = [
    "LINK_SYMBOLS",
    "LinkChecker",
    "LinkPolicy",
    "check_links",
    "html_url",
    "ip_literal",
    "load_link_policy",
]
