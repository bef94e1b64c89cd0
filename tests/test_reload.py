"""SIGHUP over a real `mailgate serve`: gateway.toml is read again, not only rules/.

A new [plugins] order, [dns] nameservers, [delivery] port or [limits] value applies to the next
transaction (a transaction in flight ends on the set it began with); a broken file is refused as
a whole, named with its line, and the old configuration keeps serving; what needs a restart
(the listening port) is logged as such and the old value stays. Below them, the unit tests of
the diff that those log lines are made from.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import running_dns_server
from harness import LOOPBACK, REPO, RecordingSink, free_port, make_settings, message
from test_signals import (
    Served,
    _wait_for_banner,
    set_key,
    spawn_serve,
    write_served_config,
)

from gateway import metrics
from gateway.app import Gateway, Runtime
from gateway.config import DnsSettings, HostPort, MetricsSettings, Settings, load_settings
from gateway.delivery import MockDelivery
from gateway.reload import Change, setting_changes, shown, summary, with_running_values
from gateway.session import Session

SHIPPED_ORDER = re.search(
    r"^order = (\[.*\])$",
    (REPO / "config" / "gateway.toml").read_text(encoding="utf-8"),
    re.MULTILINE,
)
assert SHIPPED_ORDER is not None
WITHOUT_CLASSIFIER = SHIPPED_ORDER.group(1).replace(', "classifier"', "")


@pytest.fixture
def recording_sink() -> Iterator[RecordingSink]:
    sink = RecordingSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def start(tmp_path: Path, config: Path, port: int, dev: bool = True) -> Served:
    # dev=False: the [dns] of the file, not the demo DNS server of --dev
    proc, log = spawn_serve(tmp_path, config, dev=dev)
    try:
        _wait_for_banner(proc, port, log)
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
    return Served(proc, port, tmp_path / "rules", tmp_path / "maildir", log)


@pytest.fixture
def stop_after() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait(timeout=10)


def edit(config: Path, table: str, key: str, value: str) -> str:
    text = set_key(config.read_text(encoding="utf-8"), table, key, value)
    config.write_text(text, encoding="utf-8")
    return text


def symbols(delivered: bytes) -> str:
    found = re.search(rb"\r\nX-Mailgate-Symbols:(.*?)\r\n(?![ \t])", delivered, re.DOTALL)
    assert found, delivered[:2000]
    return found.group(1).decode()


def test_new_order_and_delivery_reach_the_next_transaction_not_the_one_in_flight(
    tmp_path: Path, recording_sink: RecordingSink, stop_after: list[Served]
) -> None:
    config, port = write_served_config(tmp_path)
    served = start(tmp_path, config, port)
    stop_after.append(served)
    client = served.smtp()
    try:
        # A transaction begun under the first configuration...
        assert client.mail("alice@example.net")[0] == 250
        assert client.rcpt("bob@example.com")[0] == 250
        # ...meets a reload: no classifier, and a delivery server elsewhere.
        edit(config, "plugins", "order", WITHOUT_CLASSIFIER)
        edit(config, "delivery", "port", str(recording_sink.port))
        served.proc.send_signal(signal.SIGHUP)
        text = served.wait_log(f"reloaded {config}: [delivery] port, [plugins] order; policy")
        assert "restart needed" not in text
        code, reply = client.data(message())
        assert code == 250, reply
        # It ends as it began: the classifier ran, the old delivery server (the dev sink) took it.
        [first] = served.wait_delivered(1)
        assert "ML_BAND" in symbols(first)
        assert recording_sink.delivered == []
        # The next transaction on the same connection runs on the new set alone.
        assert client.sendmail("carol@example.net", ["bob@example.com"], message()) == {}
        client.quit()
    finally:
        client.close()
    [second] = recording_sink.wait_for(1)
    assert second.mail_from == "carol@example.net"
    assert "ML_BAND" not in symbols(second.content)
    assert "SPF_" in symbols(second.content)  # the rest of the chain still runs
    # and a new connection too
    with served.smtp() as fresh:
        assert fresh.sendmail("dave@example.net", ["bob@example.com"], message()) == {}
    assert len(recording_sink.wait_for(2)) == 2
    assert len(served.delivered()) == 1


def test_new_nameservers_answer_the_next_message(
    tmp_path: Path, recording_sink: RecordingSink, stop_after: list[Served]
) -> None:
    passing = {"good.example": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}
    with running_dns_server(passing) as first, running_dns_server() as second:
        config, port = write_served_config(
            tmp_path,
            [("delivery", "port", str(recording_sink.port))],
            extra=f'\n[dns]\nnameservers = ["{LOOPBACK}"]\nport = {first.port}\ntimeout = 2\n',
        )
        served = start(tmp_path, config, port, dev=False)
        stop_after.append(served)
        with served.smtp() as client:
            assert client.sendmail("alice@good.example", ["bob@example.com"], message()) == {}
        [before] = recording_sink.wait_for(1)
        assert "SPF_PASS" in symbols(before.content)

        edit(config, "dns", "port", str(second.port))
        served.proc.send_signal(signal.SIGHUP)
        served.wait_log(f"reloaded {config}: [dns] port; policy")
        asked_first = len(first.queries)
        with served.smtp() as client:
            assert client.sendmail("alice@good.example", ["bob@example.com"], message()) == {}
        after = recording_sink.wait_for(2)[1]
        # The second server knows no SPF record: the answer is its own, not a cached one.
        assert "SPF_NONE" in symbols(after.content)
        assert any(q.name.rstrip(".") == "good.example" for q in second.queries)
        assert len(first.queries) == asked_first


def test_broken_gateway_toml_is_refused_whole_and_the_old_one_serves(
    tmp_path: Path, stop_after: list[Served]
) -> None:
    config, port = write_served_config(tmp_path)
    served = start(tmp_path, config, port)
    stop_after.append(served)
    policy = re.findall(r"; policy ([0-9a-f]{12})", served.wait_log("listening on"))
    shipped = config.read_text(encoding="utf-8")

    def refused(count: int) -> str:
        served.proc.send_signal(signal.SIGHUP)
        return served.wait_log("refused, keeping the running configuration", count)

    def line_of(text: str, needle: str) -> int:
        return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)

    # TOML syntax: named with its line and key; the new order written above it is not applied.
    text = edit(config, "plugins", "order", WITHOUT_CLASSIFIER)
    text = edit(config, "limits", "max_recipients", "100 100")
    log = refused(1)
    where = f"{config}:{line_of(text, 'max_recipients = 100 100')}: key 'limits.max_recipients'"
    assert where in log and "not valid TOML" in log
    # A value that validates nowhere.
    text = edit(config, "limits", "max_recipients", '"many"')
    log = refused(2)
    assert f"{config}:{line_of(text, 'max_recipients = ')}: key 'limits.max_recipients'" in log
    # A model file that is not there: refused too, naming it.
    config.write_text(shipped + '\n[plugins.classifier]\nmodel = "missing.npz"\n', "utf-8")
    log = refused(3)
    assert "missing" in log.rsplit("refused, keeping", 1)[1]
    assert "Traceback" not in served.log_text()
    assert "reloaded " not in served.log_text()
    # The running configuration is whole: the classifier still runs, mail still flows.
    with served.smtp() as client:
        assert client.sendmail("alice@example.net", ["bob@example.com"], message()) == {}
    [delivered] = served.wait_delivered(1)
    assert "ML_BAND" in symbols(delivered)
    assert policy and f"policy {policy[-1]}" in log

    # A good edit after the refusals: a limit read per transaction, at once.
    config.write_text(set_key(shipped, "limits", "max_recipients", "1"), encoding="utf-8")
    served.proc.send_signal(signal.SIGHUP)
    served.wait_log(f"reloaded {config}: [limits] max_recipients; policy")
    with served.smtp() as client:
        assert client.mail("alice@example.net")[0] == 250
        assert client.rcpt("bob@example.com")[0] == 250
        code, reply = client.rcpt("carol@example.com")
        assert code == 452, reply


def test_a_new_listen_port_needs_a_restart_and_the_old_one_keeps_serving(
    tmp_path: Path, stop_after: list[Served]
) -> None:
    config, port = write_served_config(tmp_path)
    served = start(tmp_path, config, port)
    stop_after.append(served)
    new_port = free_port()
    edit(config, "listen", "port", str(new_port))
    edit(config, "relay", "domains", '["example.com", "example.org"]')
    served.proc.send_signal(signal.SIGHUP)
    text = served.wait_log(f"reloaded {config}: [relay] domains; policy")
    warning = (
        f"WARNING mailgate: restart needed: [listen] port changed {port} -> {new_port}; "
        "running with the old value"
    )
    assert warning in text
    with served.smtp() as client:  # still the old port, with the new domains
        assert client.sendmail("alice@example.net", ["bob@example.org"], message()) == {}
    assert len(served.wait_delivered(1)) == 1
    with pytest.raises(OSError), socket.create_connection((LOOPBACK, new_port), timeout=2):
        pass
    # Said again at the next reload: the file still differs from what runs.
    served.proc.send_signal(signal.SIGHUP)
    served.wait_log(warning, 2)


# -- the diff and its lines -----------------------------------------------------------------------


def test_changes_name_each_table_and_key_and_which_need_a_restart(tmp_path: Path) -> None:
    old = make_settings(tmp_path, 2526)
    new = dataclasses.replace(
        old,
        listen=dataclasses.replace(old.listen, port=2600, host="0.0.0.0", hostname="mx.example"),
        dns=DnsSettings(nameservers=("192.0.2.53",)),
        plugins=dataclasses.replace(
            old.plugins, order=("lists",), tables={"content": {"body_chars": 10}}
        ),
        metrics=MetricsSettings(address=HostPort("127.0.0.1", 9325)),
        quarantine_dir=tmp_path / "elsewhere",
        logging=dataclasses.replace(old.logging, level="debug"),
    )
    changes = setting_changes(old, new)
    assert [(c.name, c.restart) for c in changes] == [
        ("[listen] address", True),
        ("[listen] port", True),
        ("[listen] hostname", False),
        ("[plugins] order", False),
        ("[plugins.content] *", False),
        ("[paths] quarantine", True),
        ("[dns] nameservers", False),
        ("[metrics] address", True),
        ("[logging] level", False),
    ]
    assert changes[1].restart_line() == (
        f"restart needed: [listen] port changed {old.listen.port} -> 2600; "
        "running with the old value"
    )
    assert (
        changes[-2]
        .restart_line()
        .startswith("restart needed: [metrics] address changed (unset) -> 127.0.0.1:9325")
    )
    assert setting_changes(old, old) == []


def test_what_needs_a_restart_keeps_its_running_value(tmp_path: Path) -> None:
    old = make_settings(tmp_path, 2526)
    new = dataclasses.replace(
        old,
        listen=dataclasses.replace(old.listen, port=2600, workers=4, hostname="mx.example"),
        quarantine_dir=tmp_path / "elsewhere",
    )
    kept = with_running_values(new, old)
    assert kept.listen.port == old.listen.port and kept.listen.workers == old.listen.workers
    assert kept.quarantine_dir == old.quarantine_dir
    assert kept.listen.hostname == "mx.example"  # what can change, does


def test_summary_lists_what_changed_once_and_the_policy() -> None:
    changes = [
        Change("plugins", "order", (), ()),
        Change("plugins.content", "*", None, {}),
        Change("plugins.content", "*", None, {}),
        Change("listen", "port", 1, 2, restart=True),
    ]
    assert summary("/etc/mailgate/gateway.toml", changes, "abc", "abc") == (
        "reloaded /etc/mailgate/gateway.toml: [plugins] order, [plugins.content] *; policy abc"
    )
    assert summary("x", [], "abc", "def") == "reloaded x: no setting changed; policy def (was abc)"
    assert shown(("a", "b")) == '["a", "b"]' and shown(True) == "true"


def test_the_shipped_file_reloads_onto_itself_unchanged() -> None:
    settings = load_settings(REPO / "config" / "gateway.toml")
    assert setting_changes(settings, load_settings(REPO / "config" / "gateway.toml")) == []


def test_reloads_are_counted_with_both_labels_from_the_start() -> None:
    before = metrics.REGISTRY.get_sample_value("mailgate_reloads_total", {"result": "refused"})
    assert before is not None
    assert (
        metrics.REGISTRY.get_sample_value("mailgate_reloads_total", {"result": "done"}) is not None
    )
    metrics.count_reload("refused")
    after = metrics.REGISTRY.get_sample_value("mailgate_reloads_total", {"result": "refused"})
    assert after == before + 1


# -- generations ----------------------------------------------------------------------------------


async def test_a_replaced_resolver_is_closed_once_its_last_connection_lets_go(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, 1)
    gateway = Gateway.create(settings)
    closed: list[object] = []
    try:
        held = gateway.acquire()  # a connection in a transaction on the first generation
        first = held.resolver
        assert first is not None

        async def record_close() -> None:
            closed.append(first)

        first.aclose = record_close  # type: ignore[method-assign]
        # Same [dns]: the new generation shares the resolver (and its cache); nothing closes.
        same = Runtime.build(settings, gateway.registry, previous=held)
        assert same.resolver is first
        moved = dataclasses.replace(settings, dns=DnsSettings(nameservers=("192.0.2.53",)))
        other = Runtime.build(moved, gateway.registry, previous=same)
        assert other.resolver is not first
        gateway.adopt(same)
        gateway.adopt(other)
        for _ in range(3):
            await asyncio.sleep(0)
        assert closed == []  # still in use by the connection
        gateway.release(held)
        for _ in range(3):
            await asyncio.sleep(0)
        assert closed == [first]
        assert gateway.runtime is other
    finally:
        await gateway.aclose()


async def test_a_session_keeps_its_generation_to_the_end_of_a_transaction(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, 1)
    gateway = Gateway.create(settings)
    first, made = MockDelivery(), []

    def new_delivery(settings: Settings) -> MockDelivery:
        made.append(MockDelivery())
        return made[-1]

    session = Session(gateway, first, new_delivery)
    try:
        assert await session.on_connect(("127.0.0.1", 4000)) is None
        assert await session.on_helo("client.example.net", esmtp=True) is None
        assert (await session.on_mail("a@example.net", [])).is_positive
        assert (await session.on_rcpt("b@example.com", [])).is_positive
        running = session.runtime
        elsewhere = dataclasses.replace(
            settings, delivery=dataclasses.replace(settings.delivery, port=2999)
        )
        gateway.adopt(Runtime.build(elsewhere, gateway.registry, previous=running))
        assert (await session.on_data(message())).is_positive
        assert session.runtime is running and first.delivered and made == []
        # The next transaction moves: a new delivery transport, the old one said goodbye.
        assert (await session.on_mail("a@example.net", [])).is_positive
        assert session.runtime is gateway.runtime and running.users == 0
        [second] = made
        assert session.delivery is second and second.commands == ["MAIL a@example.net"]
        await asyncio.sleep(0)
        assert first.commands[-1] == "QUIT"
    finally:
        session.on_disconnect()
        await gateway.aclose()


def test_log_handlers_need_a_restart_but_the_level_does_not(tmp_path: Path) -> None:
    old = make_settings(tmp_path, 2526)
    new = dataclasses.replace(
        old,
        logging=dataclasses.replace(old.logging, level="debug", format="json"),
    )
    changes = setting_changes(old, new)
    assert [(c.name, c.restart) for c in changes] == [
        ("[logging] level", False),
        ("[logging] format", True),
    ]
