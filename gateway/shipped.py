"""Where this copy of mailgate keeps what it ships: the default rules/, the model, the config.

An installed wheel (pip, pipx) carries the repository's rules/, models/ and config/ inside the
package, as gateway/shipped_rules/ and so on (pyproject.toml maps them): the embedded defaults and
`mailgate init` must find them wherever the command runs. Run from a source checkout (an
editable install, PYTHONPATH), the checkout's own folders are the shipped ones.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SHIPPED = ("rules", "models", "config")


def shipped(name: str) -> Path:
    """The shipped folder `name` (one of SHIPPED), as a real path on disk."""
    if name not in SHIPPED:
        raise ValueError(f"nothing shipped as {name!r}")
    installed = files("gateway").joinpath(f"shipped_{name}")
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / name  # a source checkout


def is_checkout(folder: Path) -> bool:
    """Whether `folder` is a mailgate source checkout, whose config/, rules/ and models/ a
    command run there uses (see gateway.config_search)."""
    return (
        (folder / "pyproject.toml").is_file()
        and (folder / "gateway").is_dir()
        and (folder / "rules").is_dir()
        and (folder / "config" / "gateway.toml").is_file()
    )
