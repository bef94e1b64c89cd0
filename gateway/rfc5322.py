"""The strict From parser over gateway.message's lenient fields, for DMARC and A-R hygiene.

Two ideas keep spoofing tricks out ("Composition Kills", Chen et al., USENIX Security 2020;
"Weak Links in Authentication Chains", Shen et al., USENIX Security 2021):

* **Scan the header section the way the most generous reader would.** A field name with
  whitespace before the colon (`From : x`), a name folded onto the next line (`From\\r\\n : x`), a
  field on a first line that starts with a space (` From: x`): some MUA shows each of these as
  the From, so each counts as a From field here, and is flagged. Nothing is dropped silently.
* **Parse the From field strictly, and when it is not exactly right, consider every domain in
  it.** A well-formed From (RFC 5322 3.4, RFC 6854 groups) gives its mailboxes. A malformed one
  (an address after an angle-addr, a quoted-pair outside quotes, an encoded-word hiding an
  address, a route) gives every domain that any reader might take as the author's, so DMARC can
  apply the strictest of their policies: an attacker cannot pick the one a lenient parser sees.

Values are handled as text decoded from UTF-8 with replacement (SMTPUTF8 headers are UTF-8).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from gateway.encoded_words import decode_header_linear
from gateway.message import HeaderField, decode_encoded_words, scan_fields
from gateway.mime.charsets import decode_declared

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
# What any reader might take as an address's domain: "@" then a run of domain characters.
_LOOSE_DOMAIN = re.compile(r"@\s*\[?([A-Za-z0-9\u0080-\uffff](?:[A-Za-z0-9.\u0080-\uffff-]*))")
# The local part is bounded so a long run without "@" costs linear time, not quadratic.
_LOOSE_ADDRESS = re.compile(
    r"[^\s<>()\[\],;:\"@\\]{1,64}@[A-Za-z0-9\u0080-\uffff][A-Za-z0-9.\u0080-\uffff-]{0,253}"
)


def unfold(value: str) -> str:
    """A field value with its folding (CRLF before WSP) removed, ends trimmed."""
    return re.sub(r"\r\n(?=[ \t])", "", value).replace("\r\n", " ").strip()


# -- addresses (RFC 5322 3.4, RFC 6854) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mailbox:
    display: str
    local: str
    domain: str  # as written (may be invalid; the caller validates)


@dataclass
class ParsedAddresses:
    """What an address-list field holds; `errors` non-empty means it is not well formed."""

    mailboxes: list[Mailbox] = field(default_factory=list)
    groups: int = 0
    route: bool = False
    errors: list[str] = field(default_factory=list)


class _Syntax(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "atom", "qs", "lit", or the special character itself
    text: str


_SPECIALS = "<>@,;:"


def _tokens(value: str) -> Iterator[_Tok]:
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth, i = 1, i + 1
            while i < n and depth:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                i += 1
            if depth:
                raise _Syntax("unterminated comment")
        elif c == '"':
            out, i = [], i + 1
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(value[i])
                i += 1
            if i >= n:
                raise _Syntax("unterminated quoted-string")
            i += 1
            yield _Tok("qs", "".join(out))
        elif c == "[":
            close = value.find("]", i)
            if close == -1:
                raise _Syntax("unterminated domain literal")
            yield _Tok("lit", value[i : close + 1])
            i = close + 1
        elif c in _SPECIALS:
            yield _Tok(c, c)
            i += 1
        elif c in ')]\\"':
            raise _Syntax(f"stray {c!r}")
        else:
            start = i
            while i < n and value[i] not in ' \t\r\n()"[]<>@,;:\\':
                i += 1
            yield _Tok("atom", value[start:i])


class _Parser:
    def __init__(self, tokens: list[_Tok], out: ParsedAddresses) -> None:
        self.t = tokens
        self.i = 0
        self.out = out

    def peek(self) -> _Tok | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, kind: str) -> _Tok:
        tok = self.peek()
        if tok is None or tok.kind != kind:
            raise _Syntax(f"expected {kind!r}, found {tok.text if tok else 'end'!r}")
        self.i += 1
        return tok

    def phrase(self) -> list[_Tok]:
        words: list[_Tok] = []
        while (tok := self.peek()) is not None and tok.kind in ("atom", "qs"):
            words.append(tok)
            self.i += 1
        return words

    def address_list(self) -> None:
        while True:
            tok = self.peek()
            if tok is None:
                return
            if tok.kind == ",":  # obs-addr-list: empty elements
                self.i += 1
                continue
            self.address(in_group=False)
            tok = self.peek()
            if tok is None:
                return
            self.take(",")

    def address(self, in_group: bool) -> None:
        start = self.i
        words = self.phrase()
        tok = self.peek()
        if tok is not None and tok.kind == ":" and not in_group:
            self.i += 1
            self.out.groups += 1
            while (tok := self.peek()) is not None and tok.kind != ";":
                if tok.kind == ",":
                    self.i += 1
                    continue
                self.address(in_group=True)
                if (tok := self.peek()) is not None and tok.kind == ",":
                    self.i += 1
            self.take(";")
            return
        if tok is not None and tok.kind == "<":
            self.i += 1
            display = " ".join(w.text for w in words)
            self.angle(display)
            return
        self.i = start
        local, domain = self.addr_spec()
        self.out.mailboxes.append(Mailbox("", local, domain))

    def angle(self, display: str) -> None:
        if (tok := self.peek()) is not None and tok.kind == "@":  # obs-route
            self.out.route = True
            while (tok := self.peek()) is not None and tok.kind != ":":
                if tok.kind == ">":
                    raise _Syntax("unterminated route")
                self.i += 1
            self.take(":")
        if (tok := self.peek()) is not None and tok.kind == ">":
            raise _Syntax("empty angle-addr")
        local, domain = self.addr_spec()
        self.take(">")
        self.out.mailboxes.append(Mailbox(display, local, domain))

    def addr_spec(self) -> tuple[str, str]:
        words = self.phrase()
        if not words:
            tok = self.peek()
            raise _Syntax(f"expected an address, found {tok.text if tok else 'end'!r}")
        local = "".join(w.text for w in words)
        self.take("@")
        tok = self.peek()
        if tok is None or tok.kind not in ("atom", "lit"):
            raise _Syntax("no domain after @")
        self.i += 1
        return local, tok.text


def parse_address_list(value: str) -> ParsedAddresses:
    """RFC 5322 address-list (with groups); errors are collected, never raised."""
    out = ParsedAddresses()
    try:
        tokens = list(_tokens(value))
        parser = _Parser(tokens, out)
        parser.address_list()
    except _Syntax as exc:
        out.errors.append(str(exc))
    return out


def mailboxes_of(values: Sequence[str], limit: int = 5) -> list[Mailbox]:
    """The mailboxes with a domain in the values of one address field (From, Reply-To), at
    most `limit` fields and mailboxes read: one is normal, more is already a finding."""
    boxes: list[Mailbox] = []
    for value in values[:limit]:
        boxes.extend(parse_address_list(unfold(value[:2000])).mailboxes)
    return [b for b in boxes if b.domain][:limit]


def loose_domains(text: str) -> list[str]:
    """Every domain some reader might see after an "@" in `text` (raw and decoded), in order."""
    found: list[str] = []
    for candidate in (text, decode_encoded_words(text)):
        for match in _LOOSE_DOMAIN.finditer(candidate):
            domain = match.group(1).rstrip(".-").lower()
            if domain and domain not in found:
                found.append(domain)
    return found


def shown_text(text: str) -> str:
    """What a renderer may show for `text`: encoded-words decoded, compatibility forms folded
    (NFKC: a fullwidth "\uff20" or small "\ufe6b" is an "@", fullwidth letters are ASCII),
    invisible format characters (bidi controls, zero-width spaces: category Cf) dropped."""
    folded = unicodedata.normalize("NFKC", decode_encoded_words(text))
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


def addresses_in(text: str) -> list[str]:
    """Address-looking strings in `text` as a renderer may show it (see `shown_text`)."""
    return _LOOSE_ADDRESS.findall(shown_text(text))


def invisible_characters(text: str) -> list[str]:
    """Format characters (Unicode category Cf: RTL/LTR overrides and isolates, zero-width
    space/joiners, soft hyphen) in `text`, after decoding encoded-words, as U+XXXX."""
    found: list[str] = []
    for c in decode_encoded_words(text):
        if unicodedata.category(c) == "Cf":
            code = f"U+{ord(c):04X}"
            if code not in found:
                found.append(code)
    return found


def comments_in(value: str) -> list[str]:
    """The text of every comment (outermost parentheses, outside quoted-strings) in `value`."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            i += 2
        elif c == '"':
            i += 1
            while i < n and value[i] != '"':
                i += 2 if value[i] == "\\" else 1
            i += 1
        elif c == "(":
            depth, start, i = 1, i + 1, i + 1
            while i < n and depth:
                if value[i] == "\\":
                    i += 1
                elif value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                i += 1
            out.append(value[start : i - 1 if not depth else i])
        else:
            i += 1
    return out


# Lower-case letters of other scripts that render like ASCII ones (the common part of Unicode's
# confusables). Small-capital lookalikes (Cyrillic "\u0432", "\u043a", "\u043d", "\u0442") are
# left out, so real words such as "\u0432\u043a\u043e\u043d\u0442\u0430\u043a\u0442\u0435"
# are not flagged; a whole-script imitation ("\u0441\u043e\u0440\u0435" for "cope") still is.
_CONFUSABLE = str.maketrans(
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0455\u0456\u0458\u04bb\u0501\u051b\u051d"
    "\u0261\u04cf\u03b1\u03b9\u03ba\u03bd\u03bf\u03c1\u03c5\u03c7",
    "aeopcyxsijhdqwglaikvopux",
)


def _script(c: str) -> str:
    try:
        return unicodedata.name(c).split(" ")[0]
    except ValueError:
        return "?"


def homoglyph_reason(domain: str) -> str:
    """Why `domain` (U-labels or xn-- A-labels) imitates another domain, or "" if it does not:
    a label mixing scripts (Latin with Cyrillic or Greek...), or a label of other scripts'
    letters that all render as ASCII ones ("\u0430pple" for "apple")."""
    for label in domain.lower().rstrip(".").split("."):
        if label.startswith("xn--"):
            try:
                label = label.encode("ascii").decode("idna")
            except (UnicodeError, ValueError):
                continue
        if label.isascii():
            continue
        scripts = {_script(c) for c in label if c.isalpha()}
        if len(scripts) > 1:
            return f"label {label!r} mixes scripts ({', '.join(sorted(scripts))})"
        skeleton = unicodedata.normalize("NFKC", label).translate(_CONFUSABLE)
        if skeleton.isascii():
            return f"label {label!r} renders as {skeleton!r}"
    return ""


# -- the author (RFC5322.From) ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorInfo:
    """The From fields of a message, as DMARC needs them.

    `domains` are the author domains to evaluate, lower case, in order (one for a normal message;
    several when the From is multiple or malformed, and then the strictest result counts).
    `problems` maps a problem kind to a short detail:

        missing           no From field at all
        multiple          more than one From field
        multiple_addresses  one From field with several mailboxes
        group             RFC 6854 group syntax
        no_address        no mailbox at all (empty field, empty group)
        malformed         not well formed (syntax error, route, odd field name, stray lines)
        invisible         bidi controls or zero-width characters (RTL override: "moc.knab")
        homoglyph         an author domain imitating another (mixed scripts, lookalike letters)
        local_address     an address inside the local part ("a@bank.example"@evil.example)
        comment_address   an address inside a comment (a@evil.example (a@bank.example))

    Domains of addresses in a local part or a comment are evaluated too: some reader shows them.

    `display_addresses` pairs each address shown in a display name with the domain of the
    mailbox it names (the caller decides whether they belong to the same organisation).
    """

    fields: tuple[str, ...]
    mailboxes: tuple[Mailbox, ...]
    domains: tuple[str, ...]
    problems: dict[str, str]
    display_addresses: tuple[tuple[str, str], ...] = ()


def author_info(source: bytes | Sequence[HeaderField]) -> AuthorInfo:
    """Find and parse the From field(s) of a message (CRLF line endings), or of its fields as
    gateway.message scanned them (what ParsedMessage.authors passes)."""
    fields = scan_fields(source) if isinstance(source, bytes) else source
    from_fields = [f for f in fields if f.name == "from"]
    problems: dict[str, str] = {}
    if not from_fields:
        problems["missing"] = "no From field"
        return AuthorInfo((), (), (), problems)
    if len(from_fields) > 1:
        problems["multiple"] = f"{len(from_fields)} From fields"
    stray = [f for f in fields if not f.name]
    if any(f.odd_name for f in from_fields) or stray:
        problems["malformed"] = (
            "From field name with whitespace or folding"
            if any(f.odd_name for f in from_fields)
            else "header line that is not a field"
        )
    values = [unfold(f.value) for f in from_fields]
    mailboxes: list[Mailbox] = []
    domains: list[str] = []
    loose_everything = False
    for value in values:
        parsed = parse_address_list(value)
        if parsed.groups:
            problems["group"] = "group syntax (RFC 6854) in From"
        if parsed.route:
            problems["malformed"] = "route (obs-route) in From"
            loose_everything = True
        if parsed.errors:
            problems["malformed"] = parsed.errors[0]
            loose_everything = True
        mailboxes.extend(parsed.mailboxes)
        for box in parsed.mailboxes:
            domain = box.domain.rstrip(".").lower()
            if domain not in domains:
                domains.append(domain)
        # An address inside an encoded-word outside a well-formed mailbox is shown by some
        # readers as the sender.
        # One decode of the whole value (linear), not one per word: a From of 100,000
        # encoded-words took seconds on the event loop.
        hidden = "@" in _encoded_text(value)
        if hidden and (not parsed.mailboxes or parsed.errors):
            loose_everything = True
    for value in values:
        invisible = invisible_characters(value)
        if invisible:
            problems["invisible"] = "invisible characters in From: " + " ".join(invisible[:4])
        for comment in comments_in(value):
            for address in addresses_in(comment):
                problems["comment_address"] = f"address in a comment: {address}"
                _add(domains, address)
    for box in mailboxes:
        for address in addresses_in(box.local):
            problems["local_address"] = f"address in the local part: {box.local}@{box.domain}"
            _add(domains, address)
    for domain in domains:
        reason = homoglyph_reason(domain)
        if reason:
            problems["homoglyph"] = f"{domain}: {reason}"
            break
    if "malformed" in problems or loose_everything:
        for value in values:
            for domain in loose_domains(value):
                if domain not in domains:
                    domains.append(domain)
    if len(mailboxes) > 1 and "multiple" not in problems:
        problems["multiple_addresses"] = f"{len(mailboxes)} addresses in From"
    if not domains:
        problems["no_address"] = "no address in From"
    shown = tuple(
        (address, box.domain.rstrip(".").lower())
        for box in mailboxes
        for address in addresses_in(box.display)
    )
    return AuthorInfo(tuple(values), tuple(mailboxes), tuple(domains), problems, shown)


def _encoded_text(value: str) -> str:
    """The decoded text of the encoded-words of `value` (what a reader may show), in one pass;
    word by word (linear too, slower) when one of them does not decode."""
    if "=?" not in value:
        return ""
    try:
        chunks = decode_header_linear(value)
    except ValueError:
        return " ".join(decode_encoded_words(w) for w in _ENCODED_WORD.findall(value))
    return "".join(
        decode_declared(chunk, charset)
        for chunk, charset in chunks
        if charset is not None and isinstance(chunk, bytes)
    )


def _add(domains: list[str], address: str) -> None:
    domain = address.rpartition("@")[2].rstrip(".-").lower()
    if domain and domain not in domains:
        domains.append(domain)
