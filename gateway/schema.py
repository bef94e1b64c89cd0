"""One declarative validation layer for config/ and rules/: pydantic models, file:line errors.

A table of a TOML file is checked against a pydantic model (strict types, unknown keys refused);
every problem pydantic reports is turned into a `ConfigError` naming the file, the dotted key and
the line (`TomlFile.line_of`), so an admin sees `config/gateway.toml:42: key 'dns.timeout': ...`
whatever the table is: a core section, a plugin's `[plugins.NAME]` table, or a rules file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.tomlfile import ConfigError, TomlFile

M = TypeVar("M", bound=BaseModel)


class Table(BaseModel):
    """Base of every table model: frozen, strict (no "5" for 5), unknown keys are errors.

    Strict mode takes a TOML array as `list[...]` only: declare sequences as lists (or convert
    with a before-validator) and numbers as `float` (an int is accepted for a float).
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


def _dotted(prefix: str, loc: tuple[int | str, ...]) -> str:
    parts = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):  # an index in a list: name the list
            continue
        parts.append(str(item))
    return ".".join(parts)


def _problem(error: Mapping[str, Any], known: list[str]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return f"unknown setting (known: {', '.join(known)})" if known else "unknown setting"
    message = str(error.get("msg", "invalid value"))
    # pydantic's "Value error, x" for our own validators: keep only what the validator said
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    got = error.get("input")
    if kind not in ("missing",) and not isinstance(got, dict | list) and got is not None:
        message = f"{message} (got {got!r})"
    return message


def validate_table(
    doc: TomlFile,
    dotted: str,
    model: type[M],
    data: Any,
    errors: list[ConfigError],
    context: Mapping[str, Any] | None = None,
) -> M | None:
    """`data` (the value of table `dotted` in `doc`) as a `model`; problems go to `errors`.

    Returns None when anything is wrong, so the caller can fall back to defaults and go on
    collecting the problems of the other tables in one pass.
    """
    if not isinstance(data, dict):
        errors.append(doc.error(dotted, "must be a table"))
        return None
    try:
        return model.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        known = sorted(model.model_fields)
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))
            errors.append(doc.error(_dotted(dotted, loc), _problem(error, known)))
        return None
