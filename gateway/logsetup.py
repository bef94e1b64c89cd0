"""[logging]: where log lines go (stderr, a file, syslog) and in what form (text or JSON lines).

Whatever the form, a line cannot carry a control character from the wire: text lines go through
gateway.text line by line (tracebacks included, which may quote a header value), and so do the
strings of a JSON line before json escapes them, so `jq -r .message` is as safe as `cat`. Every
line written while a transaction is handled carries its queue id (gateway.logcontext).

A file or syslog is written by one thread behind a queue, never by the event loop: a slow disk
or a syslog daemon that stops reading must not stall SMTP sessions. stderr is written directly,
as before (under systemd it is the journal). The file is reopened on SIGHUP and SIGUSR1 (for
logrotate without copytruncate); a failure to reopen keeps the old handle and says so on stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import logging
import logging.handlers
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.config import LoggingTable, Settings
from gateway.logcontext import QidFilter
from gateway.text import printable
from gateway.tomlfile import ConfigError, TomlFile

IDENT = "mailgate"
LINE_LIMIT = 20_000  # characters per line of a message or traceback: one value cannot flood

FACILITIES = {
    "mail": logging.handlers.SysLogHandler.LOG_MAIL,
    "daemon": logging.handlers.SysLogHandler.LOG_DAEMON,
    "user": logging.handlers.SysLogHandler.LOG_USER,
    **{f"local{n}": logging.handlers.SysLogHandler.LOG_LOCAL0 + n for n in range(8)},
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _safe_lines(text: str) -> str:
    """`text` with every control character escaped, its line breaks kept."""
    return "\n".join(printable(line, LINE_LIMIT) for line in text.split("\n"))


def _qid_field(record: logging.LogRecord, message: str) -> str:
    """`qid=X ` for a text line, unless the message already names that id (our own lines)."""
    qid = getattr(record, "qid", None)
    if not qid or f"qid={qid}" in message:
        return ""
    return f"qid={printable(str(qid), 64)} "


class SafeFormatter(logging.Formatter):
    """Text lines: control characters escaped in every line, tracebacks included; the current
    transaction's `qid=` put in front of the message (`%(qid_field)s`) when it lacks one.

    Our own log calls pass client values through gateway.text, but a traceback carries the raw
    exception text, which may quote a header value (a plugin's `int(value)`...): without this an
    escape sequence in a message could reach the admin's terminal through the log.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.qid_field = _qid_field(record, record.getMessage())
        return _safe_lines(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, qid, pid,
    worker, traceback; only ASCII, every string escaped by gateway.text first."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _safe_lines(record.getMessage()),
        }
        qid = getattr(record, "qid", None)
        if qid:
            entry["qid"] = printable(str(qid), 64)
        if self.worker is not None:
            entry["worker"] = self.worker
        entry["pid"] = record.process
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = _safe_lines(record.exc_text)
        if record.stack_info:
            entry["stack"] = _safe_lines(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)


class SyslogFormatter(logging.Formatter):
    """RFC 3164 framing around a text or JSON body: `Mmm dd hh:mm:ss [host ]mailgate[pid]: `.

    The SysLogHandler adds `<PRI>`. Local syslog (a socket path) gets no host name, as glibc's
    syslog(3) sends it; a remote one needs ours.
    """

    def __init__(self, body: logging.Formatter, hostname: str | None) -> None:
        super().__init__()
        self.body = body
        self.host = f"{hostname} " if hostname else ""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {clock}"
        return f"{stamp} {self.host}{IDENT}[{record.process}]: {self.body.format(record)}"


class ReopeningFileHandler(logging.StreamHandler[TextIO]):
    """Appends to `path`; `reopen` starts a new file there (after logrotate moved the old)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(self._open())
        self.failing = False

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        try:
            stream = self._open()
        except OSError as exc:
            _say(f"cannot reopen log file {self.path}: {exc.strerror}; still writing the old one")
            return
        old = self.setStream(stream)
        if old is not None:
            with contextlib.suppress(OSError):  # its last lines could not be flushed (disk full)
                old.close()
        self.failing = False  # a write failure on the new file is reported again
        # The first line of the new file: each process says it, so a rotation can be checked.
        logging.getLogger("mailgate").info("log file %s reopened", self.path)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failing:
            self.failing = True
            _say(f"cannot write to log file {self.path}: {sys.exc_info()[1]}")

    def close(self) -> None:
        self.acquire()
        try:
            if self.stream is not None and not self.stream.closed:
                with contextlib.suppress(OSError):  # unflushed lines on a full disk: lost, said
                    self.stream.close()
        finally:
            self.release()
        super().close()


class SyslogHandler(logging.handlers.SysLogHandler):
    """logging's SysLogHandler with a short failure report instead of a traceback per record."""

    failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failing:
            self.failing = True
            _say(f"cannot send to syslog {self.address}: {sys.exc_info()[1]}")


LOG_QUEUE_LIMIT = 20_000  # records waiting for a stalled disk or syslog daemon, at most


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records to the writer thread with the message merged and the traceback as text,
    so the writer's formatter still puts it where it belongs (a JSON `traceback` key).

    The queue is bounded: a destination that stalls must not grow our memory without end.
    Records that find it full are dropped and counted, and the count is logged once it drains.
    """

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.LogRecord(
                    "mailgate",
                    logging.WARNING,
                    __file__,
                    0,
                    "%d log lines dropped: the log destination did not keep up",
                    (self.dropped,),
                    None,
                )
                self.queue.put_nowait(self.prepare(note))
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        ready = copy.copy(record)
        ready.msg = record.getMessage()
        ready.args = None
        if record.exc_info:
            ready.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
        ready.exc_info = None
        return ready


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed: nowhere left to say it
        print(f"mailgate: {line}", file=sys.stderr, flush=True)


# -- the process's handlers -----------------------------------------------------------------

_reopenable: list[ReopeningFileHandler] = []
_early_reopen = False


def reopen_logs() -> None:
    """SIGHUP, SIGUSR1: start writing a new log file where the old one was (a no-op otherwise)."""
    for handler in list(_reopenable):
        handler.reopen()


def hold_early_reopens() -> None:
    """Until `install_reopen_signal`, a SIGUSR1 is only noted (the default action would end us:
    logrotate may send it while the model loads)."""

    def note(signum: int, frame: object) -> None:
        global _early_reopen
        _early_reopen = True

    signal.signal(signal.SIGUSR1, note)


def install_reopen_signal(loop: Any, reopen: Callable[[], None] = reopen_logs) -> None:
    """SIGUSR1 reopens the log file (a supervisor passes its own `reopen`: it forwards too)."""
    global _early_reopen
    loop.add_signal_handler(signal.SIGUSR1, reopen)
    if _early_reopen:
        _early_reopen = False
        loop.call_soon(reopen)


def _body_formatter(table: LoggingTable, worker: int | None) -> logging.Formatter:
    if table.format == "json":
        return JsonFormatter(worker)
    # A worker names itself on every line: which process handled which message.
    name = "%(name)s" if worker is None else f"%(name)s[worker {worker} pid %(process)d]"
    # syslog stamps the line itself
    stamp = "" if table.destination == "syslog" else "%(asctime)s "
    return SafeFormatter(f"{stamp}%(levelname)s {name}: %(qid_field)s%(message)s")


def _config_error(settings: Settings, key: str, problem: str) -> ConfigError:
    """A problem with `[logging] key`, at its line of the config file when there is one."""
    if settings.source is None:
        return ConfigError("(embedded defaults)", f"logging.{key}", None, problem)
    try:
        return TomlFile.load(settings.source).error(f"logging.{key}", problem)
    except ConfigError:
        return ConfigError(settings.source, f"logging.{key}", None, problem)


def _file_handler(settings: Settings) -> ReopeningFileHandler:
    path = settings.logging.file
    try:
        handler = ReopeningFileHandler(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        problem = f"cannot write the log file {path}: {reason}"
        raise _config_error(settings, "file", problem) from None
    _reopenable.append(handler)
    return handler


def _syslog_handler(settings: Settings, body: logging.Formatter) -> SyslogHandler:
    table = settings.logging
    where = table.syslog_address
    facility = FACILITIES[table.facility]
    try:
        if where.path is not None:
            # logging's handler keeps quiet when the socket is missing: ask it ourselves.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(where.path)
            handler = SyslogHandler(where.path, facility, socket.SOCK_DGRAM)
            hostname = None
        else:
            handler = SyslogHandler((where.host, where.port), facility, socket.SOCK_DGRAM)
            hostname = socket.gethostname().split(".")[0] or "-"
    except OSError as exc:
        address = where.path or f"{where.host}:{where.port}"
        reason = exc.strerror or str(exc)
        raise _config_error(
            settings, "syslog_address", f"cannot reach syslog at {address}: {reason}"
        ) from None
    handler.append_nul = False  # a datagram is one message; a NUL would show as "#000"
    handler.setFormatter(SyslogFormatter(body, hostname))
    return handler


def configure_logging(settings: Settings, worker: int | None = None) -> None:
    """Install [logging] on the root logger; a destination we cannot write is a ConfigError
    naming the file (or socket), raised before anything is logged there."""
    table = settings.logging
    body = _body_formatter(table, worker)
    handler: logging.Handler
    if table.destination == "stderr":
        handler = logging.StreamHandler()
        handler.setFormatter(body)
    else:
        writer: logging.Handler
        if table.destination == "file":
            writer = _file_handler(settings)
            writer.setFormatter(body)
        else:
            writer = _syslog_handler(settings, body)
        records: queue.Queue[logging.LogRecord] = queue.Queue(LOG_QUEUE_LIMIT)
        listener = logging.handlers.QueueListener(records, writer)
        listener.start()
        atexit.register(listener.stop)  # runs before logging's own shutdown: the queue drains
        handler = _Enqueue(records)
    handler.addFilter(QidFilter())  # in the caller's context, where the transaction's id is
    logging.basicConfig(level=getattr(logging, table.level.upper()), handlers=[handler])
    # aiosmtpd logs every command line at INFO; our own log line per message says what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
