"""Which gateway.toml a command reads: one search, the same for `serve` and every other command.

In order: `--config`, `$MAILGATE_CONFIG`, /etc/mailgate/gateway.toml, and only for `serve --dev`
or `--demo` the config/gateway.toml of a source checkout in the current directory; else none (the
embedded defaults). A checkout's file never serves real mail by accident, and `cd / && mailgate
quarantine list` reads what the service reads. What was looked for is kept, so that `check`, the
start-up log and a command reading state with no file can say it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.shipped import is_checkout

CONFIG_ENV = "MAILGATE_CONFIG"
# Where the system's file is; the variable moves it (tests, packagers with another layout).
SYSTEM_CONFIG = Path("/etc/mailgate/gateway.toml")
SYSTEM_CONFIG_ENV = "MAILGATE_SYSTEM_CONFIG"
CHECKOUT_CONFIG = Path("config") / "gateway.toml"


def system_config() -> Path:
    moved = os.environ.get(SYSTEM_CONFIG_ENV)
    return Path(moved) if moved else SYSTEM_CONFIG


@dataclass(frozen=True)
class ConfigChoice:
    """The file found (None: the embedded defaults), how, and everything looked for."""

    path: Path | None
    found_by: str
    looked: tuple[str, ...]

    def describe(self) -> str:
        """For `check` and the start-up log: the file and why it, or what was missing."""
        if self.path is not None:
            return f"{self.path.resolve()} ({self.found_by})"
        return f"embedded defaults (no config file: looked for {', '.join(self.looked)})"


def find_config(arg: str | None, dev: bool = False, cwd: Path | None = None) -> ConfigChoice:
    """The configuration a command uses: `arg` is --config, `dev` says `serve --dev/--demo`."""
    if arg:
        return ConfigChoice(Path(arg), "--config", ())
    env = os.environ.get(CONFIG_ENV)
    if env:
        return ConfigChoice(Path(env), f"${CONFIG_ENV}", ())
    looked = [f"${CONFIG_ENV} (unset)"]
    system = system_config()
    if system.is_file():
        return ConfigChoice(system, "the system configuration", tuple(looked))
    looked.append(str(system))
    folder = cwd or Path.cwd()
    if dev and is_checkout(folder):
        return ConfigChoice(folder / CHECKOUT_CONFIG, "the checkout's, for --dev", tuple(looked))
    looked.append(
        f"{CHECKOUT_CONFIG} of a source checkout here"
        + ("" if dev else " (read only by serve --dev and --demo)")
    )
    return ConfigChoice(None, "embedded defaults", tuple(looked))
