"""Operator settings: config/gateway.toml -> a frozen `Settings`.

Settings are what the operator rarely changes (where to listen, where to deliver, limits, storage).
Policy that admins tune often lives in rules/ (see policy.py). Each settings class below is also
the schema of its table (gateway.schema): a field's type says what it may hold, its default what
a file that leaves it out gets, so a setting is declared once. Every error names the file, the
key and the line; unknown keys are errors too, since a misspelt limit silently ignored is a limit
lost.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationInfo,
)

from gateway.mime.budgets import ClamavSettings, MimeSettings
from gateway.schema import (
    TABLE_CONFIG,
    Array,
    Count,
    CountOrZero,
    DomainName,
    Flag,
    IpAddress,
    KeyProblem,
    Network,
    NetworkEntry,
    Port,
    Seconds,
    SettingPath,
    Text,
    validate_table,
)
from gateway.shipped import is_checkout, shipped
from gateway.tomlfile import ConfigError, ConfigErrors, TomlFile

__all__ = [
    "DEFAULT_CIPHERS",
    "DEFAULT_PLUGIN_ORDER",
    "ClamavSettings",
    "ClassifierSettings",
    "DeliverySettings",
    "DnsSettings",
    "LimitSettings",
    "ListenSettings",
    "MetricsSettings",
    "MimeSettings",
    "Network",
    "PluginSettings",
    "QuarantineSettings",
    "RelaySettings",
    "Settings",
    "TlsSettings",
    "load_settings",
]


def _system_user(name: str) -> str:
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user on this system: {name!r}") from None
    return name


def _system_group(name: str) -> str:
    try:
        grp.getgrnam(name)
    except KeyError:
        raise ValueError(f"no such group on this system: {name!r}") from None
    return name


@dataclass(frozen=True)
class ListenSettings:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    host: Annotated[Text, Field(alias="address")] = "127.0.0.1"
    port: Port = 2525
    hostname: Text = field(default_factory=socket.gethostname)
    proxy_protocol: Flag = False
    proxy_trusted: Array[NetworkEntry] = ()
    workers: Count = 1  # > 1: a supervisor runs this many processes sharing the port (SO_REUSEPORT)
    # Started as root: become this user (and group: default, the user's own) once bound.
    user: Annotated[Text, AfterValidator(_system_user)] | None = None
    group: Annotated[Text, AfterValidator(_system_group)] | None = None


class HostPort(NamedTuple):
    host: str
    port: int


def _host_port(value: Any) -> HostPort:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port) if sep else 0
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise ValueError('must be "host:port", like "127.0.0.1:9325" (an IP address and a port)')
    return HostPort(host, number)


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics over HTTP; off unless [metrics] address is set. With N workers, worker
    i (from 0) serves on port + i: one endpoint per process, no shared multiprocess directory."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    address: Annotated[HostPort | None, PlainValidator(_host_port)] = None

    @property
    def host(self) -> str | None:
        return self.address.host if self.address else None

    @property
    def port(self) -> int:
        return self.address.port if self.address else 9325

    @property
    def enabled(self) -> bool:
        return self.address is not None


@dataclass(frozen=True)
class RelaySettings:
    """Which recipients this gateway accepts mail for: it must never be an open relay."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    domains: Array[DomainName] = ()
    relay_networks: Array[NetworkEntry] = ()


def _rfc_minimum(minimum: int, section: str) -> Any:
    def check(value: int) -> int:
        if value < minimum:
            raise ValueError(f"must be at least {minimum} (RFC 5321 {section}) (got {value})")
        return value

    return AfterValidator(check)


@dataclass(frozen=True)
class LimitSettings:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    max_message_size: Count = 25 * 1024 * 1024
    max_recipients: Count = 100
    max_line_length: Annotated[Count, _rfc_minimum(1000, "4.5.3.1.6")] = 4096
    # The header section (up to the empty line), as Postfix's header_size_limit: a header past
    # it is refused while it streams in (552), so no reader of the header ever works on more.
    max_header_size: Count = 100 * 1024
    max_command_length: Annotated[Count, _rfc_minimum(512, "4.5.3.1.4")] = 512
    idle_timeout: Seconds = 300.0
    data_timeout: Seconds = 600.0
    max_connections: Count = 1000
    max_connections_per_ip: Count = 20
    bare_line_endings: Literal["reject", "normalize"] = "reject"
    shutdown_grace: Seconds = 30.0


# Forward secrecy only, AEAD first; the CBC suites stay for old MTAs on TLS 1.2, since the
# alternative for them is plaintext. TLS 1.3 suites are OpenSSL's own (all strong).
DEFAULT_CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:"
    "!aNULL:!eNULL:!EXPORT:!MD5:!DSS:!RC4:!3DES:!DES"
)


def _openssl_accepts(ciphers: str) -> str:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        raise ValueError(f"OpenSSL accepts no cipher from it (got {ciphers!r})") from None
    return ciphers


@dataclass(frozen=True)
class TlsSettings:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    cert_file: SettingPath | None = None
    key_file: SettingPath | None = None
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: Annotated[Text, AfterValidator(_openssl_accepts)] = DEFAULT_CIPHERS  # TLS 1.2


def _fingerprint(value: Any) -> str:
    """A SHA-256 certificate fingerprint, as `openssl x509 -fingerprint -sha256` prints it."""
    if not isinstance(value, str):
        raise ValueError(f"must be a list of SHA-256 fingerprints (got {value!r})")
    digest = value.replace(":", "").strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{value!r} is not 64 hex digits")
    return digest


@dataclass(frozen=True)
class DeliverySettings:
    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    host: Text = "127.0.0.1"
    port: Port = 2526
    connect_timeout: Seconds = 30.0
    command_timeout: Seconds = 60.0
    data_timeout: Seconds = 300.0
    client_identity: Literal["xforward", "xclient", "none"] = "xforward"
    helo_name: Text | None = None
    # STARTTLS toward the delivery server
    tls: Literal["none", "opportunistic", "required"] = "none"
    tls_ca_file: SettingPath | None = None  # verify its certificate (chain and name) with this CA
    # or pin it: SHA-256 of the certificate, lowercase hex
    tls_fingerprints: Array[Annotated[str, PlainValidator(_fingerprint)]] = ()
    tls_server_name: Text | None = None  # the name to verify (default: host)

    @property
    def tls_verified(self) -> bool:
        """Whether TLS to the delivery server authenticates it (a CA file or a pinned key)."""
        return self.tls != "none" and (self.tls_ca_file is not None or bool(self.tls_fingerprints))


# Every built-in check that needs no server of its own (clamav needs clamd: opt-in; the DNS
# reputation lists need only DNS). Sender authentication runs before the MIME stages that read
# the body, DMARC after SPF, DKIM and ARC (the registry checks that order), rbl after the link
# checks (it asks about the same links' domains), the advisory classifier last.
DEFAULT_PLUGIN_ORDER = (
    "lists",
    "headers",
    "limits",
    "tls",
    "spf",
    "mime",
    "attachments",
    "qr",
    "content",
    "links",
    "rbl",
    "dkim",
    "arc",
    "dmarc",
    "identity",
    "classifier",
)


@dataclass(frozen=True)
class PluginSettings:
    """[plugins]: the order, the time limits, and each plugin's own [plugins.NAME] table.

    `tables` holds those sub-tables as written: each plugin validates its own.
    """

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    order: Array[Text] = DEFAULT_PLUGIN_ORDER
    timeout: Seconds = 10.0
    timeouts: Mapping[str, Seconds] = field(default_factory=dict)
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def timeout_for(self, name: str) -> float:
        return self.timeouts.get(name, self.timeout)


_PLUGIN_KEYS = frozenset({"order", "timeout", "timeouts"})


def _plugin_tables_apart(value: Any) -> Any:
    """[plugins.NAME] sub-tables go to `tables`, raw; anything else is validated as written."""
    if not isinstance(value, dict):
        return value
    own = {k: v for k, v in value.items() if k in _PLUGIN_KEYS or not isinstance(v, dict)}
    tables = {k: v for k, v in value.items() if k not in own}
    return {**own, "tables": tables} if tables else own


@dataclass(frozen=True)
class DnsSettings:
    """The one resolver every DNS check uses (SPF, DKIM, DMARC...). Without `nameservers`, the
    system's: the nameserver lines of `resolv_conf`, as dnspython reads them, so a fresh install
    authenticates mail with whatever resolver the machine already uses."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    nameservers: Annotated[Array[IpAddress], Field(min_length=1)] | None = None
    port: Port = 53
    timeout: Seconds = 5.0  # seconds per query, retransmissions and TCP fallback included
    cache_size: CountOrZero = 10000  # answers kept (LRU); 0 disables the cache
    resolv_conf: SettingPath = Path("/etc/resolv.conf")  # read only when nameservers is unset


@dataclass(frozen=True)
class QuarantineSettings:
    """How long quarantined messages are kept; the gateway deletes expired ones hourly."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    # 0: keep until an admin deletes or purges them
    retention_days: Annotated[int, Strict(), Field(ge=0, le=36500)] = 30


@dataclass(frozen=True)
class ClassifierSettings:
    """The spam model the `classifier` plugin loads at start-up (its .json card sits beside it)."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    model: SettingPath = field(default_factory=lambda: shipped("models") / "spam.npz")


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
    dns: DnsSettings = field(default_factory=DnsSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    mime: MimeSettings = field(default_factory=MimeSettings)
    clamav: ClamavSettings = field(default_factory=ClamavSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingTable = field(default_factory=lambda: LoggingTable())


# -- the file: its tables, and the checks that span keys or tables -------------------------------


@dataclass(frozen=True)
class PathsTable:
    """[paths]; `load_settings` fills in what the file leaves out (`default_layout`)."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    rules: SettingPath
    quarantine: SettingPath
    dev_maildir: SettingPath


SyslogFacility = Literal[
    "mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
]  # fmt: skip


class SyslogAddress(NamedTuple):
    """A local socket (`path`) or a UDP `host:port`."""

    path: str | None
    host: str = ""
    port: int = 0


def _syslog_address(value: Any) -> SyslogAddress:
    if isinstance(value, str) and value.startswith("/"):
        return SyslogAddress(value)
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    host = host.strip("[]")
    number = int(port) if sep and port.isascii() and port.isdigit() else 0
    if not host or not 1 <= number <= 65535:
        raise ValueError(
            f'must be a socket path like "/dev/log" or a UDP "host:port" (got {value!r})'
        )
    return SyslogAddress(None, host, number)


LOCAL_SYSLOG = SyslogAddress("/dev/log")  # journald or rsyslog on every systemd machine


@dataclass(frozen=True)
class LoggingTable:
    """[logging]: how much (level), in what form (text or JSON lines) and where (stderr, a file
    reopened on SIGHUP/SIGUSR1, or syslog); gateway.logsetup applies it."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    destination: Literal["stderr", "file", "syslog"] = "stderr"
    file: SettingPath = Path("/var/log/mailgate/mailgate.log")  # with destination = "file"
    syslog_address: Annotated[SyslogAddress, PlainValidator(_syslog_address)] = LOCAL_SYSLOG
    facility: SyslogFacility = "mail"


def _proxy_needs_trusted(listen: ListenSettings) -> ListenSettings:
    if listen.proxy_protocol and not listen.proxy_trusted:
        raise KeyProblem(
            "proxy_trusted",
            "proxy_protocol needs the load balancers' networks here; "
            "otherwise any client could claim any address",
        )
    return listen


def _group_with_user(listen: ListenSettings) -> ListenSettings:
    if listen.group is not None and listen.user is None:
        raise KeyProblem("group", "is the group of [listen] user: set user too")
    return listen


def _serves_something(relay: RelaySettings) -> RelaySettings:
    if not relay.domains and not relay.relay_networks:
        raise KeyProblem("domains", "no domains served and no relay networks: nothing to do")
    return relay


def _cert_with_key(tls: TlsSettings) -> TlsSettings:
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ValueError("cert_file and key_file go together")
    return tls


def _verification_needs_tls(delivery: DeliverySettings) -> DeliverySettings:
    if delivery.tls == "none" and (delivery.tls_ca_file or delivery.tls_fingerprints):
        raise KeyProblem(
            "tls", 'a CA file or fingerprints verify TLS: set tls = "opportunistic" or "required"'
        )
    return delivery


def _clamd_located(clamav: ClamavSettings, info: ValidationInfo) -> ClamavSettings:
    plugins = info.data.get("plugins")  # absent when [plugins] itself is wrong
    if (
        isinstance(plugins, PluginSettings)
        and "clamav" in plugins.order
        and not clamav.address
        and "clamav" not in plugins.tables  # [plugins.clamav] validates its own address
    ):
        raise KeyProblem("address", "the clamav plugin is enabled: say where clamd is")
    return clamav


@dataclass(frozen=True)
class GatewayFile:
    """config/gateway.toml as written: its tables, in the order their checks need."""

    __pydantic_config__: ClassVar[ConfigDict] = TABLE_CONFIG

    listen: Annotated[
        ListenSettings, AfterValidator(_proxy_needs_trusted), AfterValidator(_group_with_user)
    ] = field(default_factory=ListenSettings)
    relay: Annotated[
        RelaySettings, AfterValidator(_serves_something), Field(validate_default=True)
    ] = field(default_factory=RelaySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    tls: Annotated[TlsSettings, AfterValidator(_cert_with_key)] = field(default_factory=TlsSettings)
    delivery: Annotated[DeliverySettings, AfterValidator(_verification_needs_tls)] = field(
        default_factory=DeliverySettings
    )
    plugins: Annotated[PluginSettings, BeforeValidator(_plugin_tables_apart)] = field(
        default_factory=PluginSettings
    )
    paths: PathsTable | None = None
    dns: DnsSettings = field(default_factory=DnsSettings)
    quarantine: QuarantineSettings = field(default_factory=QuarantineSettings)
    mime: MimeSettings = field(default_factory=MimeSettings)
    clamav: Annotated[
        ClamavSettings, AfterValidator(_clamd_located), Field(validate_default=True)
    ] = field(default_factory=ClamavSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    logging: LoggingTable = field(default_factory=LoggingTable)


# What neither a file nor its absence says: inside a source checkout, its own folders (rules/,
# models/, var/), as config/gateway.toml has them; anywhere else the rules and model installed
# with the package, the quarantine where the /etc/mailgate layout keeps it (README, "Install"),
# and the --dev sink's Maildir in the user's own state folder (a demo run by anyone can write it).
SYSTEM_QUARANTINE = Path("/var/lib/mailgate/quarantine")


def _user_state() -> Path:
    state = os.environ.get("XDG_STATE_HOME")
    return Path(state) if state else Path.home() / ".local" / "state"


def default_layout(checkout: Path | None) -> dict[str, dict[str, str]]:
    """[paths] and [classifier] model for what a file leaves out, as absolute paths."""
    if checkout is not None:
        return {
            "paths": {
                "rules": str(checkout / "rules"),
                "quarantine": str(checkout / "var" / "quarantine"),
                "dev_maildir": str(checkout / "var" / "maildir"),
            },
            "classifier": {"model": str(checkout / "models" / "spam.npz")},
        }
    return {
        "paths": {
            "rules": str(shipped("rules")),
            "quarantine": str(SYSTEM_QUARANTINE),
            "dev_maildir": str(_user_state() / "mailgate" / "maildir"),
        },
        "classifier": {"model": str(shipped("models") / "spam.npz")},
    }


def _checkout_of(folder: Path) -> Path | None:
    return folder if is_checkout(folder) else None


def _with_defaults(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    filled = dict(data)
    for table, values in defaults.items():
        written = filled.get(table, {})
        if isinstance(written, dict):  # otherwise validation says "must be a table"
            filled[table] = {**values, **written}
    return filled


def classifier_model_path(settings: Settings) -> Path:
    """The model the classifier plugin loads: `[plugins.classifier] model` (relative to the
    file's folder), else the older `[classifier] model`, else the shipped one. One answer for
    the plugin's table, `--version` and `mailgate model`."""
    own = settings.plugins.tables.get("classifier", {}).get("model")
    if isinstance(own, str) and own:
        base = settings.source.parent if settings.source is not None else Path.cwd()
        return (base / own).resolve()
    return settings.classifier.model


def load_settings(path: Path | None) -> Settings:
    """Read and validate config/gateway.toml; `None` gives the embedded defaults."""
    if path is None:
        cwd = Path.cwd()
        embedded = {"relay": {"domains": ["example.com"]}, **default_layout(_checkout_of(cwd))}
        doc = TomlFile(cwd / "(embedded defaults)", embedded, {})
        source = None
    else:
        source = path.resolve()
        doc = TomlFile.load(source)
        # config/gateway.toml of a checkout: the checkout's folders, as written in the shipped one
        layout = default_layout(_checkout_of(source.parent.parent))
        doc = TomlFile(doc.path, _with_defaults(doc.data, layout), doc.lines)
    errors: list[ConfigError] = []
    written = validate_table(doc, "", GatewayFile, doc.data, errors)
    if written is None:
        raise ConfigErrors(errors)
    if written.paths is None:  # never: default_layout gives it
        raise ConfigErrors([doc.error("paths", "is required")])
    return Settings(
        source=source,
        listen=written.listen,
        relay=written.relay,
        limits=written.limits,
        tls=written.tls,
        delivery=written.delivery,
        plugins=written.plugins,
        rules_dir=written.paths.rules,
        quarantine_dir=written.paths.quarantine,
        dev_maildir=written.paths.dev_maildir,
        dns=written.dns,
        quarantine=written.quarantine,
        mime=written.mime,
        clamav=written.clamav,
        classifier=written.classifier,
        metrics=written.metrics,
        logging=written.logging,
    )
