"""DKIM (RFC 6376, RSA and Ed25519 per RFC 8463) on the gateway's async resolver, every signature.

dkimpy does the cryptography and the canonicalization, but it was written for blocking DNS: it
calls `dnsfunc(name)` synchronously for each key. We never let it block. Verification is two
steps:

1. **Read and fetch (async).** Every DKIM-Signature field is parsed and checked here first: tag
   syntax, required tags, and the identities. A `d=` that is not a multi-label LDH domain or an
   `s=` that is not a dot-separated list of LDH labels (`legitimate.com'a.attack.com`, a NUL, a
   `(`) is a finding and never a lookup. The key names of the remaining signatures are looked up
   concurrently with the gateway's resolver (one cache, one timeout policy for the whole gateway).
2. **Verify (CPU only).** dkimpy runs with a `dnsfunc` that answers from what step 1 fetched and
   never touches the network. Tags and keys are checked first as RFC 6376 reads them
   (gateway.auth.dkim_tags: dkimpy's own checks refuse valid `q=` lists, `i=` in
   dkim-quoted-printable and key `s=` lists, and pass an `h=` without From), and dkimpy's
   `verify_sig` is given the checked tags and the normalized key, never its own `verify()`.
   Key lookups that failed are decided before dkimpy is called: a timeout or SERVFAIL is
   `temperror` (the caller defers the message, never a pass), NXDOMAIN or NODATA is
   `permerror` ("no key for signature", RFC 6376 6.1.2). Hashing a large body is real
   CPU work (about 26 ms per MiB for a relaxed RSA-2048 signature on this class of machine), so a
   message larger than `thread_threshold` is verified in a worker thread (`asyncio.to_thread`),
   and smaller ones, where a thread hop costs more than it saves, on the loop.

What dkimpy does not decide, this module does: keys under 1024 bits (RFC 8301: not valid; result
"policy", symbol DKIM_WEAK_KEY), `rsa-sha1` (RFC 8301: never valid), a key whose `k=` does not
match `a=`, a key `h=` that excludes the hash, a revoked key (empty `p=`), and `l=` shorter than
the body (result "policy": the unsigned tail could be anything, so no DMARC credit). For each
passing signature it also records whether From is over-signed (listed in `h=` more often than the
message has From fields, so no From can be added) and which signed single-instance fields appear
more often than they are signed (a field added after signing, shown by a reader instead of the
signed one: the "Composition Kills" header-repetition cases).
"""

from __future__ import annotations

import asyncio
import binascii
import dataclasses
import enum
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from gateway.auth.dkim_tags import (
    CheckedKey,
    TagListError,
    check_key,
    check_signature,
    colon_list,
    parse_tags,
)
from gateway.auth.spf import valid_domain
from gateway.cputime import offload
from gateway.dns import DnsResult, DnsStatus, Resolver
from gateway.message import HeaderField, header_end, scan_fields

log = logging.getLogger("mailgate.dkim")
# dkimpy logs what it thinks of hostile input at ERROR level; our findings say it instead.
DKIMPY_LOG = logging.getLogger("mailgate.dkimpy")
DKIMPY_LOG.addHandler(logging.NullHandler())
DKIMPY_LOG.propagate = False

MIN_KEY_BITS = 1024  # RFC 8301 3.2
MAX_SIGNATURES = 10  # signatures verified per message; the rest are only counted
DEFAULT_LIFETIME = 20.0  # seconds for all key lookups of one message
# Above this size, verification (body canonicalization and hashing) runs in a worker thread.
# Measured (bench/auth_cost.py, timing probes): one RSA-2048 relaxed signature costs ~0.9 ms at
# 16 KiB, ~2 ms at 64 KiB, ~6.5 ms at 256 KiB, ~26 ms at 1 MiB; a to_thread hop ~0.09 ms. So the
# loop is never held more than ~2 ms per signature, and small mail skips the hop.
THREAD_THRESHOLD = 64 * 1024

# RFC 5322 3.6: fields that occur at most once; a second instance added after signing is the
# "Composition Kills" trick (the reader shows one instance, DKIM covered the other).
SINGLE_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)

_SELECTOR_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class DkimVerdict(enum.Enum):
    """Results of one signature, as Authentication-Results (RFC 8601 2.7.1) names them."""

    PASS = "pass"
    FAIL = "fail"
    POLICY = "policy"  # verified, but unacceptable: weak key, or l= leaves the body unsigned
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """One DKIM-Signature field and what came of it. Text values are as written (untrusted)."""

    result: DkimVerdict
    domain: str = ""
    selector: str = ""
    identity: str = ""
    algorithm: str = ""
    b_prefix: str = ""  # the first characters of b=, to name the signature (RFC 6008)
    identity_valid: bool = True
    key_bits: int = 0
    weak_key: bool = False
    body_length: int | None = None  # the l= tag
    body_unsigned: int = 0  # octets of the canonicalized body after l=
    from_oversigned: bool = False
    duplicated_fields: tuple[str, ...] = ()
    reason: str = ""

    @property
    def gives_credit(self) -> bool:
        """Counts for DMARC: a pass (never a weak key, never a partial body)."""
        return self.result is DkimVerdict.PASS and self.identity_valid

    @property
    def lookup_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}".lower()


@dataclass(frozen=True, slots=True)
class DkimResult:
    """Every signature of a message, in header order; `skipped` counts those over the limit."""

    signatures: tuple[DkimSignature, ...] = ()
    skipped: int = 0

    @property
    def signed(self) -> bool:
        return bool(self.signatures)

    def credited_domains(self) -> list[str]:
        return [s.domain.lower().rstrip(".") for s in self.signatures if s.gives_credit]


# -- identities -------------------------------------------------------------------------------


def valid_selector(selector: str) -> bool:
    """RFC 6376 3.1: selector = sub-domain *("." sub-domain): LDH labels, plus the underscore,
    which real signers use ("susede2_rsa") and DNS serves like any other byte; what must never
    be looked up (dots at the ends, spaces, "@", non-ASCII) is still refused."""
    if not selector or len(selector) > 253 or not selector.isascii():
        return False
    return all(_SELECTOR_LABEL.fullmatch(label) for label in selector.split("."))


def _ascii(value: bytes) -> str | None:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def _printable(value: bytes, limit: int = 120) -> str:
    text = value.decode("ascii", errors="replace")
    text = re.sub(r"[^\x20-\x7e]", "?", text)
    return text if len(text) <= limit else text[:limit] + "..."


# -- keys through our resolver ------------------------------------------------------------------


class KeyCache:
    """TXT answers for key names, fetched asynchronously, then served to dkimpy synchronously.

    `dnsfunc` never sends anything: a name that was not fetched, or whose lookup did not give
    records, is "no key" to dkimpy. Callers decide temporary failures before calling dkimpy.
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.results: dict[str, DnsResult] = {}
        # What dkimpy is given: the key record as gateway.auth.dkim_tags.check_key normalized it.
        self.usable: dict[str, bytes] = {}

    async def fetch(self, names: Iterable[str]) -> None:
        wanted = sorted({n.lower().rstrip(".") for n in names} - set(self.results))
        if not wanted:
            return
        answers = await asyncio.gather(*(self.resolver.query(n, "TXT") for n in wanted))
        self.results.update(zip(wanted, answers, strict=True))

    def status(self, name: str) -> DnsResult | None:
        return self.results.get(name.lower().rstrip("."))

    def record(self, name: str) -> bytes | None:
        """The key record at `name`: the first TXT record that has a p= tag, else the first."""
        result = self.status(name)
        if result is None or result.status is not DnsStatus.ANSWER:
            return None
        texts = result.texts()
        for text in texts:
            if re.search(rb"(^|;)\s*p\s*=", text):
                return text
        return texts[0] if texts else None

    def checked(self, name: str) -> CheckedKey | None:
        """The key record at `name` checked for email (RFC 6376 3.6.1), or None without one;
        a usable record is remembered for dkimpy in its normalized form."""
        record = self.record(name)
        if record is None:
            return None
        checked = check_key(record)
        if not checked.problem:
            self.usable[name.lower().rstrip(".")] = checked.record
        return checked

    def dnsfunc(self, name: bytes, timeout: object = None) -> bytes | None:
        """dkimpy's DNS hook: answers only with records `checked` found usable."""
        text = _ascii(name)
        return None if text is None else self.usable.get(text.lower().rstrip("."))


# -- the verifier -------------------------------------------------------------------------------


@dataclass
class _Plan:
    index: int
    tags: dict[bytes, bytes]  # as gateway.auth.dkim_tags.check_signature normalized them
    sig: DkimSignature  # final result, or a provisional one until `pending` is cleared
    pending: bool
    header: tuple[bytes, bytes] = (b"", b"")  # the field as dkimpy parsed it (what is hashed)
    identity: bytes = b""  # the decoded i= (AUID)


def _base(tags: dict[bytes, bytes]) -> DkimSignature:
    b_value = re.sub(rb"\s+", b"", tags.get(b"b", b""))
    length = tags.get(b"l")
    if length is not None and len(length) > 76:  # RFC 6376 3.5: 1*76DIGIT; int() limit
        length = None
    return DkimSignature(
        result=DkimVerdict.PERMERROR,
        domain=_printable(tags.get(b"d", b"")),
        selector=_printable(tags.get(b"s", b"")),
        identity=_printable(tags.get(b"i", b"")),
        algorithm=_printable(tags.get(b"a", b""), 40),
        b_prefix=_printable(b_value[:8], 8),
        body_length=int(length) if length is not None and length.isdigit() else None,
    )


def _with(sig: DkimSignature, **changes: Any) -> DkimSignature:
    return dataclasses.replace(sig, **changes)


class DkimVerifier:
    """Verifies every DKIM signature of a message through the gateway's resolver."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        max_signatures: int = MAX_SIGNATURES,
        thread_threshold: int = THREAD_THRESHOLD,
        min_key_bits: int = MIN_KEY_BITS,
    ) -> None:
        self.resolver = resolver
        self.lifetime = lifetime
        self.max_signatures = max_signatures
        self.thread_threshold = thread_threshold
        self.min_key_bits = min_key_bits

    async def verify(
        self, message: bytes, fields: Sequence[HeaderField] | None = None
    ) -> DkimResult:
        """All signatures of `message` (CRLF line endings), in header order. `fields` is the
        message's header section as gateway.message scanned it (scanned here when not given)."""
        head = message[: header_end(message)]
        if b"dkim-signature" not in head.lower():
            return DkimResult()
        if fields is None:
            fields = scan_fields(message)
        try:
            verifier = dkim.DKIM(message, logger=DKIMPY_LOG, minkey=0)
        except dkim.MessageFormatError as exc:
            return self._unparseable(message, fields, str(exc))
        body: bytes = verifier.body
        headers = [h for h in verifier.headers if h[0].lower() == b"dkim-signature"]
        skipped = max(0, len(headers) - self.max_signatures)
        plans = [self._plan(i, header) for i, header in enumerate(headers[: self.max_signatures])]
        keys = KeyCache(self.resolver)
        pending = [p for p in plans if p.pending]
        try:
            async with asyncio.timeout(self.lifetime):
                await keys.fetch(p.sig.lookup_name for p in pending)
        except TimeoutError:
            pass  # names without an answer become temperrors below
        for plan in pending:
            self._check_key(plan, keys)
        pending = [p for p in plans if p.pending]
        if pending:
            counts = _field_counts(fields)
            if len(message) > self.thread_threshold:
                await offload(self._verify_all, verifier, body, pending, keys, counts)
            else:
                self._verify_all(verifier, body, pending, keys, counts)
        return DkimResult(tuple(p.sig for p in plans), skipped)

    # -- step 1: read the signature, check the identities ------------------------------------

    def _plan(self, index: int, header: tuple[bytes, bytes]) -> _Plan:
        try:
            tags = parse_tags(header[1])
        except TagListError as exc:
            sig = DkimSignature(DkimVerdict.PERMERROR, reason=str(exc))
            return _Plan(index, {}, sig, False, header)
        sig = _base(tags)
        domain = _ascii(tags.get(b"d", b""))
        selector = _ascii(tags.get(b"s", b""))
        if not domain or not selector or not valid_domain(domain) or not valid_selector(selector):
            missing = b"d" not in tags or b"s" not in tags
            return _Plan(
                index,
                tags,
                _with(
                    sig,
                    identity_valid=missing,
                    reason="missing d= or s=" if missing else "d= or s= is not a valid DNS name",
                ),
                False,
                header,
            )
        checked = check_signature(tags)
        if checked.problem:
            return _Plan(index, tags, _with(sig, reason=checked.problem), False, header)
        if checked.tags[b"a"] == b"rsa-sha1":
            return _Plan(
                index, tags, _with(sig, reason="rsa-sha1 is not accepted (RFC 8301)"), False, header
            )
        if b"i" in tags:  # shown decoded (Authentication-Results header.i)
            sig = _with(sig, identity=_printable(checked.identity))
        sig = _with(sig, domain=domain, selector=selector)
        return _Plan(index, checked.tags, sig, True, header, checked.identity)

    # -- step 2: the key ------------------------------------------------------------------------

    def _check_key(self, plan: _Plan, keys: KeyCache) -> None:
        name = plan.sig.lookup_name
        status = keys.status(name)
        if status is None or status.is_temporary:
            why = "timeout" if status is None else status.status.value
            plan.sig = _with(plan.sig, result=DkimVerdict.TEMPERROR, reason=f"key lookup: {why}")
            plan.pending = False
            return
        checked = keys.checked(name)
        if checked is None:
            reason = "no key for signature" if status.status.is_negative else status.detail
            plan.sig = _with(plan.sig, reason=reason or "no key for signature")
            plan.pending = False
            return
        problem, bits, rsa = self._key_problem(plan, checked, name)
        if problem:
            plan.sig = _with(plan.sig, reason=problem)
            plan.pending = False
            return
        plan.sig = _with(plan.sig, key_bits=bits, weak_key=rsa and bits < self.min_key_bits)

    @staticmethod
    def _key_problem(plan: _Plan, key: CheckedKey, name: str) -> tuple[str, int, bool]:
        """(problem or "", key bits, is RSA) for the key record of one signature."""
        if key.problem:
            return key.problem, 0, False
        try:
            _pk, bits, ktag, _tlsrpt = dkim.evaluate_pk(name.encode("ascii"), key.record)
        except (dkim.DKIMException, binascii.Error, ValueError, TypeError, IndexError) as exc:
            return f"unusable key: {type(exc).__name__}", 0, False
        if ktag is None:  # dkimpy's way of saying it could not use the record
            return "unusable key", 0, False
        tags = plan.tags
        algorithm = tags[b"a"]
        if (ktag == b"ed25519") != algorithm.startswith(b"ed25519"):
            return "key type does not match a=", 0, False
        hashes = key.tags.get(b"h")
        if hashes is not None:
            allowed = {h.lower() for h in colon_list(hashes)}
            if algorithm.rpartition(b"-")[2] not in allowed:
                return "key h= does not allow the signature's hash", 0, False
        flags = {f.lower() for f in colon_list(key.tags.get(b"t", b""))}
        if b"s" in flags and b"i" in tags:
            i_domain = plan.identity.rpartition(b"@")[2].lower().rstrip(b".")
            if i_domain != tags[b"d"].lower().rstrip(b"."):
                return "key t=s: i= must be in d= exactly", 0, False
        return "", int(bits or 0), ktag == b"rsa"

    # -- step 3: dkimpy, CPU only ------------------------------------------------------------------

    def _verify_all(
        self,
        verifier: dkim.DKIM,
        body: bytes,
        plans: list[_Plan],
        keys: KeyCache,
        counts: dict[str, int],
    ) -> None:
        for plan in plans:
            plan.pending = False
            # dkimpy's verify() would check the tags again with its own, non-conforming rules
            # (gateway.auth.dkim_tags); verify_sig takes the checked tags and hashes the field
            # as it was sent. It appends "from" to the list it is given: a fresh one each time.
            signed = [name.lower() for name in colon_list(plan.tags[b"h"])]
            try:
                ok = verifier.verify_sig(plan.tags, signed, plan.header, keys.dnsfunc)
            except dkim.ValidationError as exc:
                text = str(exc)
                if text.startswith("body hash mismatch"):
                    plan.sig = _with(plan.sig, result=DkimVerdict.FAIL, reason="body hash mismatch")
                else:
                    plan.sig = _with(plan.sig, reason=_printable(text.encode(), 100))
                continue
            except dkim.DKIMException as exc:
                plan.sig = _with(plan.sig, reason=_printable(str(exc).encode(), 100))
                continue
            if not ok:
                plan.sig = _with(
                    plan.sig, result=DkimVerdict.FAIL, reason="signature did not verify"
                )
                continue
            plan.sig = self._judge(plan, body, counts)

    def _judge(self, plan: _Plan, body: bytes, counts: dict[str, int]) -> DkimSignature:
        signed = [h.lower() for h in colon_list(plan.tags.get(b"h", b""))]
        names = [_ascii(h) or "?" for h in signed]
        oversigned = names.count("from") > counts.get("from", 0)
        duplicated = tuple(
            sorted(n for n in set(names) & SINGLE_FIELDS if counts.get(n, 0) > names.count(n))
        )
        sig = _with(plan.sig, from_oversigned=oversigned, duplicated_fields=duplicated)
        reasons: list[str] = []
        unsigned = 0
        if sig.body_length is not None:
            try:
                policy = CanonicalizationPolicy.from_c_value(plan.tags.get(b"c", b"simple/simple"))
                length = len(policy.canonicalize_body(body))
            except InvalidCanonicalizationPolicyError:
                length = sig.body_length
            if sig.body_length > length:
                # The signer claims to have hashed more than there is: a broken or crafted
                # signature (dkimpy hashes what there is and passes it).
                return _with(sig, reason="l= is larger than the body")
            unsigned = length - sig.body_length
            if unsigned:
                reasons.append(f"l= leaves {unsigned} octets of the body unsigned")
        if sig.weak_key:
            reasons.append(f"{sig.key_bits}-bit key is too weak (RFC 8301)")
        if reasons:
            return _with(
                sig, result=DkimVerdict.POLICY, body_unsigned=unsigned, reason="; ".join(reasons)
            )
        return _with(sig, result=DkimVerdict.PASS, reason="")

    # -- a header section dkimpy cannot read ---------------------------------------------------

    def _unparseable(self, message: bytes, fields: Sequence[HeaderField], why: str) -> DkimResult:
        """dkimpy refused the header section (a line that is not a field): every signature we can
        see is a permerror, so it gives no credit and the reason is on record."""
        sigs: list[DkimSignature] = []
        for f in fields:
            if f.name != "dkim-signature":
                continue
            raw = f.raw(message)
            value = raw.partition(b":")[2].replace(b"\r\n", b"")
            try:
                tags = parse_tag_value(value)
            except InvalidTagValueList:
                tags = {}
            sigs.append(_with(_base(tags), reason="header section dkimpy cannot parse"))
        log.debug("unparseable header section: %s", _printable(why.encode(), 100))
        return DkimResult(
            tuple(sigs[: self.max_signatures]), max(0, len(sigs) - self.max_signatures)
        )


def _field_counts(fields: Sequence[HeaderField]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in fields:
        if f.name:
            counts[f.name] = counts.get(f.name, 0) + 1
    return counts
