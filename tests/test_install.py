"""The wheel `pip install .` builds: it carries the shipped rules/, models/ and config/gateway.toml,
and a copy unpacked outside the checkout serves with them (no network: the wheel is built
without build isolation and the unpacked copy uses this interpreter's dependencies)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from harness import REPO

SOURCES = ("pyproject.toml", "README.md", "gateway", "rules", "models", "config")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the source tree (the build writes build/ and egg-info beside it)."""
    pytest.importorskip("wheel", reason="pip install wheel (in the test extras)")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "tls")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *offline, "-w", str(root / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (root / "dist").glob("mailgate-*.whl")
    return built


def test_the_wheel_carries_rules_models_config_and_every_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, packaged in (("rules", "shipped_rules"), ("models", "shipped_models")):
        for path in (REPO / folder).rglob("*"):
            if path.is_file():
                inside = f"gateway/{packaged}/{path.relative_to(REPO / folder).as_posix()}"
                assert inside in names, f"{path} is not in the wheel"
    assert "gateway/shipped_config/gateway.toml" in names
    assert not any("/tls/" in name or name.endswith(".pem") for name in names)  # never a key
    # pyproject.toml lists the packages: a new one left out of the list would be missing here
    for init in (REPO / "gateway").rglob("__init__.py"):
        assert f"{init.relative_to(REPO).as_posix()}" in names, f"{init.parent} not packaged"


def test_an_installed_copy_outside_the_checkout_finds_its_rules_and_model(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)  # what pip does with a pure-Python wheel
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MAILGATE_CONFIG"}
    env["PYTHONPATH"] = str(site)  # this copy, not the checkout's gateway/
    env["XDG_STATE_HOME"] = str(tmp_path / "state")

    def mailgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    check = mailgate("check", "--no-dns-probe")
    assert check.returncode == 0, check.stderr
    assert "config OK: embedded defaults" in check.stdout
    assert f"rules OK: {site / 'gateway' / 'shipped_rules'} (policy " in check.stdout
    version = mailgate("--version")
    assert version.returncode == 0, version.stderr
    lines = version.stdout.splitlines()
    assert lines[0].startswith("mailgate ")
    assert lines[2].endswith(f"({site / 'gateway' / 'shipped_models' / 'spam.npz'})")
