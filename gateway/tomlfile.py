"""Read a TOML file so that every later validation error can name the file, the key and the line.

tomllib gives values but no positions; `TomlFile.line_of` finds the line where a dotted key is
written by a light scan of the text (table headers and `key =` lines). It is only used to point a
human at the right place, so a best effort is enough.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")


class ConfigError(Exception):
    """A configuration or policy file is wrong; the message names file, key and line."""

    def __init__(self, path: Path | str, key: str | None, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.line = line
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        what = f" key '{self.key}':" if self.key else ""
        return f"{where}:{what} {self.problem}"


class ConfigErrors(Exception):
    """Several problems found in one pass, so the admin can fix them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _split_key(raw: str) -> list[str]:
    parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', raw)
    return [p.strip().strip("\"'") for p in parts if p.strip()]


@dataclass(frozen=True)
class TomlFile:
    """A parsed TOML document with the positions of its keys."""

    path: Path
    data: Mapping[str, Any]
    lines: Mapping[str, int]

    @classmethod
    def load(cls, path: Path) -> TomlFile:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(path, None, None, "file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(path, None, None, f"cannot read: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # Python 3.11-3.13's TOMLDecodeError has no `lineno` (added in 3.14): the position is
            # only in the text, "... (at line 3, column 7)". Without this the error named no line.
            line = getattr(exc, "lineno", None)
            if line is None:
                found = _AT_LINE.search(str(exc))
                line = int(found.group(1)) if found else None
            message = getattr(exc, "msg", str(exc))
            raise ConfigError(
                path, _key_at(text, line), line, f"not valid TOML: {message}"
            ) from None
        return cls(path, data, _key_lines(text))

    def line_of(self, dotted: str) -> int | None:
        """The line that defines `dotted` or, failing that, its closest enclosing table."""
        key = dotted
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return None

    def error(self, dotted: str, problem: str) -> ConfigError:
        return ConfigError(self.path, dotted, self.line_of(dotted), problem)


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> line; the i-th [[name]] table and its keys are also `name[i]...`."""
    lines: dict[str, int] = {}
    table: list[str] = []
    entries: dict[str, int] = {}  # [[name]] tables seen so far
    for number, line in enumerate(text.splitlines(), start=1):
        table_match = _TABLE.match(line)
        if table_match:
            table = _split_key(table_match.group(1))
            lines.setdefault(".".join(table), number)
            if line.lstrip().startswith("[["):
                name = ".".join(table)
                index = entries.get(name, 0)
                entries[name] = index + 1
                table = [*table[:-1], f"{table[-1]}[{index}]"]
                lines[".".join(table)] = number
            continue
        key_match = _KEY.match(line)
        if key_match:
            dotted = ".".join([*table, *_split_key(key_match.group(1))])
            lines.setdefault(dotted, number)
    return lines


def _key_at(text: str, line: int | None) -> str | None:
    """The dotted key (or table) written on `line`, to name it in a syntax error; best effort."""
    if line is None:
        return None
    table: list[str] = []
    for number, content in enumerate(text.splitlines()[:line], start=1):
        table_match = _TABLE.match(content)
        if table_match:
            table = _split_key(table_match.group(1))
            if number == line:
                return ".".join(table) or None
            continue
        if number == line:
            key_match = _KEY.match(content)
            return ".".join([*table, *_split_key(key_match.group(1))]) if key_match else None
    return None
