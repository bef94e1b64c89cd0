"""The delivery sink: a tiny aiosmtpd server that accepts every message and discards it.

Run as its own process (`python3 -m bench.sink --port P`) so its CPU is not counted against the
gateway. It offers XFORWARD like Postfix does for a trusted gateway, so the gateway's relay path
is the one it takes in production. Every 250 after DATA carries `SINK_TOKEN`, which is how the
load generator tells a relayed message from one the gateway kept (quarantine) or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.devsink import XFORWARD_KEYWORD, EhloOffers, SinkSMTP

SINK_TOKEN = "bench-sink"
LOOPBACK = "127.0.0.1"


class DiscardHandler(EhloOffers):
    """aiosmtpd hooks: accept every sender, recipient and message; keep nothing."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def ehlo_changes(self, session: Session) -> tuple[list[str], set[str]]:
        return [XFORWARD_KEYWORD], set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages += 1
        self.bytes += len(envelope.original_content or b"")
        return f"250 2.0.0 Ok: discarded by {SINK_TOKEN}"


async def serve(host: str, port: int) -> None:
    handler = DiscardHandler()
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        return SinkSMTP(
            handler,
            hostname="sink.bench.test",
            ident="bench sink",
            data_size_limit=None,
            enable_SMTPUTF8=True,
            decode_data=False,
        )

    server = await loop.create_server(factory, host=host, port=port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.sink", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.host != LOOPBACK:
        parser.error("the bench sink listens on loopback only")
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
