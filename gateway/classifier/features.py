"""Features of a message: what its reader sees and what its sender controls, as tokens per field.

Fields (each hashed into its own space by `vectorize`):

- `subject`: words of the decoded Subject (list tags that a mailing list added are dropped).
- `body`: words and word pairs of the text parts, HTML turned into text.
- `url`: every URL of the body (text and HTML attributes): host, registered domain, TLD, scheme,
  path words, and shape traits (IP host, port, user info, encoded host).
- `header`: traits of the header section a sender controls: the mail program, From / Reply-To /
  envelope sender disagreement, Message-ID shape, date anomalies, recipients count, MIME
  structure and the MIME stage's findings, charsets, transfer encodings, attachment types, HTML
  traits, body statistics.

One reading: header fields come from the gateway's one header parse (gateway.message), and the
body, parts, types and charsets from the leaves of its one MIME parse (gateway.mime.parse, the
report every other check reads), in training and at run time alike.

Deliberately absent: anything the collecting side adds or only a mailing list adds (Received lines
and hop counts, X-Spam-*, List-*, X-Mailman-*, Delivered-To, X-Loop, Sender, Errors-To,
Precedence, X-Keywords, Status..., a list's footer, its Subject tag, the "Name via List" From it
writes), so a model learns spam rather than the corpus it came from. Header *names* are never
features, only the traits computed below from a fixed set of fields.

Work is bounded (parts walked, characters kept per part and in all, tokens) and never raises: a
message that cannot be handled yields a `parse:error` trait and whatever was extracted before it.
"""

from __future__ import annotations

import email.utils
import functools
import html
import itertools
import logging
import math
import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.domains import registrable_domain
from gateway.line_endings import has_bare_line_endings, normalize_line_endings
from gateway.message import MAX_HTML_BYTES, HeaderField, ParsedMessage, decode_encoded_words
from gateway.mime.charsets import decode_text
from gateway.mime.model import Leaf, MimeReport
from gateway.mime.parse import analyze

log = logging.getLogger("mailgate.classifier")

Fields = dict[str, list[str]]
FIELDS = ("subject", "body", "url", "header")


# How a message is read into features; the card says which reading a model was trained on.
# 1 (a card without the key): HTML read by the classifier's own tag-stripper, hidden text kept.
# 2 (2026-12-04): HTML as gateway.mime.html renders it, as every other check reads it.
READING = 2


@dataclass(frozen=True)
class FeatureSettings:
    """How tokens are made; stored in the model card so training and inference agree."""

    # Regular expressions (matched against lower-cased text) removed before tokenising: names of
    # the corpus collector (its host names, the recipient's redacted address) that would
    # otherwise teach the model the corpus instead of spam. Empty for an admin's own mail.
    redact: tuple[str, ...] = ()
    # Received lines matching any of these are the collector's own hops and are not counted.
    collector_received: tuple[str, ...] = ()
    body_bigrams: bool = False
    # Traits of how a message is laid out rather than what it says: counts of HTML tags (img,
    # table, a, font, center), HTML without a plain part, transfer encodings, charsets, the
    # number of parts, multipart/alternative, and "display:none somewhere" (every responsive
    # template hides blocks in its style sheet and has a preheader; the MIME stage tells a
    # preheader from salting, HTML_PREHEADER against HTML_HIDDEN_TEXT). The public ham is
    # mailing-list mail, plain text because list software and list etiquette make it so; modern
    # receipts, notices and newsletters are laid out like the spam. False: the model cannot
    # learn that artefact.
    layout_traits: bool = True
    max_bytes: int = 512 * 1024  # of the raw message parsed
    max_parts: int = 64  # MIME parts walked
    max_part_chars: int = 64 * 1024  # characters kept from one text part
    max_text_chars: int = 128 * 1024  # characters of body text tokenised in all
    max_tokens: int = 8000  # body words kept

    def to_json(self) -> dict[str, Any]:
        return {
            "redact": list(self.redact),
            "collector_received": list(self.collector_received),
            "body_bigrams": self.body_bigrams,
            "layout_traits": self.layout_traits,
            "max_bytes": self.max_bytes,
            "max_parts": self.max_parts,
            "max_part_chars": self.max_part_chars,
            "max_text_chars": self.max_text_chars,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, data: Any) -> FeatureSettings:
        """Settings from a model card; raises ValueError on anything unexpected."""
        if not isinstance(data, dict):
            raise ValueError("features.settings must be an object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature settings: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key in ("redact", "collector_received"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"features.settings.{key} must be a list of strings")
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"bad pattern {pattern!r} in {key}: {exc}") from None
            kwargs[key] = tuple(value)
        for key in ("body_bigrams", "layout_traits"):
            if key in data:
                if not isinstance(data[key], bool):
                    raise ValueError(f"features.settings.{key} must be true or false")
                kwargs[key] = data[key]
        for key in ("max_bytes", "max_parts", "max_part_chars", "max_text_chars", "max_tokens"):
            if key in data:
                value = data[key]
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ValueError(f"features.settings.{key} must be a positive integer")
                kwargs[key] = value
        return cls(**kwargs)


@dataclass
class _Compiled:
    redact: re.Pattern[str] | None
    collector: re.Pattern[str] | None
    # A string that every match of each pattern contains (lower-cased for the collector, whose
    # patterns ignore case), or None when some pattern has none: when none of them is in a text,
    # the pattern cannot match, and a substring test is much cheaper than a long alternation.
    redact_needs: tuple[str, ...] | None
    collector_needs: tuple[str, ...] | None

    def redacted(self, lowered: str) -> str:
        """A lower-cased text with the collector's names removed."""
        redact = self.redact
        if redact is None:
            return lowered
        needs = self.redact_needs
        if needs is not None and not any(need in lowered for need in needs):
            return lowered
        return redact.sub(" ", lowered)

    def is_collector(self, received: str) -> bool:
        """Whether a Received field is one of the collector's own hops."""
        collector = self.collector
        if collector is None:
            return False
        needs = self.collector_needs
        if needs is not None and _lowers_like_ignorecase(received):
            lowered = received.lower()
            if not any(need in lowered for need in needs):
                return False
        return collector.search(received) is not None


_COMPILED: dict[FeatureSettings, _Compiled] = {}


def _compiled(settings: FeatureSettings) -> _Compiled:
    found = _COMPILED.get(settings)
    if found is None:
        found = _Compiled(
            redact=re.compile("|".join(settings.redact)) if settings.redact else None,
            collector=(
                re.compile("|".join(settings.collector_received), re.I)
                if settings.collector_received
                else None
            ),
            redact_needs=_needed_literals(settings.redact),
            collector_needs=_needed_literals(settings.collector_received, lower=True),
        )
        _COMPILED[settings] = found
    return found


# Outside a character class and without the VERBOSE flag, these stand for themselves in a pattern.
_LITERAL_CHARS = frozenset(string.ascii_letters + string.digits + " !\"#%&',/:;<=>@_`~-")


def _needed_literal(pattern: str) -> str:
    """A string that every match of `pattern` contains (its leading run of plain characters,
    after a leading \\b), or "" when there is none or it cannot tell."""
    if "|" in pattern:  # an alternation: no run is needed by every branch
        return ""
    i = 2 if pattern.startswith("\\b") else 0
    out: list[str] = []
    while i < len(pattern):
        c = pattern[i]
        if c in _LITERAL_CHARS:
            step = 1
        elif c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in string.punctuation:
            c, step = pattern[i + 1], 2
        else:
            break
        if pattern[i + step : i + step + 1] in ("?", "*", "{"):  # the character may be absent
            break
        out.append(c)
        i += step
    return "".join(out)


def _needed_literals(patterns: tuple[str, ...], lower: bool = False) -> tuple[str, ...] | None:
    needs = tuple(_needed_literal(pattern) for pattern in patterns)
    if not needs or not all(needs):
        return None
    return tuple(need.lower() for need in needs) if lower else needs


# The only characters for which IGNORECASE matching of an ASCII letter and str.lower() disagree:
# U+0130 (capital I with dot) lowers to two characters; U+0131 (dotless i) and U+017F (long s)
# match "i" and "s" under IGNORECASE but lower to themselves (a test checks all of Unicode).
_FOLD_TRAPS = re.compile("[\u0130\u0131\u017f]")


def _lowers_like_ignorecase(text: str) -> bool:
    """Whether an IGNORECASE pattern whose letters are ASCII finds in `text` what the same pattern
    without IGNORECASE finds in `text.lower()`, at the same offsets."""
    return text.isascii() or _FOLD_TRAPS.search(text) is None


# -- small helpers -------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_][^\W_]{1,24}|\d{1,12}(?:[.,]\d{1,6})*|[$€£¥!]")


def _latin1_set(pattern: str) -> str:
    """A character class of the Latin-1 characters that `pattern` (of one character) matches."""
    chars = (chr(i) for i in range(256))
    return "[" + "".join(re.escape(c) for c in chars if re.fullmatch(pattern, c)) + "]"


# _WORD for text within Latin-1 (most mail): a set of characters is much cheaper to test than
# Unicode categories. Made from _WORD's own classes; a test compares the two.
_LATIN1_WORD = re.compile(
    "{letter}{alnum}{{1,24}}|{digit}{{1,12}}(?:[.,]{digit}{{1,6}})*|{sign}".format(
        letter=_latin1_set(r"[^\W\d_]"),
        alnum=_latin1_set(r"[^\W_]"),
        digit=_latin1_set(r"\d"),
        sign=_latin1_set(r"[$€£¥!]"),
    )
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_SUBJECT_TAGS = re.compile(r"^\s*(?:(?:re|fwd?|aw)\s*:\s*)*(?:\[[^\]\n]{1,40}\]\s*)+", re.I)
_REPLY_PREFIX = re.compile(r"^\s*(?:re|fwd?|aw)\s*:", re.I)
_ADDR_DOMAIN = re.compile(r"@([A-Za-z0-9.-]+)")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]{}\\^`|]{1,500}", re.I)
_HTML_ATTR_URL = re.compile(r"(?:href|src|action)\s*=\s*[\"']?\s*([^\"'\s>]{1,1000})", re.I)
_HTML_TAG_NAME = re.compile(r"</?([a-zA-Z][a-zA-Z0-9]{0,15})\b[^<>]{0,2000}>")
_HTML_ANY_TAG = re.compile(r"<[^<>]{0,2000}>")
_HTML_HINT = re.compile(r"<\s*(?:html|body|table|font|div|p|br|a\s|img)\b", re.I)
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01]px", re.I)
_COMMENT_IN_WORD = re.compile(r"[a-z]<!--[^>]{0,100}-->[a-z]", re.I)
_WHITE_TEXT = re.compile(r"color\s*=\s*[\"']?#?(?:fff|ffffff|white)\b", re.I)
# Twins of the IGNORECASE patterns above, for lower-cased text (see _lowers_like_ignorecase):
# without IGNORECASE, the regular expression engine finds their first characters much faster.
_LOWER_TWIN = {
    pattern: re.compile(pattern.pattern)
    for pattern in (_URL, _HTML_ATTR_URL, _HIDDEN, _COMMENT_IN_WORD, _WHITE_TEXT)
}
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_NUMERIC_BLOB = re.compile(r"\d{4,}")
_FOOTER_SEP = re.compile(r"^[ \t>]*(?:_{20,}|-{20,}|--)[ \t\r]*$", re.M)
_FOOTER_HINT = re.compile(
    r"mailing list|listinfo|sponsored by|unsubscribe|google groups|this group", re.I
)
_FOOTER_NOTICE = re.compile(
    r"you received this (?:message|topic) because you are subscribed to|"
    r"to unsubscribe from this group",
    re.I,
)
_FOOTER_REACH = 1500  # characters at the end of a part where a list's footer may sit
_WS = re.compile(r"\s+")
_NON_LETTERS = re.compile(r"[\W\d_]+")
_NON_UPPER = re.compile(r"[^A-Z\u00c0-\u00d6\u00d8-\u00de\u0391-\u03a9\u0410-\u042f]+")
_ASCII = re.compile(r"[\x00-\x7f]+")
_FREEMAIL = {
    "yahoo",
    "hotmail",
    "aol",
    "msn",
    "gmail",
    "excite",
    "netscape",
    "juno",
    "lycos",
    "mail",
    "email",
    "usa",
    "altavista",
    "earthlink",
    "compuserve",
    "outlook",
    "live",
    "gmx",
    "web",
}
_LIST_FIELDS = ("list-id", "list-post", "list-unsubscribe", "x-mailman-version", "x-beenthere")


def _bucket(n: float, edges: Iterable[float]) -> str:
    """The index of the first edge `n` is below: a coarse, stable value for a trait token."""
    for i, edge in enumerate(edges):
        if n < edge:
            return str(i)
    return "top"


def parsed_header(raw: bytes) -> ParsedMessage:
    """The header section of a stored message parsed as the gateway parses a received one (CRLF
    line endings, as SMTP delivers them: corpus files often have LF)."""
    head = raw[: body_start(raw)]
    if has_bare_line_endings(head):
        head = normalize_line_endings(head)
    return ParsedMessage(head)


def _model_text(f: HeaderField) -> str:
    """A field's value as the model was trained to read it: unfolded, each 8-bit byte one
    U+FFFD (what the email package's compat32 gave it: the tokens stay the model's)."""
    return f.raw_value.replace(b"\r\n", b"").strip().decode("ascii", errors="replace")


def _domain_of(address: str) -> str:
    found = _ADDR_DOMAIN.search(address)
    return found.group(1).lower().strip(".") if found else ""


def _date_tuple(value: str) -> tuple[datetime | None, list[str]]:
    """Parse a Date-style value; the datetime (UTC) and the anomalies seen."""
    anomalies: list[str] = []
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None, ["date:unparseable"]
    year = parsed[0]
    if year < 1000:  # "102" for 2002: a Y2K bug of bulk mail tools
        anomalies.append("date:year_3digit")
        year += 1900
    offset = parsed[9]
    if offset is None:
        anomalies.append("date:no_zone")
        offset = 0
    elif abs(offset) > 14 * 3600 or offset % 900:
        anomalies.append("date:bad_zone")
        offset = 0
    if not re.match(r"\s*[A-Za-z]{3},", value):
        anomalies.append("date:no_weekday")
    try:
        naive = datetime(year, parsed[1], parsed[2], parsed[3], parsed[4], min(parsed[5], 59))
    except (ValueError, OverflowError):
        return None, [*anomalies, "date:invalid"]
    stamp = naive.replace(tzinfo=UTC).timestamp() - offset
    try:
        return datetime.fromtimestamp(stamp, UTC), anomalies
    except (ValueError, OverflowError, OSError):
        return None, [*anomalies, "date:invalid"]


def received_time(value: str) -> datetime | None:
    """The timestamp of one Received field (after its last ';')."""
    _, sep, stamp = value.rpartition(";")
    if not sep:
        return None
    when, _ = _date_tuple(stamp.strip())
    return when


# Parsing addresses is slow, and the same senders and recipients come back all the time.
@functools.lru_cache(maxsize=1 << 12)
def _parseaddr(value: str) -> tuple[str, str]:
    return email.utils.parseaddr(value)


@functools.lru_cache(maxsize=1 << 12)
def _getaddresses(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(email.utils.getaddresses(values))


def body_start(raw: bytes) -> int:
    """Offset of the body: after the first empty line (CRLF or LF); len(raw) if none."""
    ends = [i + n for i, n in ((raw.find(b"\r\n\r\n"), 4), (raw.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else len(raw)


def _cut_block(text: str, start: str, end: str) -> str:
    """Remove every `start`...`end` block (case-insensitive) in linear time; an open block runs
    to the end of the text."""
    lower = text.lower()
    out: list[str] = []
    pos = 0
    while True:
        i = lower.find(start, pos)
        if i < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:i])
        j = lower.find(end, i + len(start))
        if j < 0:
            break
        pos = j + len(end)
        if not end.endswith(">"):  # "</script >": skip to the end of the closing tag
            close = lower.find(">", pos, pos + 100)
            pos = close + 1 if close >= 0 else pos
        out.append(" ")
    return "".join(out)


def html_to_text(markup: str) -> str:
    """Visible text of HTML: scripts, styles and comments dropped, tags removed, entities decoded.

    Regular expressions bounded per match and linear scans only: hostile markup costs time in
    proportion to its length, never more.
    """
    lower = markup.lower()
    text = markup
    if "<!--" in lower or "<script" in lower or "<style" in lower:
        text = _cut_block(text, "<!--", "-->")
        text = _cut_block(text, "<script", "</script")
        text = _cut_block(text, "<style", "</style")
    text = _HTML_ANY_TAG.sub(" ", text)
    return html.unescape(text)


def _url_tokens(url: str, out: list[str], hosts: set[str]) -> None:
    """Append the tokens of an URL to `out` and its host (if any) to `hosts`."""
    tokens, host = _url_parts(url)
    out.extend(tokens)
    if host is not None:
        hosts.add(host)


@functools.lru_cache(maxsize=1 << 12)  # the same links come in many messages
def _url_parts(url: str) -> tuple[tuple[str, ...], str | None]:
    out: list[str] = []
    hosts: set[str] = set()
    _parse_url(url, out, hosts)
    return tuple(out), next(iter(hosts), None)


def _parse_url(url: str, out: list[str], hosts: set[str]) -> None:
    lower = url.lower().strip(".,;:!?)")
    if lower.startswith("www."):
        scheme, rest = "http", lower
    else:
        scheme, _, rest = lower.partition("://")
        if not rest:
            return
    out.append(f"scheme:{scheme}")
    hostport, _, path = rest.partition("/")
    hostport = hostport.split("?", 1)[0].split("#", 1)[0]
    if "@" in hostport:
        out.append("userinfo")
        hostport = hostport.rpartition("@")[2]
    host, colon, _ = hostport.partition(":")
    if colon:
        out.append("port")
    if "%" in host:
        out.append("host_encoded")
    host = host.strip(".")
    if not host:
        return
    if _IPV4.match(host):
        out.append("host_ip")
        hosts.add(host)
        return
    hosts.add(host)
    reg = registrable_domain(host)
    out.append(f"host:{host}")
    out.append(f"dom:{reg}")
    out.append(f"tld:{host.rpartition('.')[2]}")
    if host.count(".") >= 4:
        out.append("host_deep")
    for word in re.findall(r"[a-z][a-z0-9]{2,19}", path[:200]):
        out.append(f"path:{word}")
    if "?" in path:
        out.append("query")
    if _NUMERIC_BLOB.search(path):
        out.append("path_digits")


# -- extraction ----------------------------------------------------------------------------------


def mime_of(raw: bytes, message: ParsedMessage | None = None) -> MimeReport:
    """The MIME report features are read from: the gateway's one parse (`message`'s, made by the
    MIME stage) when there is one, else the same parser run here on the message with CRLF line
    endings, as SMTP would have delivered it (training on stored mail, often with LF)."""
    if message is not None:
        report = message.mime_report
        if report is not None:
            return report
        return analyze(message.raw, message.mime_settings)
    if has_bare_line_endings(raw):
        raw = normalize_line_endings(raw)
    return analyze(raw)


def extract(
    raw: bytes,
    settings: FeatureSettings,
    envelope_from: str | None = None,
    arrival: datetime | None = None,
    message: ParsedMessage | None = None,
    mime: MimeReport | None = None,
    blind: frozenset[str] = frozenset(),
) -> Fields:
    """Tokens per field for one message; never raises.

    `envelope_from` is the SMTP MAIL FROM (the Return-Path field stands in for it when training
    on stored mail); `arrival` is when the message reached us (else the newest Received
    timestamp that is not the collector's), for date anomalies. `message` is the gateway's one
    parse of `raw` (gateway.message), whose header fields are read here; without it (training
    on stored mail, often with LF line endings) the header section is parsed the same way.
    `mime` is the gateway's one MIME parse (`await message.mime()`): the body and MIME features
    come from its leaves, so the classifier reads the content every other check reads; without
    it, see `mime_of`. `blind` names header fields whose values a corpus redacted (training
    only): they give no traits at all, rather than "missing" or "malformed" ones.
    """
    fields: Fields = {name: [] for name in FIELDS}
    try:
        header = message or parsed_header(raw)
        report = mime if mime is not None else mime_of(raw, message)
        _extract(raw, settings, envelope_from, arrival, fields, header, report, blind)
    except Exception as exc:  # hostile MIME must give a feature, never an exception
        log.debug("feature extraction stopped: %s", type(exc).__name__)
        fields["header"].append("parse:error")
    return fields


# "Name via List" with the list's own address: a list rewrote From (DMARC mitigation); the
# sender's address is gone, and what is left says "a list", not "spam" or "ham".
_VIA_LIST = re.compile(r"\s+via\s+\S[^<>]{0,80}$", re.I)


_MAILTO = re.compile(r"mailto:([^>?,\s]{1,200})", re.I)


def _list_addresses(list_post: str | None, been_there: str | None) -> set[str]:
    """The list's own addresses (lower-case), from List-Post and X-BeenThere."""
    out: set[str] = set()
    if list_post:
        out.update(m.lower() for m in _MAILTO.findall(list_post[:1000]))
    if been_there:
        out.add(been_there.strip().lower()[:200])
    return out


def _written_by_list(msgid: str, from_dom: str, list_addresses: set[str]) -> bool:
    """Whether a Message-ID is the list server's (it gave one to a message that had none): its
    domain is the list's and not the sender's. Such an ID says "came through this list"."""
    mdom = _domain_of(msgid).rstrip(">")
    if not mdom or not list_addresses:
        return False
    reg = registrable_domain(mdom)
    if from_dom and registrable_domain(from_dom) == reg:
        return False
    return any(registrable_domain(a.rpartition("@")[2]) == reg for a in list_addresses)


def _rendered(leaf: Leaf, limit: int, is_list: bool) -> str:
    """An HTML leaf's text as gateway.mime.html renders it (its reading is cached: the content
    scan has usually made it), a list's footer cut as from any part."""
    from gateway.mime import html
    from gateway.mime.html_text import visible_text

    data = leaf.data[:MAX_HTML_BYTES]
    shown = html.read(data, leaf.charset).text
    if shown is None:  # longer than a cached reading keeps
        shown = visible_text(data, limit, leaf.charset)
    shown = shown[:limit]
    return _cut_footer(shown) if is_list else shown


def _leaf_text(leaf: Leaf, limit: int) -> str:
    """A text leaf's decoded bytes as text, decoded as every body reader decodes them."""
    return decode_text(leaf.data[: limit * 4], leaf.charset)[:limit]


def _extract(
    raw: bytes,
    settings: FeatureSettings,
    envelope_from: str | None,
    arrival: datetime | None,
    fields: Fields,
    message: ParsedMessage,
    report: MimeReport,
    blind: frozenset[str],
) -> None:
    compiled = _compiled(settings)

    def clean(text: str) -> str:
        """The text lower-cased, with the collector's names removed."""
        return compiled.redacted(text.lower())

    traits = fields["header"]
    size = len(raw)
    if size > settings.max_bytes:
        traits.append("size:cut")
        size = settings.max_bytes
    traits.append(f"size:{_bucket(size, (1000, 2000, 4000, 8000, 16000, 50000, 200000))}")
    # What the MIME stage found odd (a fixed set of MIME_* symbols: defects, ambiguity, limits).
    for symbol in sorted(report.symbols()):
        traits.append(f"mime:{symbol.lower()}")

    # -- header traits: the gateway's one reading of the header fields (gateway.message) -------
    def get(name: str) -> str | None:
        found = message.all(name)
        return _model_text(found[0]) if found else None

    def get_all(name: str) -> list[str]:
        return [_model_text(f) for f in message.all(name)]

    def first(name: str) -> str:
        value = get(name)
        return decode_encoded_words(value) if value is not None else ""

    is_list = any(get(name) is not None for name in _LIST_FIELDS)
    subject = first("subject")
    if is_list:  # "[ILUG] ..." tags are the list's, not the sender's
        subject = _SUBJECT_TAGS.sub(lambda m: "re: " if "re" in m.group(0).lower() else "", subject)
    if _REPLY_PREFIX.match(subject):
        traits.append("subj:reply")
    _subject_traits(subject, traits)
    fields["subject"] = _words(clean(subject), 200)

    from_value = first("from")
    from_name, from_addr = _parseaddr(from_value)
    from_blind = "from" in blind
    list_addresses = _list_addresses(get("list-post"), get("x-beenthere")) if is_list else set()
    if from_addr.lower() in list_addresses:
        # A list rewrote From (DMARC mitigation): "Name via List <list@host>" keeps the sender's
        # name, a From that is only the list's says nothing about the sender at all.
        from_addr, from_blind = "", True
        from_name = _VIA_LIST.sub("", from_name) if _VIA_LIST.search(from_name) else ""
    from_addr = clean(from_addr)
    from_dom = _domain_of(from_addr)
    if "from" in blind:
        pass
    elif not from_value:
        traits.append("from:missing")
    elif from_blind:
        pass
    elif not from_dom:
        traits.append("from:no_domain")
    else:
        traits.append(f"from:tld:{from_dom.rpartition('.')[2]}")
        reg = registrable_domain(from_dom)
        if reg.split(".")[0] in _FREEMAIL:
            traits.append("from:freemail")
        if reg:
            traits.append(f"from:dom:{reg}")
    local = from_addr.partition("@")[0]
    if len(re.findall(r"\d", local)) >= 3:
        traits.append("from:local_digits")
    if len(local) > 20:
        traits.append("from:local_long")
    if "from" in blind:
        pass
    elif not from_name:
        if not from_blind:
            traits.append("from:no_name")
    else:
        if "@" in from_name:
            traits.append("from:name_has_address")
        if from_name.isupper() and len(from_name) > 3:
            traits.append("from:name_caps")
        for word in _words(clean(from_name), 8):
            traits.append(f"from:name:{word}")

    reply_to = "" if "reply-to" in blind else clean(first("reply-to"))
    if reply_to and _domain_of(reply_to) and _parseaddr(reply_to)[1].lower() in list_addresses:
        reply_to = ""  # the list asks for replies to itself: the list's choice, not the sender's
    if reply_to:
        rdom = _domain_of(reply_to)
        traits.append("replyto:present")
        if from_dom and rdom and registrable_domain(rdom) != registrable_domain(from_dom):
            traits.append("replyto:other_domain")
        if reply_to.strip() and from_addr and from_addr not in reply_to:
            traits.append("replyto:other_address")
    envelope = envelope_from
    if envelope is None:
        envelope = "" if "return-path" in blind else first("return-path")
    envelope = clean(envelope)
    if envelope.strip("<> ") == "" and (envelope_from is not None or "<" in envelope):
        traits.append("env:null")
    else:
        edom = _domain_of(envelope)
        list_domains = {registrable_domain(a.rpartition("@")[2]) for a in list_addresses}
        if edom and registrable_domain(edom) in list_domains:
            edom = ""  # the list's bounce address: the list's, not the sender's
        if from_dom and edom:
            if registrable_domain(edom) != registrable_domain(from_dom):
                traits.append("env:other_domain")
            elif from_addr and from_addr not in envelope:
                traits.append("env:same_domain_other_address")

    if "to" not in blind:
        to_all = get_all("to") + get_all("cc")
        recipients = _getaddresses(tuple([str(v) for v in to_all][:50]))
        traits.append(f"rcpt:{_bucket(len(recipients), (1, 2, 3, 6, 11, 30))}")
        if not get_all("to"):
            traits.append("to:missing")
        elif any("undisclosed" in str(v).lower() for v in get_all("to")):
            traits.append("to:undisclosed")
        if from_addr and any(addr.lower() == from_addr for _, addr in recipients):
            traits.append("to:is_from")

    mailer = first("x-mailer") or first("user-agent")
    if not mailer:
        traits.append("mailer:none")
    else:
        product = re.sub(r"[\d.]+", "", mailer.lower())
        for word in re.findall(r"[a-z]{3,15}", product)[:3]:
            traits.append(f"mailer:{word}")
    if get("x-msmail-priority") is not None or get("x-priority") is not None:
        traits.append("priority:set")
        if "high" in first("x-msmail-priority").lower() or first("x-priority").strip()[:1] == "1":
            traits.append("priority:high")

    msgid = "" if "message-id" in blind else first("message-id").strip()
    if "message-id" in blind or _written_by_list(msgid, from_dom, list_addresses):
        pass
    elif not msgid:
        traits.append("msgid:missing")
    else:
        mdom = _domain_of(msgid).rstrip(">")
        if not mdom:
            traits.append("msgid:no_domain")
        elif from_dom and registrable_domain(mdom) != registrable_domain(from_dom):
            traits.append("msgid:other_domain")
        if not (msgid.startswith("<") and msgid.endswith(">")):
            traits.append("msgid:no_brackets")

    # The newest Received timestamp of the sender's side (the collector's own are skipped), for
    # date anomalies. The number of hops is no feature: in a corpus it says how the mail was
    # collected (list servers, fetchmail, an archive's importer) more than who sent it.
    newest: datetime | None = None
    for value in get_all("received")[:100]:
        text = str(value)
        if compiled.is_collector(text):
            continue
        newest = received_time(text)
        break

    date_value = first("date")
    reference = arrival or newest
    if not date_value:
        traits.append("date:missing")
    else:
        when, anomalies = _date_tuple(date_value)
        traits.extend(anomalies)
        if when is not None and reference is not None:
            skew = (when - reference).total_seconds()
            if skew > 3600:
                traits.append("date:future")
            elif skew < -7 * 86400:
                traits.append("date:past_week")
            elif skew < -86400:
                traits.append("date:past_day")

    # -- body: the leaves of the gateway's one MIME parse ----------------------------------------
    layout = settings.layout_traits
    texts: list[str] = []
    markup: list[str] = []
    visible: list[str] = []  # the text of each markup chunk
    parts = 0
    html_parts = 0
    plain_parts = 0
    text_parents: dict[str, set[str]] = {}
    for leaf in report.leaves:
        if leaf.kind in ("preamble", "epilogue"):
            continue  # text around the parts, which readers do not show
        if parts >= settings.max_parts:
            traits.append("mime:many_parts")
            break
        ctype = leaf.content_type
        if leaf.kind == "body":  # a multipart whose boundary was never found: shown as text
            traits.append("mime:no_parts_found")
            ctype = "text/plain"
        maintype = ctype.partition("/")[0]
        if leaf.kind == "raw":  # no parse at all: readers show the raw body, so do we
            traits.append("mime:no_parts_found")
            text = raw[body_start(raw) :][: settings.max_part_chars].decode("latin-1")
            parts += 1
        else:
            if leaf.is_attachment or maintype not in ("text", "message"):
                parts += 1
                traits.append(f"att:type:{ctype}")
                if leaf.names:
                    name = leaf.names[0]
                    ext = name.rpartition(".")[2].lower() if "." in name else "none"
                    traits.append(f"att:ext:{ext[:8]}")
                if maintype != "text":
                    continue
            if maintype == "message":
                parts += 1
                traits.append(f"mime:{ctype}")
                continue
            text = _leaf_text(leaf, settings.max_part_chars)
            if is_list:
                text = _cut_footer(text)
            if not text.strip():
                continue  # an empty part, or a list's footer on its own: no content, no part
            if not leaf.is_attachment:
                parts += 1
            if leaf.cte and layout:
                traits.append(f"cte:{ctype}:{leaf.cte[:20]}")
            if leaf.charset and layout:
                traits.append(f"charset:{leaf.charset[:20]}")
            parent = leaf.path.rpartition(".")[0]
            text_parents.setdefault(parent, set()).add(ctype)
        if ctype == "text/html" or (
            ctype in ("text/plain", "message/rfc822") and _HTML_HINT.search(text[:4000])
        ):
            html_parts += 1
            if ctype != "text/html":
                traits.append("html:in_plain")
            markup.append(text)
            if ctype == "text/html" and leaf.kind != "raw":
                # the text a reader sees, as the MIME stage and the content rules render it
                # (hidden elements, scripts and comments out): one reading of the message
                visible.append(_rendered(leaf, settings.max_part_chars, is_list))
            else:  # markup shown as plain text: rendered here only to find its words
                visible.append(html_to_text(text))
            texts.append(visible[-1])
        else:
            plain_parts += 1
            texts.append(text)
    if layout:
        traits.append(f"parts:{_bucket(parts, (2, 3, 4, 6, 10))}")
        if any({"text/plain", "text/html"} <= types for types in text_parents.values()):
            traits.append("mime:alternative")
        if html_parts and not plain_parts:
            traits.append("html:only")

    body = "\n".join(texts)[: settings.max_text_chars]
    _body_traits(body, traits)
    body = clean(body)
    urls: list[str] = []
    hosts: set[str] = set()
    url_tokens = fields["url"]
    url_pattern = _LOWER_TWIN[_URL] if _lowers_like_ignorecase(body) else _URL  # body is lowered
    for url in url_pattern.findall(body)[:200]:
        urls.append(url)
        _url_tokens(url, url_tokens, hosts)
    for chunk, shown in zip(markup, visible, strict=True):
        lowered_chunk = chunk.lower() if _lowers_like_ignorecase(chunk) else None
        _html_traits(chunk, lowered_chunk, shown, traits, layout)
        if lowered_chunk is not None:
            attr_urls = _LOWER_TWIN[_HTML_ATTR_URL].findall(lowered_chunk)[:200]
        else:
            attr_urls = [url.lower() for url in _HTML_ATTR_URL.findall(chunk)[:200]]
        for lowered in attr_urls:
            if lowered.startswith("mailto:"):
                url_tokens.append("mailto")
                dom = _domain_of(lowered)
                if dom:
                    url_tokens.append(f"mailto:{registrable_domain(clean(dom))}")
            elif lowered.startswith(("http", "www.")):
                _url_tokens(clean(lowered), url_tokens, hosts)
            elif lowered.startswith("cid:"):
                url_tokens.append("cid")
    traits.append(f"urls:{_bucket(len(hosts), (1, 2, 3, 5, 10))}")
    if from_dom and any(registrable_domain(h) == registrable_domain(from_dom) for h in hosts):
        traits.append("urls:from_domain")
    words = _words(body, settings.max_tokens)
    if settings.body_bigrams:
        words += [f"{a} {b}" for a, b in itertools.pairwise(words)]
    fields["body"] = words


# The header fields whose values the features read (the baseline of crosssource reads them too).
READ_FIELDS = (
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "x-mailer",
    "user-agent",
    "x-priority",
    "x-msmail-priority",
)


def plain_reading(raw: bytes, blind: frozenset[str] = frozenset()) -> str:
    """The text of a message as the features read it, for a word n-gram baseline: the values of
    READ_FIELDS (not blind; a list's Subject tag and its own From and Reply-To left out) and the
    decoded text leaves of the one MIME parse (markup kept, a list's footer cut). Never raises."""
    try:
        header = parsed_header(raw)
        is_list = any(header.all(name) for name in _LIST_FIELDS)
        listed: set[str] = set()
        if is_list:
            post = header.all("list-post")
            been = header.all("x-beenthere")
            listed = _list_addresses(
                _model_text(post[0]) if post else None, _model_text(been[0]) if been else None
            )
        froms = header.all("from")
        sender = _parseaddr(decode_encoded_words(_model_text(froms[0])))[1] if froms else ""
        sender_dom = "" if sender.lower() in listed else _domain_of(sender.lower())
        out: list[str] = []
        for name in READ_FIELDS:
            if name in blind:
                continue
            for f in header.all(name)[:5]:
                value = decode_encoded_words(_model_text(f))
                if name == "subject" and is_list:
                    value = _SUBJECT_TAGS.sub("", value)
                if name in ("from", "reply-to") and _parseaddr(value)[1].lower() in listed:
                    continue
                if name == "message-id" and _written_by_list(value, sender_dom, listed):
                    continue
                out.append(f"{name}: {value}")
        for leaf in mime_of(raw).leaves[:64]:
            if leaf.kind in ("part", "body", "raw") and (
                leaf.kind != "part" or leaf.content_type.startswith("text/")
            ):
                text = _leaf_text(leaf, 64 * 1024)
                out.append(_cut_footer(text) if is_list else text)
        return "\n".join(out)
    except Exception:
        return ""


def _is_latin1(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _words(text: str, limit: int) -> list[str]:
    if _is_latin1(text):  # (and so no CJK either)
        return _LATIN1_WORD.findall(text)[:limit]
    words = _WORD.findall(text)[:limit]
    if _CJK.search(text):  # scripts written without spaces: character pairs stand for words
        out: list[str] = []
        for word in words:
            if _CJK.search(word):
                out.extend(word[i : i + 2] for i in range(max(1, len(word) - 1)))
            else:
                out.append(word)
        return out[:limit]
    return words


def _cut_footer(text: str) -> str:
    """Drop a mailing list's footer from the end of one part: a rule line (or a signature
    separator) followed by list or sponsor boilerplate, or a list's "you are subscribed" notice.

    Only in the last _FOOTER_REACH characters, and the last such footer: a sender cannot hide
    the body of a message behind a footer of its own at the top.
    """
    floor = max(0, len(text) - _FOOTER_REACH)
    cut = len(text)
    for sep in _FOOTER_SEP.finditer(text, floor):
        if _FOOTER_HINT.search(text, sep.end(), sep.end() + 400):
            cut = sep.start()
            break
    notice = _FOOTER_NOTICE.search(text, floor, cut)
    if notice:
        cut = notice.start()
    return text[:cut]


def _subject_traits(subject: str, traits: list[str]) -> None:
    if not subject.strip():
        traits.append("subj:empty")
        return
    letters = [c for c in subject if c.isalpha()]
    if letters:
        upper = sum(c.isupper() for c in letters) / len(letters)
        traits.append(f"subj:caps:{_bucket(upper, (0.2, 0.5, 0.8))}")
    if "!" in subject:
        traits.append("subj:bang")
    if "$" in subject:
        traits.append("subj:dollar")
    if re.search(r"\s{3,}\S+\s*$", subject) or re.search(r"[\s-]\d{3,}\s*$", subject):
        traits.append("subj:trailing_id")
    if any(ord(c) > 127 for c in subject):
        traits.append("subj:non_ascii")


# Tags every laid-out message has, legitimate or not, and tags a message rarely needs.
_LAYOUT_TAGS = ("img", "font", "table", "a", "center")
_ACTIVE_TAGS = ("form", "script", "iframe", "map")
# A script element that only holds data (JSON-LD, JSON): never run, so no script, as the MIME
# stage reads it (gateway.mime.html: HTML_SCRIPT).
_DATA_SCRIPT = re.compile(
    r"<script\b[^<>]{0,2000}?\btype\s*=\s*[\"']?\s*application/(?:ld\+)?json\b", re.IGNORECASE
)


def _html_traits(
    markup: str, lowered: str | None, shown: str, traits: list[str], layout: bool = True
) -> None:
    """Traits of one HTML chunk; `lowered` is markup.lower() if _lowers_like_ignorecase(markup);
    `layout`: also the layout traits (see FeatureSettings.layout_traits)."""
    if lowered is not None and markup.isascii():  # lower-casing ASCII moves no match
        tags = Counter(_HTML_TAG_NAME.findall(lowered[:200_000]))
    else:
        tags = Counter(map(str.lower, _HTML_TAG_NAME.findall(markup[:200_000])))
    if tags.get("script"):  # each counted twice, as <script> and </script>
        tags["script"] -= 2 * len(_DATA_SCRIPT.findall(markup, 0, 200_000))
    for name in _LAYOUT_TAGS + _ACTIVE_TAGS if layout else _ACTIVE_TAGS:
        n = tags.get(name, 0)
        if n:
            traits.append(f"html:{name}:{_bucket(n, (2, 5, 20))}")

    def search(pattern: re.Pattern[str], needs: tuple[str, ...]) -> bool:
        """pattern.search(markup), where every match contains one of `needs` (in any case)."""
        if lowered is None:
            return pattern.search(markup) is not None
        if not any(need in lowered for need in needs):  # a substring test is much cheaper
            return False
        return _LOWER_TWIN[pattern].search(lowered) is not None

    if layout and search(_HIDDEN, ("display", "visibility", "font-size")):
        traits.append("html:hidden")
    if search(_COMMENT_IN_WORD, ("<!--",)):
        traits.append("html:comment_in_word")
    if search(_WHITE_TEXT, ("color",)):
        traits.append("html:white_text")
    if len(shown.split(None, 20)) <= 20:
        traits.append("html:little_text")


def _latin1_class(pattern: re.Pattern[str]) -> bytes:
    """The Latin-1 bytes whose characters `pattern` matches."""
    return bytes(i for i in range(256) if pattern.match(chr(i)))


# For text within Latin-1 (most mail), counting characters with bytes.translate is much cheaper
# than removing them with a regular expression; the tables come from the expressions themselves.
_LATIN1_NON_LETTERS = _latin1_class(_NON_LETTERS)
_LATIN1_NON_UPPER = _latin1_class(_NON_UPPER)
_LATIN1_ASCII = _latin1_class(_ASCII)


def _body_traits(body: str, traits: list[str]) -> None:
    n = len(body)
    traits.append(f"body:len:{_bucket(n, (100, 300, 1000, 3000, 10000, 30000))}")
    if not n:
        return
    head = body[:8000]
    try:
        latin1 = head.encode("latin-1")
    except UnicodeEncodeError:
        letters = len(_NON_LETTERS.sub("", head))
        upper_count = len(_NON_UPPER.sub("", head)) if letters else 0
        non_ascii_count = len(_ASCII.sub("", head))
    else:
        letters = len(latin1.translate(None, _LATIN1_NON_LETTERS))
        upper_count = len(latin1.translate(None, _LATIN1_NON_UPPER))
        non_ascii_count = len(latin1.translate(None, _LATIN1_ASCII))
    if letters:
        upper = upper_count / letters
        traits.append(f"body:caps:{_bucket(upper, (0.05, 0.1, 0.2, 0.4))}")
    bangs = body.count("!")
    traits.append(f"body:bang:{_bucket(bangs, (1, 3, 10))}")
    dollars = body.count("$")
    traits.append(f"body:dollar:{_bucket(dollars, (1, 3, 10))}")
    start = body[:20000]
    if "\n>" in start or (">" in start and re.search(r"\n\s*>", start)):
        traits.append("body:quoted")
    non_ascii = non_ascii_count / max(1, len(head))
    traits.append(f"body:nonascii:{_bucket(non_ascii, (0.01, 0.1, 0.3))}")
    lines = body.count("\n") + 1
    traits.append(f"body:linelen:{_bucket(math.log2(1 + n / lines), (4, 5, 6, 7, 8))}")


@dataclass
class MessageTimes:
    """When a message was written (Date) and when it arrived (newest Received / mbox line)."""

    date: datetime | None = None
    arrival: datetime | None = None
    anomalies: list[str] = field(default_factory=list)


def message_times(raw: bytes) -> MessageTimes:
    """Dates used to order a corpus in time; never raises."""
    out = MessageTimes()
    try:
        header = parsed_header(raw[:65536])
        dates = header.all("date")
        if dates:
            out.date, out.anomalies = _date_tuple(decode_encoded_words(_model_text(dates[0])))
        for f in header.all("received")[:3]:
            when = received_time(_model_text(f))
            if when is not None:
                out.arrival = when
                break
        if out.arrival is None and raw.startswith(b"From "):
            line = raw.split(b"\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) >= 7:
                when, _ = _date_tuple(" ".join(parts[2:7]) + " +0000")
                out.arrival = when
    except Exception:
        pass
    return out


def collapse_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()
