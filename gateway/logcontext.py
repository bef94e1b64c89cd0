"""The queue id of the transaction being handled, on every log line written meanwhile.

A plugin's warning, a delivery error, a quarantine write or a DNS failure happens while one
message is being handled, but only the lines we wrote knowing the message said `qid=...`. The id
lives in a ContextVar instead: set at MAIL (where it is made), kept while the connection's task
handles that transaction, cleared when it ends. Each connection runs in its own asyncio task,
with its own copy of the context, so concurrent sessions never see each other's id; tasks a
plugin starts, and `asyncio.to_thread` calls, copy the context and so inherit it. `QidFilter`
puts it on every record as `record.qid` (None outside a transaction) for the formatters.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

_current_qid: ContextVar[str | None] = ContextVar("mailgate_qid", default=None)


def bind_qid(qid: str | None) -> None:
    """From now on, in this task (and the tasks and threads it starts), lines carry `qid`."""
    _current_qid.set(qid)


def current_qid() -> str | None:
    return _current_qid.get()


class QidFilter(logging.Filter):
    """Adds `record.qid` (the current transaction's queue id, or None); never drops a record.

    On the handler, not on a logger: a logger's filters do not see its children's records.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "qid"):  # a caller's extra={"qid": ...} wins
            record.qid = _current_qid.get()
        return True
