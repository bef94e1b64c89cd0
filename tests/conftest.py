"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from postfix_instance import PostfixInstance, find_postfix

import gateway.dns

SYSTEM_RESOLV_CONF = Path("/etc/resolv.conf")

# A machine that runs mailgate as a service has /etc/mailgate/gateway.toml: no test may read it
# by accident (gateway.config_search); tests of that step point the variable at their own file.
os.environ.setdefault("MAILGATE_SYSTEM_CONFIG", "/nonexistent/mailgate-tests/gateway.toml")


def _postfix_unavailable(reason: str) -> None:
    """Skip on a developer machine without Postfix, but fail in CI, which installs it.

    A silent skip in CI would let every end-to-end test "pass" without running.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI is set, and .ci/run is supposed to provide it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def postfix_scratch_dir() -> Iterator[Path]:
    """An empty directory that a private Postfix instance can use, removed afterwards.

    Skips (or fails in CI) when Postfix cannot run here, so tests that build their own
    `PostfixInstance` (e.g. with `extra_main_cf`) get the same treatment as `postfix` users.
    Not tmp_path: pytest's base temp dir is mode 0700, and Postfix's daemons, once they have
    dropped root, must be able to reach the Maildirs and the data directory.
    """
    if find_postfix() is None:
        _postfix_unavailable("the postfix command is not installed (apt-get install postfix)")
    if os.geteuid() != 0:
        _postfix_unavailable("a private Postfix instance can only be started as root")
    scratch = Path(tempfile.mkdtemp(prefix="mailgate-postfix-"))
    try:
        scratch.chmod(0o711)
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def postfix(postfix_scratch_dir: Path) -> Iterator[PostfixInstance]:
    """A started private Postfix on 127.0.0.1:<free port>, delivering example.com to Maildirs.

    Function-scoped: a start takes well under a second, and every test gets empty Maildirs and
    a fresh log, so delivery counts and log searches never see another test's mail.
    """
    with PostfixInstance(postfix_scratch_dir) as instance:
        yield instance


@pytest.fixture(autouse=True)
def _never_the_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use loopback DNS only. A gateway built from settings without [dns] nameservers
    reads /etc/resolv.conf (the product's default); in a test process it gets 127.0.0.1
    instead, where no server listens: a test that forgot its loopback DNS server fails (its
    lookups time out) rather than asking the machine's real resolver."""
    real = gateway.dns.system_nameservers

    def loopback_only(resolv_conf: Path) -> tuple[tuple[str, ...], str]:
        if Path(resolv_conf) == SYSTEM_RESOLV_CONF:
            return ("127.0.0.1",), "tests: never the system's resolver"
        return real(resolv_conf)

    monkeypatch.setattr(gateway.dns, "system_nameservers", loopback_only)


# The gateway harness (recording downstream, running gateway) lives in tests/harness.py.
pytest_plugins = ("harness", "dns_fixtures", "tls_fixtures", "quarantine_fixtures")
