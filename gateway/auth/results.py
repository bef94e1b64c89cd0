"""Authentication-Results (RFC 8601): the one we write, and reading the ones others wrote.

What we write carries our authserv-id ([listen] hostname) and one resinfo per check::

    Authentication-Results: mx.example.com;
        spf=pass smtp.mailfrom=alice@example.net;
        dkim=pass header.d=example.net header.s=sel header.a=rsa-sha256 header.b=AbCdEfGh;
        arc=none;
        dmarc=pass (p=reject dis=none) header.from=example.net

Every property value comes from the client or from DNS, so none is written as is unless it is
plainly safe: an LDH domain name, an address with a dot-atom local-part (no quote characters) and
an LDH domain, or a plain token. Anything else is a quoted-string (RFC 8601 2.2, RFC 2045 value)
with `\\` and `"` escaped and controls and non-ASCII replaced. So `d=legitimate.com'a.attack.com`
is written `header.d="legitimate.com'a.attack.com"` and a reader cannot split it into a
`legitimate.com` result (Chen et al. 2020, result injection). Comments hold only our own words.

Reading (for stripping forged fields and for ARC-Authentication-Results) is deliberately small:
the authserv-id, then `method=result` and `ptype.property=value` pairs, comments skipped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.folding import fold_items
from gateway.text import quoted_string, rfc5322_comment

if TYPE_CHECKING:
    from gateway.auth.arc import ArcResult
    from gateway.auth.dkim import DkimResult
    from gateway.auth.dmarc import DmarcResult
    from gateway.auth.spf import SpfResult

_LDH_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_SAFE_LOCAL = re.compile(r"[A-Za-z0-9!#$%&*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&*+/=?^_`{|}~-]+)*")
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # RFC 2045 token, no tspecials
_UNSAFE_CHARS = re.compile(r"[^\x20-\x7e]")
MAX_VALUE = 200


# -- writing ---------------------------------------------------------------------------------------


def pvalue(value: str) -> str:
    """A property value, bare only when plainly safe, else a quoted-string."""
    text = value.rstrip(".") if _LDH_DOMAIN.fullmatch(value.rstrip(".")) else value
    if _LDH_DOMAIN.fullmatch(text):
        return text
    local, at, domain = text.rpartition("@")
    if at and _LDH_DOMAIN.fullmatch(domain) and (not local or _SAFE_LOCAL.fullmatch(local)):
        return text
    if _SAFE_TOKEN.fullmatch(text):
        return text
    return quote(text)


def quote(value: str) -> str:
    text = _UNSAFE_CHARS.sub("?", value)
    if len(text) > MAX_VALUE:
        text = text[:MAX_VALUE] + "..."
    return quoted_string(text)


def _comment(text: str) -> str:
    """A comment of our own words; escaped anyway."""
    return rfc5322_comment(_UNSAFE_CHARS.sub("?", text)[:MAX_VALUE])


def _resinfo(method: str, result: str, comment: str = "", **props: str) -> str:
    parts = [f"{method}={result}"]
    if comment:
        parts.append(_comment(comment))
    for key, value in props.items():
        if value:
            parts.append(f"{key.replace('_', '.')}={pvalue(value)}")
    return " ".join(parts)


def _reason(text: str) -> dict[str, str]:
    return {"reason": text} if text else {}


def authentication_results(
    authserv_id: str,
    *,
    spf: SpfResult | None = None,
    dkim: DkimResult | None = None,
    arc: ArcResult | None = None,
    dmarc: DmarcResult | None = None,
) -> bytes:
    """The Authentication-Results field (folded, CRLF-terminated) for what was checked."""
    items: list[str] = []
    if spf is not None:
        check = spf.mailfrom
        items.append(
            _resinfo(
                "spf",
                check.result.value,
                **({"smtp_mailfrom": check.sender} if check.sender else {}),
            )
        )
        if spf.helo is not None:
            items.append(_resinfo("spf", spf.helo.result.value, smtp_helo=spf.helo.helo))
    if dkim is not None:
        if not dkim.signatures:
            items.append("dkim=none")
        for sig in dkim.signatures:
            props = {
                "header_d": sig.domain,
                "header_s": sig.selector,
                "header_i": sig.identity,
                "header_a": sig.algorithm,
                "header_b": sig.b_prefix,
            }
            comment = f"{sig.key_bits}-bit key" if sig.key_bits else ""
            items.append(
                _resinfo("dkim", sig.result.value, comment, **_reason(sig.reason), **props)
            )
    if arc is not None:
        comment = ""
        if arc.newest is not None and arc.verdict.value == "pass":
            comment = f"i={arc.newest.instance} sealed by {arc.newest.seal_domain}"
        result = arc.verdict.value
        if result == "temperror":  # RFC 8617 defines none, pass and fail only
            result, comment = "fail", "temporary error in a key lookup"
        items.append(_resinfo("arc", result, comment))
    if dmarc is not None:
        if not dmarc.evaluations:
            items.append(_resinfo("dmarc", "permerror", "no usable From domain"))
        for ev in dmarc.evaluations:
            result = {"bad_domain": "permerror"}.get(ev.verdict.value, ev.verdict.value)
            notes = []
            if ev.record is not None:
                notes.append(f"p={ev.record.policy.value}")
                if ev.record.subdomain_policy is not None:
                    notes.append(f"sp={ev.record.subdomain_policy.value}")
                if ev.record.pct != 100:
                    notes.append(f"pct={ev.record.pct}")
            if ev.verdict.value == "fail":
                applied = (
                    "none" if ev.arc_override else (ev.applied.value if ev.applied else "none")
                )
                notes.append(f"dis={applied}")
                if ev.arc_override:
                    notes.append(f"arc override by {ev.arc_override}")
            # A Sender or Resent-From domain (From named no author) says which field it was.
            where = {f"header_{ev.identity}": ev.domain}
            items.append(_resinfo("dmarc", result, " ".join(notes), **where))
    return fold_field("Authentication-Results", authserv_id, items)


def fold_field(name: str, authserv_id: str, items: Sequence[str]) -> bytes:
    """`name: id; item; item` with each item on its own line (gateway.folding)."""
    head = pvalue(authserv_id)
    if not items:
        return fold_items(name, [f"{head}; none"])
    separated = [f"{head};", *(f"{item};" for item in items[:-1]), items[-1]]
    return fold_items(name, separated, each_on_own_line=True)


# -- reading ---------------------------------------------------------------------------------------


def _skip_cfws(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                if text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def _word(text: str, i: int, stop: str) -> tuple[str, int]:
    """A token (up to whitespace, "(" or a char of `stop`) or a quoted-string."""
    i = _skip_cfws(text, i)
    if i < len(text) and text[i] == '"':
        out, i = [], i + 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out), i + 1
    start = i
    while i < len(text) and text[i] not in ' \t\r\n("' + stop:
        i += 1
    return text[start:i], i


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims (lower case, "" if none)."""
    word, _ = _word(value, 0, ";")
    return word.lower().rstrip(".")


def parse_results(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """(authserv-id, [(method, result, {ptype.property: value})]) of an A-R value; tolerant."""
    authserv, i = _word(value, 0, ";")
    results: list[tuple[str, str, dict[str, str]]] = []
    n = len(value)
    while i < n:
        i = _skip_cfws(value, i)
        if i < n and value[i] == ";":
            i += 1
            continue
        key, i = _word(value, i, "=;")
        i = _skip_cfws(value, i)
        if i >= n or value[i] != "=" or not key:
            # a version number after the authserv-id, "none", or garbage: skip to the next ";"
            nxt = value.find(";", i)
            i = n if nxt == -1 else nxt + 1
            continue
        result, i = _word(value, i + 1, ";")
        props: dict[str, str] = {}
        while True:
            i = _skip_cfws(value, i)
            if i >= n or value[i] == ";":
                break
            pkey, i = _word(value, i, "=;")
            i = _skip_cfws(value, i)
            if i >= n or value[i] != "=" or not pkey:
                if i < n and value[i] not in ";":
                    i += 1
                continue
            pval, i = _word(value, i + 1, ";")
            props.setdefault(pkey.lower(), pval)
        method = key.lower().partition("/")[0]
        results.append((method, result.lower(), props))
    return authserv.lower(), results
