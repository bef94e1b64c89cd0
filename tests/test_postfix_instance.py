"""Tests of the private Postfix used as the delivery server in end-to-end tests.

They talk to it over real loopback sockets with smtplib, so that a failing gateway end-to-end
test can be told apart from a broken fixture.
"""

from __future__ import annotations

import smtplib
import socket
import time
from pathlib import Path

import postfix_instance
import pytest
from postfix_instance import PostfixInstance, PostfixStartError

pytestmark = pytest.mark.postfix


def _body(message: bytes) -> bytes:
    """The body of a message as stored in a Maildir (LF line endings)."""
    return message.split(b"\n\n", 1)[1]


def _headers(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[0]


def test_delivers_body_byte_for_byte(postfix: PostfixInstance) -> None:
    # Dot-stuffing, trailing blanks, 8-bit text and an empty line must all survive.
    body_lines = [
        b"first line",
        b".leading dot",
        b"..two leading dots",
        b".",
        b"trailing blanks   ",
        b"",
        "8-bit: caf\u00e9 \u00fcber".encode(),
        b"last line",
    ]
    message = (
        b"From: sender@client.test\r\n"
        b"To: user@example.com\r\n"
        b"Subject: fixture check\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + b"\r\n".join(body_lines) + b"\r\n"
    )
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        refused = smtp.sendmail(
            "sender@client.test", ["user@example.com"], message, mail_options=["BODY=8BITMIME"]
        )
    assert refused == {}

    [delivered] = postfix.wait_for_delivery("user@example.com")
    assert _body(delivered) == b"\n".join(body_lines) + b"\n"
    assert b"\nSubject: fixture check\n" in _headers(delivered)
    assert postfix.delivered("alice") == []


def test_delivers_to_each_user_separately(postfix: PostfixInstance) -> None:
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        smtp.sendmail(
            "s@client.test", ["alice@example.com", "bob@example.com"], b"Subject: 1\r\n\r\nx\r\n"
        )
        smtp.sendmail("s@client.test", ["bob@example.com"], b"Subject: 2\r\n\r\ny\r\n")

    assert len(postfix.wait_for_delivery("alice")) == 1
    bob = postfix.wait_for_delivery("bob", count=2)
    # Postfix delivers separate messages in parallel: their order in the Maildir is not
    # the submission order.
    assert sorted(_body(m) for m in bob) == [b"x\n", b"y\n"]


def test_unknown_user_is_refused_at_rcpt(postfix: PostfixInstance) -> None:
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        smtp.ehlo("client.test")
        assert smtp.mail("sender@client.test")[0] == 250
        code, reply = smtp.rcpt("nosuchuser@example.com")
        assert code == 550, reply
        assert b"User unknown" in reply
        # Other domains are not relayed either, even from loopback.
        code, reply = smtp.rcpt("someone@elsewhere.test")
        assert 500 <= code < 600, reply
        assert smtp.rcpt("alice@example.com")[0] == 250
    postfix.wait_for_log("NOQUEUE: reject: RCPT")


def test_ehlo_advertises_xforward_and_xclient(postfix: PostfixInstance) -> None:
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        code, _ = smtp.ehlo("client.test")
        assert code == 250
        assert smtp.has_extn("xforward")
        assert smtp.has_extn("xclient")
        assert "addr" in smtp.esmtp_features["xforward"].lower().split()


def _received(message: bytes) -> list[bytes]:
    """The Received headers of a stored message, unfolded, topmost first."""
    unfolded = _headers(message).replace(b"\n\t", b" ").replace(b"\n ", b" ")
    return [line for line in unfolded.split(b"\n") if line.startswith(b"Received:")]


def test_xforward_addr_shows_in_the_log(postfix: PostfixInstance) -> None:
    """XFORWARD is logging-only in Postfix: `orig_client=` in the log, not in Received.

    Without a before-queue proxy filter, Postfix's own Received header keeps naming the host
    that actually connected (the gateway); the forwarded identity goes to the log and to the
    queue file. Use XCLIENT to make it appear in Received (next test).
    """
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        smtp.ehlo("gateway.test")
        code, reply = smtp.docmd(
            "XFORWARD", "ADDR=192.0.2.7 NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.test"
        )
        assert code == 250, reply
        smtp.sendmail("sender@client.test", ["user@example.com"], b"Subject: xf\r\n\r\nhi\r\n")

    [delivered] = postfix.wait_for_delivery("user")
    line = postfix.wait_for_log("orig_client=")
    assert "client=unknown[127.0.0.1], orig_client=unknown[192.0.2.7]" in line
    [received] = _received(delivered)
    assert received.startswith(b"Received: from gateway.test (unknown [127.0.0.1])")


def test_xclient_addr_shows_in_received_header(postfix: PostfixInstance) -> None:
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        smtp.ehlo("gateway.test")
        code, reply = smtp.docmd(
            "XCLIENT", "ADDR=192.0.2.8 NAME=[UNAVAILABLE] PROTO=ESMTP HELO=client.test"
        )
        # XCLIENT restarts the session: a new greeting, and the client must EHLO again.
        assert code == 220, reply
        smtp.ehlo("client.test")
        smtp.sendmail("sender@client.test", ["bob@example.com"], b"Subject: xc\r\n\r\nhi\r\n")

    [delivered] = postfix.wait_for_delivery("bob")
    [received] = _received(delivered)
    assert received.startswith(b"Received: from client.test (unknown [192.0.2.8])")
    assert "client=unknown[192.0.2.8]" in postfix.wait_for_log("client=unknown[192.0.2.8]")


def test_wait_for_delivery_times_out_with_log(postfix: PostfixInstance) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 message"):
        postfix.wait_for_delivery("bob", timeout=0.1)
    with pytest.raises(ValueError, match="no mailbox"):
        postfix.maildir("mallory@example.com")


def test_instances_do_not_collide_and_stop_cleanly(
    postfix: PostfixInstance, postfix_scratch_dir: Path
) -> None:
    # `postfix` already runs in postfix_scratch_dir; the second one gets a subdirectory.
    other = PostfixInstance(postfix_scratch_dir / "second")
    started = time.monotonic()
    other.start()
    try:
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"a start took {elapsed:.1f}s"
        port = other.port
        assert port != postfix.port
        assert other.config_dir != postfix.config_dir
        with smtplib.SMTP(*other.address, timeout=10) as smtp:
            smtp.sendmail("s@client.test", ["alice@example.com"], b"Subject: 2nd\r\n\r\nz\r\n")
        assert len(other.wait_for_delivery("alice")) == 1
        assert postfix.delivered("alice") == []
        assert other.pids(), "a running instance has processes"
    finally:
        other.stop()

    assert other.pids() == []
    assert not other.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
        pass
    # Stopping one instance leaves the other alone.
    with smtplib.SMTP(*postfix.address, timeout=10) as smtp:
        assert smtp.noop()[0] == 250


def test_start_failure_reports_the_log(postfix_scratch_dir: Path) -> None:
    broken = PostfixInstance(
        postfix_scratch_dir, extra_main_cf={"queue_minfree": "not-a-number"}, start_timeout=10
    )
    started = time.monotonic()
    with pytest.raises(PostfixStartError, match="queue_minfree") as info:
        broken.start()
    assert time.monotonic() - started < 5, "a broken setting must fail fast, not time out"
    assert "Postfix did not start" in str(info.value)
    assert "--- " + str(broken.log_path) in str(info.value)
    assert broken.pids() == []
    assert not broken.running


def test_refuses_to_override_loopback_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="relayhost"):
        PostfixInstance(tmp_path, extra_main_cf={"relayhost": "[relay.invalid]:25"})


def test_port_taken_before_postfix_binds_it_is_retried(
    postfix_scratch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        ports = iter([busy])
        real_free_port = postfix_instance._free_port
        monkeypatch.setattr(postfix_instance, "_free_port", lambda: next(ports, real_free_port()))
        with PostfixInstance(postfix_scratch_dir) as instance:
            assert instance.port != busy
            with smtplib.SMTP(*instance.address, timeout=10) as smtp:
                assert smtp.noop()[0] == 250
        assert "Address already in use" in instance.read_log()
