"""One declarative validation layer for config/ and rules/: pydantic, file:line errors.

A table of a TOML file is checked against a type: a `Table` (a pydantic model, for the tables a
plugin declares) or a frozen dataclass whose fields are annotated with the types below (the
settings and policy classes themselves, so each setting, its default and its rule are written
once). Every problem pydantic reports becomes a `ConfigError` naming the file, the dotted key and
the line (`TomlFile.line_of`), in words a TOML writer knows ("true or false", "a list"), whatever
the table is: a core section, a plugin's `[plugins.NAME]` table, or a rules file.

Dataclass tables are validated in pydantic's lax mode (strict mode accepts no table for a
dataclass, and no TOML array for a tuple); strictness is put back on every scalar by the types
here (`Flag`, `Text`, `Count`, `Seconds`...): no "5" for 5, no 1.5 for 1, no true for 1. Declare
fields with them, never with a bare `int`, `float`, `bool` or `str`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import typing
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic.fields import FieldInfo

from gateway.domains import normalized
from gateway.tomlfile import ConfigError, TomlFile

M = TypeVar("M")
T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Table(BaseModel):
    """Base of a table model: frozen, strict (no "5" for 5), unknown keys are errors.

    Strict mode takes a TOML array as `list[...]` only: declare sequences as lists (or convert
    with a before-validator) and numbers as `float` (an int is accepted for a float).
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


# The pydantic configuration of every dataclass table (`__pydantic_config__`): unknown keys
# are errors.
TABLE_CONFIG = ConfigDict(extra="forbid")


class KeyProblem(ValueError):
    """Raised by a check of a whole table to put the blame on one of its keys (`key`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


# -- field types ---------------------------------------------------------------------------------

Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), Field(min_length=1)]
Count = Annotated[int, Strict(), Field(gt=0)]
CountOrZero = Annotated[int, Strict(), Field(ge=0)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
# `nan <= 0` is false, and asyncio.wait_for(..., nan) never times out: refuse nan and inf.
Seconds = Annotated[float, Strict(), Field(gt=0), AllowInfNan(False)]
# TOML has nan and inf; a nan threshold or score compares false with everything, so every
# message would relay whatever its score (and inf - inf is nan).
FiniteNumber = Annotated[float, Strict(), AllowInfNan(False)]
# A TOML array; its items keep their own (strict) type.
Array = Annotated[tuple[T, ...], Strict(False)]
WordSet = Annotated[frozenset[T], Strict(False)]


# A symbol names one observation everywhere: plugins, scores, forced actions, admin rules.
SYMBOL_SYNTAX = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")


def _symbol(value: Any) -> str:
    if not isinstance(value, str) or not SYMBOL_SYNTAX.match(value):
        raise ValueError("a symbol is UPPER_CASE letters, digits and _")
    return value


def _network(value: Any) -> Network:
    if not isinstance(value, str):
        raise ValueError(f"must be a list of IP addresses or networks (got {value!r})")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or network") from None


def _ip_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a list of IP addresses (got {value!r})")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _domain(value: Any) -> str:
    """A domain, or ".domain"; lower case, no final dot. What a leading dot means is the
    matcher's business, not the loader's."""
    if not isinstance(value, str):
        raise ValueError(f"must be a list of domain names (got {value!r})")
    entry = normalized(value)
    bare = entry.removeprefix(".")
    if not bare or "@" in bare or any(c.isspace() for c in bare):
        raise ValueError(f"{value!r} is not a domain name (or .domain)")
    return entry


_LDH = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
)
# SPF include targets are DNS names, not host names: "_spf.shared.example" is the usual form.
_DNS_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)+"
)


def _named(pattern: re.Pattern[str]) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a list of domain names (got {value!r})")
        entry = value.strip().lower().rstrip(".")
        if not pattern.fullmatch(entry.removeprefix(".")):
            raise ValueError(
                f"{value!r} is not a domain name (or .domain for every domain below it)"
            )
        return entry

    return check


def _setting_path(value: Any, info: ValidationInfo) -> Path:
    """A path written in a file means a path relative to that file's folder."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file or directory path (a string)")
    base = (info.context or {}).get("base")
    return (Path(base) / value).resolve() if base is not None else Path(value)


Symbol = Annotated[str, PlainValidator(_symbol)]
NetworkEntry = Annotated[Network, PlainValidator(_network)]
IpAddress = Annotated[str, PlainValidator(_ip_address)]
DomainName = Annotated[str, PlainValidator(_domain)]
HostName = Annotated[str, PlainValidator(_named(_LDH))]  # letters, digits, hyphens
DnsName = Annotated[str, PlainValidator(_named(_DNS_NAME))]  # and underscores (_spf.example)
SettingPath = Annotated[Path, PlainValidator(_setting_path)]


# -- validation ----------------------------------------------------------------------------------


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    # Building a validator costs milliseconds: once per type and process, never per load.
    return TypeAdapter(kind)


def _unwrap(kind: Any) -> Any:
    while typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    return kind


def _alias(annotation: Any, name: str) -> str:
    if typing.get_origin(annotation) is Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, FieldInfo) and meta.alias:
                return meta.alias
    return name


@functools.cache
def _keys_of(kind: Any) -> dict[str, Any]:
    """The keys a table of type `kind` may hold, each with its type; {} if not a table."""
    kind = _unwrap(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return {info.alias or name: info.annotation for name, info in kind.model_fields.items()}
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind, include_extras=True)
        return {
            _alias(hints[f.name], f.name): hints[f.name] for f in dataclasses.fields(kind) if f.init
        }
    return {}


def _inner(kind: Any, step: int | str) -> Any:
    """The type found one step (a key or an index) inside a value of type `kind`."""
    kind = _unwrap(kind)
    keys = _keys_of(kind)
    if keys:
        return keys.get(str(step))
    args = [a for a in typing.get_args(kind) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(kind) in (dict, Mapping, typing.get_origin(Mapping[str, int])):
        return args[1] if len(args) == 2 else None
    if len(args) == 1:  # tuple[X, ...], list[X], frozenset[X], X | None
        return args[0]
    tables = [a for a in args if _keys_of(a)]  # a union: the table member, if any
    return tables[0] if tables else None


def _where(prefix: str, loc: tuple[int | str, ...], data: Any) -> str:
    """The dotted key of pydantic's `loc` in `data`: an item of a plain array is blamed on the
    array (its line is the array's), an [[array of tables]] entry is named `name[i]`."""
    parts = [prefix] if prefix else []
    node = data
    for step in loc:
        if isinstance(step, int):
            child = node[step] if isinstance(node, list) and 0 <= step < len(node) else None
            if isinstance(child, dict) and parts:
                parts[-1] += f"[{step}]"
            node = child
        elif step == "[key]":  # pydantic's marker for "the key itself is wrong"
            continue
        elif isinstance(node, dict) or node is None:
            node = node.get(step) if isinstance(node, dict) else None
            parts.append(step)
        # else: a value written as a scalar that a validator expanded into a table (an action
        # alone for `{ action = ... }`): blame the key that is written
    return ".".join(parts)


_QUOTED = re.compile(r"'([^']*)'")


def _toml_words(text: str) -> str:
    """pydantic's 'a' or 'b' as TOML writes strings: "a" or "b"."""
    return _QUOTED.sub(r'"\1"', text)


def _problem(error: Mapping[str, Any], known: list[str], top_level: bool) -> str:
    kind = str(error.get("type", ""))
    context = error.get("ctx") or {}
    got = error.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        what = "unknown table" if top_level else "unknown setting"
        return f"{what} (known: {', '.join(known)})" if known else what
    if kind == "value_error":  # our own validators say what they mean
        return str(context.get("error", error.get("msg", "invalid value")))
    words = {
        "missing": "is required",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "string_too_short": "must not be empty",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "finite_number": "must be a finite number (not nan or inf)",
        "tuple_type": "must be a list",
        "list_type": "must be a list",
        "frozen_set_type": "must be a list",
        "set_type": "must be a list",
        "dict_type": "must be a table",
        "dataclass_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "too_short": "must not be empty",
        "greater_than": f"must be > {context.get('gt', 0):g}",
        "greater_than_equal": f"must be >= {context.get('ge', 0):g}",
        "less_than": f"must be < {context.get('lt', 0):g}",
        "less_than_equal": f"must be <= {context.get('le', 0):g}",
        "literal_error": f"must be {_toml_words(str(context.get('expected', '')))}",
        "enum": f"must be one of {_toml_words(str(context.get('expected', '')))}",
    }
    message = words.get(kind, str(error.get("msg", "invalid value")))
    if kind != "missing" and not isinstance(got, dict | list) and got is not None:
        message = f"{message} (got {got!r})"
    loc = error.get("loc", ())
    if loc and isinstance(loc[-1], int):  # blamed on the array: say which item
        message = f"item {loc[-1] + 1}: {message}"
    return message


def validate_table(
    doc: TomlFile,
    dotted: str,
    model: type[M],
    data: Any,
    errors: list[ConfigError],
    context: Mapping[str, Any] | None = None,
) -> M | None:
    """`data` (the value of table `dotted` in `doc`, "" for the whole file) as a `model`.

    Problems go to `errors`, and None is returned, so the caller can go on collecting the
    problems of the other tables and files in one pass. `context` reaches the validators
    (`base`, the folder relative paths start from, is always there).
    """
    if not isinstance(data, dict):
        errors.append(doc.error(dotted, "must be a table"))
        return None
    try:
        # a class is hashable, whatever mypy infers for type[M]
        validated: M = _adapter(cast(Hashable, model)).validate_python(
            data, context={"base": doc.path.parent, **(context or {})}
        )
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))
            blamed = error.get("ctx", {}).get("error")
            if isinstance(blamed, KeyProblem):
                loc = (*loc, blamed.key)
            table: Any = model
            for step in loc[:-1]:
                table = _inner(table, step)
            known = sorted(_keys_of(table)) if table is not None else []
            top_level = not dotted and len(loc) == 1
            errors.append(doc.error(_where(dotted, loc, data), _problem(error, known, top_level)))
        return None
    return validated
