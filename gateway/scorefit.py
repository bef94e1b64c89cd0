"""`mailgate rules fit`: rules/ scores fitted to labelled mail, as SpamAssassin makes its own.

Hand-set scores drift from what the evidence is worth, and a symbol that looks like ham evidence
(an SPF pass) can be bought by any spammer. So the default scores are fitted:

1. Every message runs through the real chain and policy (the configured plugins, rules/), offline:
   DNS is a loopback server answering NXDOMAIN for every name, so no lookup leaves the machine
   and nothing is "listed". Forged fields are removed first, as on the live path.
2. Each message becomes its symbol vector (the sum of the weights of each symbol's findings).
3. A linear model is fitted: L2-regularised logistic regression, classes weighted equally, with
   sign bounds: a symbol scored above 0 (or at 0) in rules/ never gets a negative score, one
   scored below 0 never a positive one. The fit never invents credit: that stays an admin's
   decision, and evidence of spam can only be spam evidence.
4. The fit starts from the hand-set scores of rules/ (an existing fitted.toml is not read: it may
   have been fitted on the very mail the fit validates on). Symbols are left out of the fit,
   keeping their hand-set scores: those a forced action decides
   anyway; those whose reading offline is an artefact (SPF_, DKIM_, DMARC_, ARC_ results without
   DNS); those seen in fewer than `min_count` training messages; any the admin names. Messages
   a forced action decides are left out of the fit too, and counted with that action.
   Ordered families stay in order: the classifier's probability bands (ML_BAND_00 ... _999)
   must score never less for a spammier band, else a more certain spam could score less. The
   fit has no such constraint, so its band coefficients are pooled (pool adjacent violators,
   weighted by how many training messages fell in each band) before scaling, and a band the
   fit could not score (too rare) is then brought between its fitted neighbours.
5. The coefficients are put on the scale of rules/: multiplied by the largest factor for which at
   most `target_fpr` of training ham reaches the calibrated threshold (the tag threshold by
   default) once the kept scores are added, each score then kept within +-quarantine threshold.
6. Validation is on held-out data only, two ways, never a random split: by TIME (fit on the
   older messages, test on the newest `test_fraction`) and by SOURCE (each source folder in turn
   held out, with one of the other label, the fit made on all the rest). The figures (spam and
   phishing caught, ham lost at the thresholds; spam recall at 0.1% and 1% ham FPR of the
   total score) go into the header of the written file.

The written file is `rules/fitted.toml`: `[scores]` for the fitted symbols, read after
scores.toml and scores.d/ and overriding them (gateway.policy), so deleting it restores the
hand-set scores.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.text import printable

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.policy import RuleSet

HAM, SPAM, PHISH = "ham", "spam", "phish"
FIT_HELO = "client.example.net"  # what `mailgate scan` says by default
# Results that need DNS: offline (every answer NXDOMAIN) a signed message reads DKIM_PERMERROR,
# every domain DMARC_NO_RECORD..., which says nothing about live mail. They are not fitted, and
# count 0 in the offline totals. (The From and signature checks that need no DNS, such as
# DMARC_FROM_* or DKIM_SIGNED_FIELD_REPEATED, are fitted like any symbol.)
DNS_PREFIXES = ("SPF_", "ARC_", "RBL_", "URIBL_", "DNSBL_")
DNS_SYMBOLS = frozenset(
    {
        "DKIM_VALID",
        "DKIM_INVALID",
        "DKIM_NONE",
        "DKIM_TEMPERROR",
        "DKIM_PERMERROR",
        "DKIM_WEAK_KEY",
        "DMARC_PASS",
        "DMARC_KNOWN_SENDER",
        "DMARC_REJECT",
        "DMARC_QUARANTINE",
        "DMARC_NONE_POLICY",
        "DMARC_NO_RECORD",
        "DMARC_TEMPERROR",
        "DMARC_PERMERROR",
        "DMARC_AUTH_UNALIGNED",
        "DMARC_SPF_DISTRUSTED",
        "DMARC_ARC_OVERRIDE",
    }
)


def needs_dns(symbol: str) -> bool:
    return symbol in DNS_SYMBOLS or symbol.startswith(DNS_PREFIXES)


# Results of the SMTP connection: offline there is none (every message reads TLS_NONE), so they
# are not fitted either, and count 0 in the offline totals.
CONNECTION_PREFIXES = ("TLS_",)


def offline_artefact(symbol: str) -> bool:
    """A symbol whose offline reading says nothing about live mail (DNS or connection)."""
    return needs_dns(symbol) or symbol.startswith(CONNECTION_PREFIXES)


FITTED_FILE = "fitted.toml"


@dataclass(frozen=True)
class Sample:
    """One labelled message as the chain saw it."""

    label: str  # ham, spam or phish
    source: str
    time: float  # nan when it has no usable date
    vector: Mapping[str, float]
    forced: str = ""  # the action a forced symbol decided ("" for none)

    @property
    def is_spam(self) -> bool:
        return self.label != HAM


@dataclass(frozen=True)
class FitSettings:
    target_fpr: float = 0.001
    calibrate_at: str = "tag"  # or "quarantine"
    test_fraction: float = 0.2
    min_count: int = 5
    l2: float = 1.0
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Figures:
    """What a policy does to held-out mail (the thresholds of rules/)."""

    ham: int
    spam: int
    phish: int
    ham_flagged: int  # tagged or worse
    spam_caught: int  # tagged or worse
    phish_caught: int
    spam_quarantined: int  # quarantine or reject
    recall_at_01: float  # spam (and phishing) recall at 0.1% ham FPR of the total score
    recall_at_1: float

    def line(self) -> str:
        def pct(part: int, whole: int) -> str:
            return f"{100 * part / whole:.1f}%" if whole else "n/a"

        return (
            f"ham lost (tag+) {self.ham_flagged}/{self.ham} ({pct(self.ham_flagged, self.ham)}); "
            f"spam caught (tag+) {pct(self.spam_caught, self.spam)} of {self.spam}, "
            f"quarantine+ {pct(self.spam_quarantined, self.spam)}; "
            f"phishing caught {pct(self.phish_caught, self.phish)} of {self.phish}; "
            f"recall at 0.1% FPR {100 * self.recall_at_01:.1f}%, "
            f"at 1% FPR {100 * self.recall_at_1:.1f}%"
        )


@dataclass
class FitReport:
    scores: dict[str, float]
    kept: dict[str, str]  # symbol -> why it was not fitted
    time_split: Figures | None
    source_folds: list[tuple[str, Figures]] = field(default_factory=list)
    in_sample: Figures | None = None
    messages: dict[str, int] = field(default_factory=dict)
    sources: list[tuple[str, str]] = field(default_factory=list)


# -- collecting symbol vectors -------------------------------------------------------------------


async def collect(
    gateway: Gateway,
    sources: Sequence[tuple[str, Path]],
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Sample]:
    """Every message of every (label, path) through the chain; duplicates (same bytes) once,
    under the first label given (list phishing first: it is usually a subset of a spam set)."""
    from gateway.classifier.corpus import iter_source, sort_time

    seen: set[bytes] = set()
    samples: list[Sample] = []
    for label, path in sources:
        count = 0
        for _, raw in iter_source(path):
            if limit is not None and count >= limit:
                break
            digest = hashlib.sha256(raw).digest()
            if digest in seen:
                continue
            seen.add(digest)
            count += 1
            vector, forced = await symbol_vector(gateway, raw)
            samples.append(Sample(label, str(path), sort_time(raw), vector, forced))
        if progress is not None:
            progress(f"{label} {path}: {count} messages")
    return samples


async def symbol_vector(gateway: Gateway, raw: bytes) -> tuple[dict[str, float], str]:
    """The symbols (summed weights) the chain finds in one message, and a forced action: the
    message read exactly as `mailgate scan` reads it (gateway.scan.scan_message: the header
    From as envelope sender, forged fields removed), so the fit and scan never disagree."""
    from gateway.scan import Envelope, scan_message

    domains = gateway.settings.relay.domains
    rcpt = f"postmaster@{domains[0].lstrip('.')}" if domains else "postmaster@example.com"
    envelope = Envelope(mail_from="", rcpt_tos=(rcpt,), client_ip="192.0.2.1", helo=FIT_HELO)
    verdict = (await scan_message(gateway, "", raw, envelope)).verdict
    vector: dict[str, float] = {}
    for f in verdict.findings:
        vector[f.symbol] = vector.get(f.symbol, 0.0) + f.finding.weight
    return vector, verdict.action.value if verdict.forced_by else ""


# -- the fit -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The parts of a RuleSet the fit needs: scores, forced symbols, thresholds."""

    scores: Mapping[str, float]
    forced: frozenset[str]
    tag: float
    quarantine: float
    reject: float


def fit_symbols(
    train: Sequence[Sample], policy: Policy, settings: FitSettings
) -> tuple[list[str], dict[str, str]]:
    """Which symbols the fit may score, and why each other one seen keeps its rules/ score."""
    counts: dict[str, int] = {}
    for s in train:
        if s.forced:
            continue
        for symbol in s.vector:
            counts[symbol] = counts.get(symbol, 0) + 1
    fitted, kept = [], {}
    for symbol in sorted({sym for s in train for sym in s.vector}):
        if symbol in policy.forced:
            kept[symbol] = "decided by a forced action"
        elif needs_dns(symbol):
            kept[symbol] = "needs DNS (offline it reads NXDOMAIN): counted 0 here"
        elif offline_artefact(symbol):
            kept[symbol] = "a result of the SMTP connection (offline there is none): counted 0"
        elif symbol in settings.keep:
            kept[symbol] = "kept by the admin (--keep)"
        elif counts.get(symbol, 0) < settings.min_count:
            kept[symbol] = f"in fewer than {settings.min_count} training messages"
        else:
            fitted.append(symbol)
    return fitted, kept


def _logistic(
    rows: Sequence[Sample], symbols: Sequence[str], policy: Policy, l2: float
) -> dict[str, float]:
    """Sign-bounded L2 logistic regression of the labels on the symbol vectors (scipy L-BFGS-B),
    the two classes weighted equally; returns a coefficient per symbol (the intercept dropped:
    the thresholds of rules/ play its part after calibration)."""
    import numpy as np
    from scipy.optimize import minimize

    index = {s: i for i, s in enumerate(symbols)}
    x = np.zeros((len(rows), len(symbols)))
    for r, sample in enumerate(rows):
        for symbol, value in sample.vector.items():
            j = index.get(symbol)
            if j is not None:
                x[r, j] = value
    y = np.array([1.0 if s.is_spam else -1.0 for s in rows])
    n_spam = max(1, int((y > 0).sum()))
    n_ham = max(1, int((y < 0).sum()))
    weight = np.where(y > 0, 0.5 / n_spam, 0.5 / n_ham)

    def loss(theta: Any) -> tuple[float, Any]:
        w, b = theta[:-1], theta[-1]
        margin = y * (x @ w + b)
        value = float(weight @ np.logaddexp(0.0, -margin) + 0.5 * l2 * (w @ w) / len(rows))
        slope = -weight * y / (1.0 + np.exp(np.clip(margin, -50, 50)))
        grad = np.append(x.T @ slope + l2 * w / len(rows), slope.sum())
        return value, grad

    bounds: list[tuple[float | None, float | None]] = []
    for symbol in symbols:
        current = policy.scores.get(symbol, 0.0)
        bounds.append((None, 0.0) if current < 0 else (0.0, None))
    bounds.append((None, None))
    result = minimize(loss, np.zeros(len(symbols) + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    return {s: float(result.x[i]) for s, i in index.items()}


def _total(sample: Sample, scores: Mapping[str, float]) -> float:
    """The sample's score as live mail would have it, DNS and connection results left out."""
    return sum(
        scores.get(symbol, 0.0) * value
        for symbol, value in sample.vector.items()
        if not offline_artefact(symbol)
    )


def _scaled(coef: Mapping[str, float], factor: float, policy: Policy) -> dict[str, float]:
    cap = policy.quarantine
    return {s: round(max(-cap, min(cap, c * factor)), 2) for s, c in coef.items()}


def calibrate(
    coef: Mapping[str, float], ham: Sequence[Sample], policy: Policy, settings: FitSettings
) -> dict[str, float]:
    """Scores: the coefficients times the largest factor that lets at most `target_fpr` of
    `ham` more reach the calibrated threshold than the kept symbols' rules/ scores already do."""
    threshold = policy.tag if settings.calibrate_at == "tag" else policy.quarantine
    allowed = math.floor(settings.target_fpr * len(ham))
    allowed += sum(
        _total(s, {**policy.scores, **dict.fromkeys(coef, 0.0)}) >= threshold for s in ham
    )
    biggest = max((abs(c) for c in coef.values()), default=0.0)
    if biggest == 0.0 or not ham:
        return _scaled(coef, 0.0, policy)

    def flagged(factor: float) -> int:
        scores = {**policy.scores, **_scaled(coef, factor, policy)}
        return sum(_total(s, scores) >= threshold for s in ham)

    low, high = 0.0, 2 * policy.quarantine / biggest  # high: the top symbol past its cap
    if flagged(high) <= allowed:
        return _scaled(coef, high, policy)
    for _ in range(30):
        middle = (low + high) / 2
        if flagged(middle) <= allowed:
            low = middle
        else:
            high = middle
    return _scaled(coef, low, policy)


# Families of symbols whose scores must not decrease along their order: the classifier's bands,
# low to high spam probability. A band's place is its suffix read as a fraction (ML_BAND_05 is
# 0.05, ML_BAND_999 is 0.999), which orders them as the classifier cuts them.
ORDERED_PREFIXES = ("ML_BAND_",)


def band_rank(symbol: str) -> tuple[str, float] | None:
    """(family, place) of an ordered symbol, or None for any other symbol."""
    for prefix in ORDERED_PREFIXES:
        suffix = symbol[len(prefix) :]
        if symbol.startswith(prefix) and suffix.isdigit():
            return prefix, float("0." + suffix)
    return None


def _families(symbols: Iterable[str]) -> dict[str, list[str]]:
    """Ordered symbols by family, each family in its order."""
    found: dict[str, list[tuple[float, str]]] = {}
    for symbol in set(symbols):
        rank = band_rank(symbol)
        if rank is not None:
            found.setdefault(rank[0], []).append((rank[1], symbol))
    return {family: [s for _, s in sorted(items)] for family, items in found.items()}


def pool_adjacent_violators(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """The weighted least-squares non-decreasing fit of `values` (isotonic regression): each run
    that decreases is replaced by its weighted mean. Linear in the number of values."""
    blocks: list[list[float]] = []  # [weighted sum, weight, count]
    for value, weight in zip(values, weights, strict=True):
        weight = max(weight, 1e-12)
        blocks.append([value * weight, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, mass, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += mass
            blocks[-1][2] += count
    out: list[float] = []
    for total, mass, count in blocks:
        out.extend([total / mass] * int(count))
    return out


def ordered_coefficients(
    coef: Mapping[str, float], rows: Sequence[Sample], policy: Policy
) -> dict[str, float]:
    """`coef` with each ordered family's fitted members made non-decreasing (pool adjacent
    violators, weighted by the training messages in each band), then held to their sign
    bounds (which, for bands scored in order in rules/, keeps the order)."""
    out = dict(coef)
    for members in _families(coef).values():
        if len(members) < 2:
            continue
        weights = [sum(s.vector.get(m, 0.0) for s in rows) for m in members]
        pooled = pool_adjacent_violators([coef[m] for m in members], weights)
        for member, value in zip(members, pooled, strict=True):
            bounded_below = policy.scores.get(member, 0.0) >= 0
            out[member] = max(0.0, value) if bounded_below else min(0.0, value)
    return out


def order_unfitted_bands(
    scores: Mapping[str, float], kept: Mapping[str, str], policy: Policy, settings: FitSettings
) -> tuple[dict[str, float], dict[str, str]]:
    """A band the fit did not score (too rare in training, or never seen) still fires on live
    mail with its rules/ score: brought between its fitted neighbours' scores when it is out of
    order with them, and then written with the fitted ones. Bands an admin keeps (--keep) or a
    forced action decides are left as they are."""
    out, still_kept = dict(scores), dict(kept)
    for members in _families(set(scores) | set(policy.scores)).values():
        if not any(m in scores for m in members):
            continue
        floor = -math.inf
        for index, member in enumerate(members):
            if member in scores:
                floor = max(floor, scores[member])
                continue
            if member in settings.keep or member in policy.forced:
                continue
            above = [scores[m] for m in members[index + 1 :] if m in scores]
            ceiling = min(above, default=math.inf)
            current = policy.scores.get(member, 0.0)
            placed = min(max(current, floor), max(floor, ceiling))
            if placed != current:
                out[member] = round(placed, 2)
                still_kept.pop(member, None)
            floor = max(floor, placed)
    return out, still_kept


def fit(
    train: Sequence[Sample], policy: Policy, settings: FitSettings
) -> tuple[dict[str, float], dict[str, str]]:
    """Fitted scores (only the fitted symbols, and bands put in order) and the symbols kept
    with their reason."""
    symbols, kept = fit_symbols(train, policy, settings)
    rows = [s for s in train if not s.forced]
    if not symbols or not any(s.is_spam for s in rows) or all(s.is_spam for s in rows):
        return {}, kept
    coef = ordered_coefficients(_logistic(rows, symbols, policy, settings.l2), rows, policy)
    ham = [s for s in rows if not s.is_spam]
    scores = calibrate(coef, ham, policy, settings)
    return order_unfitted_bands(scores, kept, policy, settings)


# -- held-out figures ----------------------------------------------------------------------------


def _action(sample: Sample, scores: Mapping[str, float], policy: Policy) -> tuple[float, int]:
    """(total score, step): 0 relay, 1 tag, 2 quarantine or worse."""
    total = _total(sample, scores)
    if sample.forced:
        step = {"relay": 0, "tag": 1}.get(sample.forced, 2)
        return (math.inf if step == 2 else total), step
    if total >= policy.quarantine:
        return total, 2
    return total, 1 if total >= policy.tag else 0


def recall_at(ham_scores: Sequence[float], spam_scores: Sequence[float], fpr: float) -> float:
    """Spam recall with the threshold just above the highest ham scores that `fpr` allows."""
    if not spam_scores or not ham_scores:
        return 0.0
    ordered = sorted(ham_scores, reverse=True)
    allowed = math.floor(fpr * len(ordered))
    threshold = ordered[allowed] if allowed < len(ordered) else -math.inf
    return sum(s > threshold for s in spam_scores) / len(spam_scores)


def evaluate(test: Sequence[Sample], scores: Mapping[str, float], policy: Policy) -> Figures:
    ham = [_action(s, scores, policy) for s in test if not s.is_spam]
    spam = [_action(s, scores, policy) for s in test if s.label == SPAM]
    phish = [_action(s, scores, policy) for s in test if s.label == PHISH]
    bad = spam + phish
    return Figures(
        ham=len(ham),
        spam=len(spam),
        phish=len(phish),
        ham_flagged=sum(step >= 1 for _, step in ham),
        spam_caught=sum(step >= 1 for _, step in spam),
        phish_caught=sum(step >= 1 for _, step in phish),
        spam_quarantined=sum(step >= 2 for _, step in spam),
        recall_at_01=recall_at([t for t, _ in ham], [t for t, _ in bad], 0.001),
        recall_at_1=recall_at([t for t, _ in ham], [t for t, _ in bad], 0.01),
    )


def time_split(samples: Sequence[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Older messages to train on, the newest `fraction` to test on (undated ones train)."""
    dated = sorted((s for s in samples if s.time == s.time), key=lambda s: s.time)
    undated = [s for s in samples if s.time != s.time]
    cut = len(dated) - max(1, round(fraction * len(dated))) if dated else 0
    return undated + dated[:cut], dated[cut:]


def source_folds(samples: Sequence[Sample]) -> list[tuple[str, list[Sample], list[Sample]]]:
    """Each source held out in turn with one source of the other label (round robin)."""
    ham_sources = sorted({s.source for s in samples if not s.is_spam})
    spam_sources = sorted({s.source for s in samples if s.is_spam})
    if len(ham_sources) < 2 or len(spam_sources) < 2:
        return []
    folds = []
    for i in range(max(len(ham_sources), len(spam_sources))):
        out = {ham_sources[i % len(ham_sources)], spam_sources[i % len(spam_sources)]}
        name = " + ".join(sorted(Path(o).name for o in out))
        train = [s for s in samples if s.source not in out]
        test = [s for s in samples if s.source in out]
        folds.append((name, train, test))
    return folds


def run(samples: Sequence[Sample], policy: Policy, settings: FitSettings) -> FitReport:
    """Validate by time and by source, then fit the shipped scores on everything."""
    train, test = time_split(samples, settings.test_fraction)
    scores, _ = fit(train, policy, settings)
    timed = evaluate(test, {**policy.scores, **scores}, policy) if test else None
    folds = []
    for name, fold_train, fold_test in source_folds(samples):
        fold_scores, _ = fit(fold_train, policy, settings)
        folds.append((name, evaluate(fold_test, {**policy.scores, **fold_scores}, policy)))
    final, kept = fit(samples, policy, settings)
    report = FitReport(final, kept, timed, folds)
    report.in_sample = evaluate(samples, {**policy.scores, **final}, policy)
    for label in (HAM, SPAM, PHISH):
        report.messages[label] = sum(s.label == label for s in samples)
    report.sources = sorted({(s.label, s.source) for s in samples})
    return report


def pooled(folds: Iterable[tuple[str, Figures]]) -> Figures | None:
    """The source folds' counts added up (recall at FPR: the folds' mean)."""
    items = [f for _, f in folds]
    if not items:
        return None
    return Figures(
        ham=sum(f.ham for f in items),
        spam=sum(f.spam for f in items),
        phish=sum(f.phish for f in items),
        ham_flagged=sum(f.ham_flagged for f in items),
        spam_caught=sum(f.spam_caught for f in items),
        phish_caught=sum(f.phish_caught for f in items),
        spam_quarantined=sum(f.spam_quarantined for f in items),
        recall_at_01=sum(f.recall_at_01 for f in items) / len(items),
        recall_at_1=sum(f.recall_at_1 for f in items) / len(items),
    )


# -- the file ------------------------------------------------------------------------------------


def render(report: FitReport, policy: Policy, settings: FitSettings) -> str:
    """rules/fitted.toml: the fitted scores under a header that says how they were made."""
    now = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Scores fitted to labelled mail by `mailgate rules fit` (README: How the default scores",
        "# are made). Read after scores.toml and scores.d/, overriding them: delete this file to",
        "# go back to the hand-set scores; edit a value here to tune it.",
        f"# date: {now}",
        "# data: "
        + ", ".join(f"{report.messages.get(k, 0)} {k}" for k in (HAM, SPAM, PHISH))
        + " (duplicates once)",
    ]
    lines += [f"#   {label}: {printable(source, 200)}" for label, source in report.sources]
    lines += [
        "# method: every message through the chain and rules/ offline (DNS: NXDOMAIN for all);",
        "#   symbol vectors; L2 logistic regression (classes weighted equally), signs bounded by",
        "#   rules/ (no new credit); scaled so that at most "
        f"{100 * settings.target_fpr:g}% of training ham reaches",
        f"#   the {settings.calibrate_at} threshold; each score within +-{policy.quarantine:g}.",
        f"# thresholds: tag {policy.tag:g}, quarantine {policy.quarantine:g}, "
        f"reject {policy.reject:g}",
        "# held-out figures (never a random split):",
    ]
    if report.time_split is not None:
        lines += [
            f"#   time (newest {100 * settings.test_fraction:g}% held out):",
            f"#     {report.time_split.line()}",
        ]
    total = pooled(report.source_folds)
    if total is not None:
        lines.append(f"#   by source ({len(report.source_folds)} folds, each held out in turn):")
        lines.append(f"#     pooled: {total.line()}")
        for name, figures in report.source_folds:
            lines.append(f"#     {printable(name, 120)}: {figures.line()}")
    if report.in_sample is not None:
        lines.append(f"#   in sample (for comparison only): {report.in_sample.line()}")
    lines.append("# not fitted (their rules/ scores stay):")
    for symbol, why in sorted(report.kept.items()):
        lines.append(f"#   {symbol}: {why}")
    lines += ["", "[scores]"]
    for symbol, score in sorted(report.scores.items()):
        was = policy.scores.get(symbol, 0.0)
        lines.append(f"{symbol} = {score:.2f}".ljust(40) + f"# was {was:g}")
    return "\n".join(lines) + "\n"


def policy_of(gateway: Gateway) -> Policy:
    """The gateway's policy with rules/fitted.toml left out: the fit starts from the hand-set
    scores (their signs, the scores of what it keeps or cannot fit), never from an earlier fit's,
    which may have seen the very mail it now validates on."""
    from gateway.policy import load_rules

    policy = policy_of_rules(gateway.rules)
    hand = load_rules(gateway.settings.rules_dir, fitted=False).scores
    scores = {symbol: hand.get(symbol, score) for symbol, score in policy.scores.items()}
    return Policy(scores, policy.forced, policy.tag, policy.quarantine, policy.reject)


def policy_of_rules(rules: RuleSet) -> Policy:
    """What the fit needs of a loaded rules/."""
    return Policy(
        scores=dict(rules.scores),
        forced=frozenset(rules.forced),
        tag=rules.tag_threshold,
        quarantine=rules.quarantine_at,
        reject=rules.reject_at,
    )


def offline_gateway(gateway_settings: Any, dns_port: int, workdir: Path) -> Gateway:
    """The admin's gateway with DNS pointed at the loopback NXDOMAIN server and a scratch
    quarantine folder (the fit never stores anything)."""
    import dataclasses

    from gateway.app import Gateway
    from gateway.config import DnsSettings

    dns = DnsSettings(nameservers=("127.0.0.1",), port=dns_port, timeout=1.0, cache_size=10000)
    settings = dataclasses.replace(gateway_settings, dns=dns, quarantine_dir=workdir)
    return Gateway.create(settings)


def save_samples(samples: Iterable[Sample], path: Path) -> None:
    """The symbol vectors as JSON lines, to refit (other settings) without running the chain."""
    import json

    with path.open("w", encoding="utf-8") as out:
        for s in samples:
            row = {"label": s.label, "source": s.source, "time": s.time, "forced": s.forced}
            out.write(json.dumps({**row, "vector": dict(s.vector)}, allow_nan=True) + "\n")


def load_samples(path: Path) -> list[Sample]:
    import json

    samples = []
    with path.open(encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            samples.append(
                Sample(
                    str(row["label"]),
                    str(row["source"]),
                    float(row["time"]),
                    {str(k): float(v) for k, v in row["vector"].items()},
                    str(row.get("forced", "")),
                )
            )
    return samples


async def fit_sources(
    gateway: Gateway,
    sources: Sequence[tuple[str, Path]],
    settings: FitSettings,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    vectors: Path | None = None,
    save: Path | None = None,
) -> tuple[FitReport, Policy]:
    """Collect (or load `vectors`), optionally save them, validate and fit."""
    if vectors is not None:
        samples = await asyncio.to_thread(load_samples, vectors)
    else:
        samples = await collect(gateway, sources, limit, progress)
    if save is not None:
        await asyncio.to_thread(save_samples, samples, save)
    policy = policy_of(gateway)
    report = await asyncio.to_thread(run, samples, policy, settings)
    return report, policy
