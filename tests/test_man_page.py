"""config/man/mailgate.8 against the CLI it documents, so the page cannot drift from the parser.

Every command path `build_parser` knows (argparse's subparsers walked recursively) has an entry
in COMMANDS, a `.TP` whose tag starts with the path in bold; every long option of that command
is bold, on its own, in its entry or the entry of a command above it (`quarantine` documents the
filters its subcommands share); an option bold in an entry belongs to that command, one above or
one below it; the global options are in OPTIONS. And the page renders without a warning in
groff (the Debian package groff-base, which .ci/run installs) and in mandoc's linter if present.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import build_parser

PAGE = Path(__file__).resolve().parent.parent / "config" / "man" / "mailgate.8"
CommandPath = tuple[str, ...]

# -- reading roff --------------------------------------------------------------------------------

# The macros that alternate fonts: which of their arguments (even or odd) are bold.
_ALTERNATING = {"BR": 0, "BI": 0, "RB": 1, "IB": 1}
_ARGUMENT = re.compile(r'"((?:[^"]|"")*)"|(\S+)')
_INLINE_BOLD = re.compile(r"\\fB(.*?)(?=\\f[RPI]|$)")
_ESCAPES = {r"\-": "-", r"\(dq": '"', r"\e": "\\", r"\&": "", r"\(em": "-"}


def _plain(text: str) -> str:
    for escape, char in _ESCAPES.items():
        text = text.replace(escape, char)
    return re.sub(r"\\f[BIRP]", "", text).strip()


def _arguments(text: str) -> list[str]:
    return [m[1].replace('""', '"') if m[1] is not None else m[2] for m in _ARGUMENT.finditer(text)]


def bold_spans(line: str) -> list[str]:
    """The bold text of one source line, span by span, unescaped."""
    spans = [_plain(m[1]) for m in _INLINE_BOLD.finditer(line)]
    macro = re.match(r"\.(B|BR|BI|RB|IB)(?:\s+(.*))?$", line)
    if macro is not None:
        name, rest = macro[1], macro[2] or ""
        if name == "B":
            spans.insert(0, _plain(" ".join(_arguments(rest))))
        else:
            args = _arguments(rest)
            spans[:0] = [_plain(a) for a in args[_ALTERNATING[name] :: 2]]
    return [s for s in spans if s]


def section(name: str) -> list[str]:
    """The source lines of one .SH section."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(f".SH {name}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(".SH ")), len(lines))
    return lines[start:end]


def command_entries(paths: set[CommandPath]) -> dict[CommandPath, list[str]]:
    """COMMANDS: each command's bold spans, from its `.TP` tag to the next command's tag."""
    entries: dict[CommandPath, list[str]] = {}
    current: list[str] | None = None
    previous = ""
    for line in section("COMMANDS"):
        spans = bold_spans(line)
        if previous == ".TP" and spans:
            path = tuple(spans[0].removeprefix("mailgate ").split())
            if path in paths:
                assert path not in entries, f"two entries for {' '.join(path)}"
                current = entries[path] = []
        if current is not None:
            current.extend(spans)
        previous = line.strip()
    return entries


def _is_option(span: str) -> bool:
    return re.fullmatch(r"--[a-z0-9][a-z0-9-]*", span) is not None


# -- reading the parser --------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: CommandPath = ()
) -> Iterator[tuple[CommandPath, argparse.ArgumentParser]]:
    """Every command path and its parser, subparsers walked recursively."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def long_options(parser: argparse.ArgumentParser, with_help: bool = False) -> set[str]:
    """The documented long options (not --help, unless asked; not a hidden one like --worker)."""
    return {
        option
        for action in parser._actions
        if action.help is not argparse.SUPPRESS
        and (with_help or not isinstance(action, argparse._HelpAction))
        for option in action.option_strings
        if option.startswith("--")
    }


PARSER = build_parser()
COMMANDS = dict(commands(PARSER))
SUBCOMMANDS = {path for path in COMMANDS if path}


def _related(path: CommandPath, other: CommandPath) -> bool:
    """`other` is `path`, above it or below it."""
    shorter = min(len(path), len(other))
    return path[:shorter] == other[:shorter]


# -- tests ---------------------------------------------------------------------------------------


def test_the_walk_finds_every_command_of_the_parser() -> None:
    """The walk itself: the commands named in README's CLI table, and the nested ones."""
    assert {("serve",), ("check",), ("scan",), ("init",), ("tls", "selfsigned")} <= SUBCOMMANDS
    assert {("quarantine", "release"), ("model", "train"), ("rules", "fit")} <= SUBCOMMANDS
    assert "--worker" not in long_options(COMMANDS[("serve",)])  # hidden: internal to workers


@pytest.mark.parametrize("path", sorted(SUBCOMMANDS), ids=" ".join)
def test_every_command_and_its_long_options_are_in_the_page(path: CommandPath) -> None:
    entries = command_entries(SUBCOMMANDS)
    assert path in entries, f"COMMANDS has no .TP entry for {' '.join(path)} in bold"
    documented = {
        span
        for above in (path[:n] for n in range(1, len(path) + 1))
        for span in entries.get(above, [])
        if _is_option(span)
    }
    missing = long_options(COMMANDS[path]) - documented
    assert not missing, f"{' '.join(path)}: options not in its entry: {sorted(missing)}"


def test_every_option_the_page_names_in_an_entry_exists() -> None:
    """No option the parser does not have (renamed or removed), none under the wrong command."""
    known = long_options(PARSER, with_help=True)
    for path, spans in command_entries(SUBCOMMANDS).items():
        theirs = set(known)
        for other, parser in COMMANDS.items():
            if other and _related(path, other):
                theirs |= long_options(parser)
        strays = {s for s in spans if _is_option(s)} - theirs
        assert not strays, f"{' '.join(path)}: the page names options it lacks: {sorted(strays)}"


def test_the_global_options_are_in_options() -> None:
    spans = {span for line in section("OPTIONS") for span in bold_spans(line)}
    missing = long_options(PARSER, with_help=True) - spans
    assert not missing, f"OPTIONS lacks {sorted(missing)}"


def test_the_title_names_this_version() -> None:
    title = next(
        line for line in PAGE.read_text(encoding="utf-8").splitlines() if line[:4] == ".TH "
    )
    assert _arguments(title[4:])[:2] == ["MAILGATE", "8"]
    assert f"mailgate {__version__}" in _arguments(title[4:]), "bump the .TH line with the version"


RENDERERS = {
    "groff": ["groff", "-man", "-Tutf8", "-ww", "-z"],
    "mandoc": ["mandoc", "-Tlint"],
}


def test_the_page_renders_without_warnings() -> None:
    found = [name for name in RENDERERS if shutil.which(name)]
    if not found:
        pytest.skip("neither groff nor mandoc is installed (Debian: groff-base, as .ci/run does)")
    for name in found:
        done = subprocess.run(
            [*RENDERERS[name], str(PAGE)], capture_output=True, text=True, timeout=120, check=False
        )
        said = (done.stdout + done.stderr).strip()
        assert done.returncode == 0 and not said, f"{name} on {PAGE.name}: {said}"
