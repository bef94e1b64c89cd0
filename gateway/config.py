"""Operator settings: config/gateway.toml -> a frozen `Settings`.

Settings are what the operator rarely changes (where to listen, where to deliver, limits, storage).
Policy that admins tune often lives in rules/ (see policy.py). Every error names the file, the key
and the line; unknown keys are errors too, since a misspelt limit silently ignored is a limit lost.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.domains import normalized
from gateway.mime.budgets import ClamavSettings, MimeSettings
from gateway.tomlfile import ConfigError, ConfigErrors, TomlFile

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


@dataclass(frozen=True)
class ListenSettings:
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = field(default_factory=socket.gethostname)
    proxy_protocol: bool = False
    proxy_trusted: tuple[Network, ...] = ()
    workers: int = 1  # > 1: a supervisor runs this many processes sharing the port (SO_REUSEPORT)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics over HTTP; off unless [metrics] address is set. With N workers, worker
    i (from 0) serves on port + i: one endpoint per process, no shared multiprocess directory."""

    host: str | None = None
    port: int = 9325

    @property
    def enabled(self) -> bool:
        return self.host is not None


@dataclass(frozen=True)
class RelaySettings:
    """Which recipients this gateway accepts mail for: it must never be an open relay."""

    domains: tuple[str, ...] = ()
    relay_networks: tuple[Network, ...] = ()


@dataclass(frozen=True)
class LimitSettings:
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_line_length: int = 4096
    max_command_length: int = 512
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    bare_line_endings: str = "reject"
    shutdown_grace: float = 30.0


# Forward secrecy only, AEAD first; the CBC suites stay for old MTAs on TLS 1.2, since the
# alternative for them is plaintext. TLS 1.3 suites are OpenSSL's own (all strong).
DEFAULT_CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:"
    "!aNULL:!eNULL:!EXPORT:!MD5:!DSS:!RC4:!3DES:!DES"
)


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path | None = None
    key_file: Path | None = None
    min_version: str = "TLSv1.2"  # or "TLSv1.3"
    ciphers: str = DEFAULT_CIPHERS  # OpenSSL cipher string for TLS 1.2


@dataclass(frozen=True)
class DeliverySettings:
    host: str = "127.0.0.1"
    port: int = 2526
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    data_timeout: float = 300.0
    client_identity: str = "xforward"
    helo_name: str | None = None
    tls: str = "none"  # STARTTLS toward the delivery server: none, opportunistic, required
    tls_ca_file: Path | None = None  # verify its certificate (chain and name) against this CA
    tls_fingerprints: tuple[str, ...] = ()  # or pin it: SHA-256 of the certificate, lowercase hex
    tls_server_name: str | None = None  # the name to verify (default: host)

    @property
    def tls_verified(self) -> bool:
        """Whether TLS to the delivery server authenticates it (a CA file or a pinned key)."""
        return self.tls != "none" and (self.tls_ca_file is not None or bool(self.tls_fingerprints))


@dataclass(frozen=True)
class PluginSettings:
    order: tuple[str, ...] = ("lists", "headers", "limits", "mime", "attachments")
    timeout: float = 10.0
    timeouts: Mapping[str, float] = field(default_factory=dict)

    def timeout_for(self, name: str) -> float:
        return self.timeouts.get(name, self.timeout)


@dataclass(frozen=True)
class DnsSettings:
    """The one resolver every DNS check uses (SPF, DKIM, DMARC). Defaults stay on loopback:
    point `nameservers` at your recursive resolver."""

    nameservers: tuple[str, ...] = ("127.0.0.1",)
    port: int = 53
    timeout: float = 5.0  # seconds per query, retransmissions and TCP fallback included
    cache_size: int = 10000  # answers kept (LRU); 0 disables the cache


@dataclass(frozen=True)
class QuarantineSettings:
    """How long quarantined messages are kept; the gateway deletes expired ones hourly."""

    retention_days: int = 30  # 0: keep until an admin deletes or purges them


@dataclass(frozen=True)
class ClassifierSettings:
    """The spam model the `classifier` plugin loads at start-up (its .json card sits beside it)."""

    model: Path = field(default_factory=lambda: Path.cwd() / "models" / "spam.npz")


@dataclass(frozen=True)
class Settings:
    """Everything config/gateway.toml says, validated; paths are absolute."""

    source: Path | None
    listen: ListenSettings
    relay: RelaySettings
    limits: LimitSettings
    tls: TlsSettings
    delivery: DeliverySettings
    plugins: PluginSettings
    rules_dir: Path
    quarantine_dir: Path
    dev_maildir: Path
    log_level: str = "info"
    dns: DnsSettings = field(default_factory=DnsSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    mime: MimeSettings = field(default_factory=MimeSettings)
    clamav: ClamavSettings = field(default_factory=ClamavSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


class _Reader:
    """Pulls typed values out of one TOML table, recording every problem instead of stopping."""

    def __init__(self, doc: TomlFile, errors: list[ConfigError]) -> None:
        self.doc = doc
        self.errors = errors

    def table(self, name: str, known: set[str]) -> Mapping[str, Any]:
        value = self.doc.data.get(name, {})
        if not isinstance(value, dict):
            self.errors.append(self.doc.error(name, "must be a table"))
            return {}
        for key in value:
            if key not in known:
                self.errors.append(
                    self.doc.error(
                        f"{name}.{key}", f"unknown setting (known: {', '.join(sorted(known))})"
                    )
                )
        return value

    def get(
        self,
        table: Mapping[str, Any],
        dotted: str,
        default: T,
        convert: Callable[[Any], T],
        expected: str,
    ) -> T:
        key = dotted.rpartition(".")[2]
        if key not in table:
            return default
        try:
            return convert(table[key])
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            self.errors.append(self.doc.error(dotted, f"must be {expected}{detail}"))
            return default


# A section's schema: field -> (converter, what the value must be); defaults come from the class.
Schema = Mapping[str, tuple[Callable[[Any], Any], str]]


def _read_section(
    read: _Reader, name: str, cls: Callable[..., T], schema: Schema, keys: Mapping[str, str]
) -> T:
    """Build `cls` from table `name`: each field read (and checked) per `schema`; `keys` gives the
    TOML key where it differs from the field name. Unknown keys in the table are errors."""
    table = read.table(name, {keys.get(f, f) for f in schema})
    defaults = cls()
    values = {
        field: read.get(
            table, f"{name}.{keys.get(field, field)}", getattr(defaults, field), convert, expected
        )
        for field, (convert, expected) in schema.items()
    }
    return cls(**values)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("")
    return value


def _port(value: Any) -> int:
    if _positive_int(value) > 65535:
        raise ValueError("")
    return int(value)


def _positive_float(value: Any) -> float:
    # `nan <= 0` is false, and asyncio.wait_for(..., nan) never times out: refuse nan and inf.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError("")
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return float(value)


_SECONDS: tuple[Callable[[Any], Any], str] = (_positive_float, "seconds (> 0)")


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("")
    return value


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"got {value!r}")
        return str(value)

    return convert


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("")
    return tuple(value)


def _domain_list(value: Any) -> tuple[str, ...]:
    domains = _string_list(value)
    for domain in domains:
        bare = domain.removeprefix(".")
        if not bare or "@" in bare or any(c.isspace() for c in bare):
            raise ValueError(f"{domain!r} is not a domain")
    return tuple(normalized(d) for d in domains)


def _networks(value: Any) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in _string_list(value))


def _ip_addresses(value: Any) -> tuple[str, ...]:
    addresses = _string_list(value)
    if not addresses:
        raise ValueError("at least one")
    return tuple(str(ipaddress.ip_address(v)) for v in addresses)


def _days(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36500:
        raise ValueError("")
    return value


def _cache_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("")
    return value


def _ciphers(value: Any) -> str:
    text = _string(value)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(text)
    except ssl.SSLError:
        raise ValueError("OpenSSL accepts no cipher from it") from None
    return text


def _fingerprints(value: Any) -> tuple[str, ...]:
    """SHA-256 certificate fingerprints, as `openssl x509 -fingerprint -sha256` prints them."""
    out = []
    for entry in _string_list(value):
        digest = entry.replace(":", "").strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{entry!r} is not 64 hex digits")
        out.append(digest)
    return tuple(out)


def _timeouts(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("")
    return {str(k): _positive_float(v) for k, v in value.items()}


def load_settings(path: Path | None) -> Settings:
    """Read and validate config/gateway.toml; `None` gives the embedded defaults."""
    if path is None:
        base = Path.cwd()
        return Settings(
            source=None,
            listen=ListenSettings(),
            relay=RelaySettings(domains=("example.com",)),
            limits=LimitSettings(),
            tls=TlsSettings(),
            delivery=DeliverySettings(),
            plugins=PluginSettings(),
            rules_dir=base / "rules",
            quarantine_dir=base / "var" / "quarantine",
            dev_maildir=base / "var" / "maildir",
        )
    path = path.resolve()
    doc = TomlFile.load(path)
    errors: list[ConfigError] = []
    read = _Reader(doc, errors)
    base = path.parent

    def rel(p: str) -> Path:
        return (base / p).resolve()

    for top in doc.data:
        if top not in _TABLES:
            errors.append(doc.error(top, f"unknown table (known: {', '.join(sorted(_TABLES))})"))

    listen = _read_section(
        read,
        "listen",
        ListenSettings,
        {
            "host": (_string, "an IP address"),
            "port": (_port, "a port number (1-65535)"),
            "hostname": (_string, "a host name"),
            "proxy_protocol": (_bool, "true or false"),
            "proxy_trusted": (_networks, "a list of networks like 10.0.0.0/8"),
            "workers": (_positive_int, "a number of processes (>= 1)"),
        },
        {"host": "address"},
    )
    if listen.proxy_protocol and not listen.proxy_trusted:
        errors.append(
            doc.error(
                "listen.proxy_trusted",
                "proxy_protocol needs the load balancers' networks here; "
                "otherwise any client could claim any address",
            )
        )
    relay = _read_section(
        read,
        "relay",
        RelaySettings,
        {
            "domains": (_domain_list, "a list of domain names"),
            "relay_networks": (_networks, "a list of networks like 192.0.2.0/24"),
        },
        {},
    )
    if not relay.domains and not relay.relay_networks:
        errors.append(
            doc.error("relay.domains", "no domains served and no relay networks: nothing to do")
        )
    count = (_positive_int, "a count (> 0)")
    limits = _read_section(
        read,
        "limits",
        LimitSettings,
        {
            "max_message_size": (_positive_int, "bytes (> 0)"),
            "max_recipients": count,
            "max_line_length": (_positive_int, "bytes (> 0)"),
            "max_command_length": (_positive_int, "bytes"),
            "idle_timeout": _SECONDS,
            "data_timeout": _SECONDS,
            "max_connections": count,
            "max_connections_per_ip": count,
            "bare_line_endings": (_one_of("reject", "normalize"), '"reject" or "normalize"'),
            "shutdown_grace": _SECONDS,
        },
        {},
    )
    if limits.max_command_length < 512:
        errors.append(
            doc.error("limits.max_command_length", "must be at least 512 (RFC 5321 4.5.3.1.4)")
        )
    if limits.max_line_length < 1000:
        errors.append(
            doc.error("limits.max_line_length", "must be at least 1000 (RFC 5321 4.5.3.1.6)")
        )
    t = read.table("tls", {"cert_file", "key_file", "min_version", "ciphers"})
    cert = read.get(t, "tls.cert_file", None, _string, "a file path")
    key = read.get(t, "tls.key_file", None, _string, "a file path")
    if (cert is None) != (key is None):
        errors.append(doc.error("tls", "cert_file and key_file go together"))
    tls = TlsSettings(
        cert_file=rel(cert) if cert else None,
        key_file=rel(key) if key else None,
        min_version=read.get(
            t,
            "tls.min_version",
            TlsSettings.min_version,
            _one_of("TLSv1.2", "TLSv1.3"),
            '"TLSv1.2" or "TLSv1.3"',
        ),
        ciphers=read.get(t, "tls.ciphers", DEFAULT_CIPHERS, _ciphers, "an OpenSSL cipher string"),
    )
    d = DeliverySettings()
    t = read.table("delivery", set(DeliverySettings.__dataclass_fields__))
    ca_file = read.get(t, "delivery.tls_ca_file", None, _string, "a file path")
    delivery = DeliverySettings(
        host=read.get(t, "delivery.host", d.host, _string, "a host name or IP address"),
        port=read.get(t, "delivery.port", d.port, _port, "a port number (1-65535)"),
        connect_timeout=read.get(
            t, "delivery.connect_timeout", d.connect_timeout, _positive_float, "seconds (> 0)"
        ),
        command_timeout=read.get(
            t, "delivery.command_timeout", d.command_timeout, _positive_float, "seconds (> 0)"
        ),
        data_timeout=read.get(
            t, "delivery.data_timeout", d.data_timeout, _positive_float, "seconds (> 0)"
        ),
        client_identity=read.get(
            t,
            "delivery.client_identity",
            d.client_identity,
            _one_of("xforward", "xclient", "none"),
            '"xforward", "xclient" or "none"',
        ),
        helo_name=read.get(t, "delivery.helo_name", None, _string, "a host name"),
        tls=read.get(
            t,
            "delivery.tls",
            d.tls,
            _one_of("none", "opportunistic", "required"),
            '"none", "opportunistic" or "required"',
        ),
        tls_ca_file=rel(ca_file) if ca_file else None,
        tls_fingerprints=read.get(
            t, "delivery.tls_fingerprints", (), _fingerprints, "a list of SHA-256 fingerprints"
        ),
        tls_server_name=read.get(t, "delivery.tls_server_name", None, _string, "a host name"),
    )
    if delivery.tls == "none" and (delivery.tls_ca_file or delivery.tls_fingerprints):
        errors.append(
            doc.error(
                "delivery.tls",
                'a CA file or fingerprints verify TLS: set tls = "opportunistic" or "required"',
            )
        )
    p = PluginSettings()
    t = read.table("plugins", {"order", "timeout", "timeouts"})
    plugins = PluginSettings(
        order=read.get(t, "plugins.order", p.order, _string_list, "a list of plugin names"),
        timeout=read.get(t, "plugins.timeout", p.timeout, _positive_float, "seconds (> 0)"),
        timeouts=read.get(t, "plugins.timeouts", {}, _timeouts, "a table of plugin name = seconds"),
    )
    t = read.table("paths", {"rules", "quarantine", "dev_maildir"})
    rules_dir = rel(read.get(t, "paths.rules", "../rules", _string, "a directory path"))
    quarantine_dir = rel(
        read.get(t, "paths.quarantine", "../var/quarantine", _string, "a directory path")
    )
    dev_maildir = rel(
        read.get(t, "paths.dev_maildir", "../var/maildir", _string, "a directory path")
    )
    dns = _read_section(
        read,
        "dns",
        DnsSettings,
        {
            "nameservers": (_ip_addresses, "a list of IP addresses"),
            "port": (_port, "a port number (1-65535)"),
            "timeout": _SECONDS,
            "cache_size": (_cache_size, "a count (>= 0)"),
        },
        {},
    )
    t = read.table("quarantine", set(QuarantineSettings.__dataclass_fields__))
    quarantine = QuarantineSettings(
        retention_days=read.get(
            t, "quarantine.retention_days", 30, _days, "a number of days (0: keep them)"
        )
    )
    mime, clamav = _mime_and_clamav(read, plugins)
    t = read.table("classifier", {"model"})
    classifier = ClassifierSettings(
        model=rel(read.get(t, "classifier.model", "../models/spam.npz", _string, "a file path"))
    )
    t = read.table("metrics", {"address"})
    metrics = MetricsSettings()
    address = read.get(t, "metrics.address", None, _host_port, '"host:port", like "127.0.0.1:9325"')
    if address is not None:
        metrics = MetricsSettings(host=address[0], port=address[1])
    t = read.table("logging", {"level"})
    log_level = read.get(
        t,
        "logging.level",
        "info",
        _one_of("debug", "info", "warning", "error"),
        '"debug", "info", "warning" or "error"',
    )
    if errors:
        raise ConfigErrors(errors)
    return Settings(
        source=path,
        listen=listen,
        relay=relay,
        limits=limits,
        tls=tls,
        delivery=delivery,
        plugins=plugins,
        rules_dir=rules_dir,
        quarantine_dir=quarantine_dir,
        dev_maildir=dev_maildir,
        log_level=log_level,
        dns=dns,
        quarantine=quarantine,
        mime=mime,
        clamav=clamav,
        classifier=classifier,
        metrics=metrics,
    )


_TABLES = {"listen", "relay", "limits", "tls", "delivery", "plugins", "paths", "logging", "dns"}
_TABLES.add("quarantine")
_TABLES.update({"mime", "clamav"})
_TABLES.add("classifier")
_TABLES.add("metrics")


def _host_port(value: Any) -> tuple[str, int]:
    host, sep, port = _string(value).rpartition(":")
    host = host.strip("[]")
    if not sep or not host:
        raise ValueError("")
    ipaddress.ip_address(host)
    return host, _port(int(port))


def _mime_and_clamav(read: _Reader, plugins: PluginSettings) -> tuple[MimeSettings, ClamavSettings]:
    """[mime] budgets (all positive numbers) and [clamav]: where clamd listens."""
    defaults = MimeSettings()
    t = read.table("mime", set(MimeSettings.__dataclass_fields__))
    values: dict[str, Any] = {}
    for key in MimeSettings.__dataclass_fields__:
        default = getattr(defaults, key)
        if isinstance(default, float):
            values[key] = read.get(t, f"mime.{key}", default, _positive_float, "seconds (> 0)")
        else:
            values[key] = read.get(t, f"mime.{key}", default, _positive_int, "a number (> 0)")
    c = ClamavSettings()
    t = read.table("clamav", set(ClamavSettings.__dataclass_fields__))
    clamav = ClamavSettings(
        address=read.get(t, "clamav.address", None, _string, 'a socket path or "host:port"'),
        timeout=read.get(t, "clamav.timeout", c.timeout, _positive_float, "seconds (> 0)"),
        chunk_size=read.get(t, "clamav.chunk_size", c.chunk_size, _positive_int, "bytes (> 0)"),
        max_stream=read.get(t, "clamav.max_stream", c.max_stream, _positive_int, "bytes (> 0)"),
    )
    if "clamav" in plugins.order and clamav.address is None:
        read.errors.append(
            read.doc.error("clamav.address", "the clamav plugin is enabled: say where clamd is")
        )
    return MimeSettings(**values), clamav
