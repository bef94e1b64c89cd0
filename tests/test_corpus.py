"""Corpus-driven plugin tests: every tests/corpus/<plugin>/<case>.eml beside its <case>.toml.

After Rspamd's test/functional/cases/116_dkim.robot: a message, an envelope, the symbols it must
and must not raise. The real registry and chain run every phase (CONNECT, HELO, MAIL, one RCPT
per recipient, DATA) against the loopback DNS server serving the case's records, so a plugin is
tested exactly as the gateway runs it, and a new plugin needs a folder of cases, not a test file.

A case file (every key optional except `expected` or `unexpected`):

    description = "why this case exists"
    order = ["spf", "dkim", "arc", "dmarc"]   # the chain; default: [the folder's name]
    expected = ["SPF_PASS"]                   # all of these are raised
    unexpected = ["SPF_FAIL"]                 # none of these is
    [envelope]                                # defaults: ENVELOPE below
    client_ip = "192.0.2.10"; helo = "mail.example.net"
    mail_from = "alice@example.net"; rcpt = ["bob@example.com"]
    tls = { version = "TLSv1.3", cipher = "TLS_AES_256_GCM_SHA384", bits = 256 }
    [dns]                                     # zone data for dns_server.load
    "example.net" = [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]]
    "slow.example" = ["TIMEOUT"]
    [rules]                                   # replace a file of the shipped rules/
    "lists.toml" = '''...'''
    xfail = "issue 12: ..."                   # a known wrong reading (strict: a fix shows)
    [[steps]]                                 # applied to the .eml in order, at test time
    do = "dkim_sign"                          # or "arc_seal", "replace", "prepend"

The .eml is read as bytes; one written with bare LF line endings gets CRLF, as SMTP carries it.
The public DKIM keys of tests/auth_helpers.py are always published, so cases can sign with them.
"""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
import pytest
from auth_helpers import ED25519, RSA1024, RSA2048, WEAK_PRIVATE, crlf, key_zone
from dns_fixtures import dns_settings_for
from dns_server import DnsTestServer
from harness import REPO, make_settings

from gateway.chain import Chain
from gateway.config import ClassifierSettings, PluginSettings, Settings
from gateway.dns import Resolver
from gateway.plugin import ClientInfo, MessageContext, Phase, Services, TlsInfo
from gateway.plugins import builtin_registry
from gateway.policy import RuleSet, load_rules

CORPUS = Path(__file__).resolve().parent / "corpus"
ENVELOPE: Mapping[str, Any] = {
    "client_ip": "192.0.2.10",
    "helo": "mail.example.net",
    "mail_from": "alice@example.net",
    "rcpt": ["bob@example.com"],
}
SIGNING_KEYS = {"rsa1024": RSA1024, "rsa2048": RSA2048, "ed25519": ED25519, "weak": WEAK_PRIVATE}
# Plugins without corpus cases, and why.
NO_CORPUS = {"clamav": "needs a running clamd: tests/test_mime_clamav.py covers it"}


@dataclass(frozen=True)
class CorpusCase:
    """One .eml and what the chain must (and must not) say about it."""

    plugin: str
    name: str
    message: bytes
    order: tuple[str, ...]
    expected: frozenset[str]
    unexpected: frozenset[str]
    envelope: Mapping[str, Any]
    dns: Mapping[str, Any] = field(default_factory=dict)
    rules: Mapping[str, str] = field(default_factory=dict)
    xfail: str | None = None  # a known wrong reading, with its issue: strict, so a fix shows

    @property
    def id(self) -> str:
        return f"{self.plugin}/{self.name}"


def load_case(eml: Path) -> CorpusCase:
    expectations = eml.with_suffix(".toml")
    try:
        spec = tomllib.loads(expectations.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{expectations}: {exc}") from None
    raw = eml.read_bytes()
    if b"\r" not in raw:
        raw = crlf(raw)
    for step in spec.get("steps", []):
        raw = apply_step(raw, step)
    plugin = eml.parent.name
    return CorpusCase(
        plugin=plugin,
        name=eml.stem,
        message=raw,
        order=tuple(spec.get("order", [plugin])),
        expected=frozenset(spec.get("expected", [])),
        unexpected=frozenset(spec.get("unexpected", [])),
        envelope={**ENVELOPE, **spec.get("envelope", {})},
        dns=spec.get("dns", {}),
        rules=spec.get("rules", {}),
        xfail=spec.get("xfail"),
    )


def apply_step(raw: bytes, step: Mapping[str, Any]) -> bytes:
    """Sign, seal or edit the message at test time (no private key output is stored)."""
    action = step["do"]
    if action == "dkim_sign":
        key = SIGNING_KEYS[step.get("key", "rsa2048")]
        algorithm = b"ed25519-sha256" if key == ED25519 else b"rsa-sha256"
        headers = [h.encode() for h in step.get("headers", [])] or None
        signature: bytes = dkim.sign(
            raw,
            step.get("selector", "rsa2048").encode(),
            step.get("domain", "good.example").encode(),
            key,
            signature_algorithm=algorithm,
            include_headers=headers,
            length=bool(step.get("length", False)),
        )
        return signature + raw
    if action == "arc_seal":
        sealer = step["domain"]
        fields = step.get("headers", ["from", "to", "subject", "date", "message-id"])
        arc_set = dkim.arc_sign(
            raw,
            step.get("selector", "rsa1024").encode(),
            sealer.encode(),
            SIGNING_KEYS[step.get("key", "rsa1024")],
            step.get("srv_id", f"lists.{sealer}").encode(),
            include_headers=[h.encode() for h in fields],
        )
        return b"".join(arc_set) + raw
    if action == "replace":
        old, new = step["old"].encode(), step["new"].encode()
        assert old in raw, f"replace step: {old!r} not in the message"
        return raw.replace(old, new, 1)
    if action == "prepend":
        return crlf(step["text"].encode()) + raw
    raise ValueError(f"unknown corpus step {action!r}")


def corpus_cases() -> Iterator[CorpusCase]:
    for eml in sorted(CORPUS.glob("*/*.eml")):
        yield load_case(eml)


CASES = list(corpus_cases())


def published_keys() -> dict[str, Any]:
    """The public DKIM keys of auth_helpers, and the RSA 1024 one again as forward.example's
    ARC key (the mailing list that seals in the arc cases)."""
    zone: dict[str, Any] = dict(key_zone())
    zone["rsa1024._domainkey.forward.example"] = zone["rsa1024._domainkey.good.example"]
    return zone


def case_params() -> list[Any]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def case_settings(case: CorpusCase, tmp_path: Path, dns_server: DnsTestServer) -> Settings:
    base = make_settings(tmp_path, 1, plugins=PluginSettings(order=case.order, timeout=5))
    for name, text in case.rules.items():
        (base.rules_dir / name).write_text(text)
    return dataclasses.replace(
        base,
        dns=dns_settings_for(dns_server),
        classifier=ClassifierSettings(model=REPO / "models" / "spam.npz"),
    )


async def symbols_raised(case: CorpusCase, settings: Settings, resolver: Resolver) -> set[str]:
    """Every symbol the chain raises for `case`, phase by phase as the SMTP front runs them.

    The runner's one contact with the plugin API (registry, chain, context, phases): adapt
    here when that API changes.
    """
    envelope = case.envelope
    registry = builtin_registry()
    rules = load_rules(settings.rules_dir)
    assert registry.check_policy(case.order, rules) == []
    chain = Chain.build(registry, Services(settings, resolver))
    tls = envelope.get("tls")
    client = ClientInfo(
        ip=envelope["client_ip"],
        port=25,
        helo=envelope["helo"],
        esmtp=True,
        tls=TlsInfo(tls["version"], tls["cipher"], int(tls["bits"])) if tls else None,
    )
    ctx = MessageContext(client=client, rules=rules, settings=settings)
    await chain.run(Phase.CONNECT, ctx)
    await chain.run(Phase.HELO, ctx)
    ctx.mail_from = envelope["mail_from"]
    await chain.run(Phase.MAIL, ctx)
    for address in envelope["rcpt"]:
        ctx.rcpt_tos.append(address)
        await chain.run(Phase.RCPT, ctx)
    ctx.raw = case.message
    await chain.run(Phase.DATA, ctx)
    return {finding.symbol for finding in ctx.findings}


@pytest.mark.parametrize("case", case_params())
async def test_corpus_case(
    case: CorpusCase, tmp_path: Path, dns_server: DnsTestServer, dns_resolver: Resolver
) -> None:
    dns_server.load(published_keys())
    dns_server.load(case.dns)
    raised = await symbols_raised(case, case_settings(case, tmp_path, dns_server), dns_resolver)
    missing = case.expected - raised
    unwanted = case.unexpected & raised
    assert not missing and not unwanted, (
        f"{case.id}: missing {sorted(missing)}, unexpected {sorted(unwanted)}; "
        f"raised {sorted(raised)}"
    )


def case_rules(case: CorpusCase, tmp_path: Path) -> RuleSet:
    """The shipped rules/ with the case's own files (content rules declare symbols)."""
    directory = tmp_path / case.plugin / case.name
    shutil.copytree(REPO / "rules", directory)
    for name, text in case.rules.items():
        (directory / name).write_text(text)
    return load_rules(directory)


def test_every_case_names_declared_symbols_of_its_chain(tmp_path: Path) -> None:
    """A misspelt symbol would make `unexpected` pass vacuously."""
    registry = builtin_registry()
    for case in CASES:
        declared = registry.symbols_of(case.order, case_rules(case, tmp_path))
        assert case.expected or case.unexpected, f"{case.id} expects nothing"
        assert case.plugin in case.order, f"{case.id}: the chain lacks {case.plugin}"
        unknown = (case.expected | case.unexpected) - set(declared)
        assert not unknown, f"{case.id}: {sorted(unknown)} not declared by {case.order}"


def test_every_shipped_plugin_has_corpus_cases() -> None:
    per_plugin: dict[str, int] = {}
    for case in CASES:
        per_plugin[case.plugin] = per_plugin.get(case.plugin, 0) + 1
    for name in builtin_registry().names():
        if name in NO_CORPUS:
            continue
        assert per_plugin.get(name, 0) >= 2, f"tests/corpus/{name}/ needs at least 2 cases"
    stray = set(per_plugin) - set(builtin_registry().names())
    assert not stray, f"corpus folders for unknown plugins: {sorted(stray)}"


def test_every_eml_has_its_expectations() -> None:
    orphans: Sequence[Path] = [
        p for p in CORPUS.glob("*/*.eml") if not p.with_suffix(".toml").exists()
    ]
    assert not orphans
    lonely = [p for p in CORPUS.glob("*/*.toml") if not p.with_suffix(".eml").exists()]
    assert not lonely
