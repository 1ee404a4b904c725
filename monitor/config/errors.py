"""Config problems as `(dotted.path, reason)` pairs: raising them from validators, and
translating pydantic's ValidationError into them.

Validators raise `problem()` / `field_problems()` so the reason is ours, verbatim;
every other pydantic error type gets a short reason here. Reasons never quote the
input: it may be a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def problem(reason: str) -> PydanticCustomError:
    return PydanticCustomError("config", "{reason}", {"reason": reason})


def field_problems(*problems: tuple[str, str]) -> PydanticCustomError:
    """Cross-field problems of one section, each reported at its own key."""
    return PydanticCustomError("config_fields", "invalid section", {"problems": list(problems)})


# pydantic error type → our reason.
_SIMPLE_REASONS = {
    "missing": "field required",
    "extra_forbidden": "unknown key",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "path_type": "must be a path",
}


def translate(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "config_fields":
            for field, reason in ctx["problems"]:
                out.append((dotted((*loc, *field.split("."))), reason))
            continue
        reason = _reason(kind, ctx, err["msg"])
        if kind == "missing" and loc[-1:] == ("token",) and loc[:1] == ("discord",):
            reason = "field required (or set discord.token_file)"
        out.append((dotted(loc), reason))
    return out


def _reason(kind: str, ctx: Mapping[str, Any], msg: str) -> str:
    if kind in _SIMPLE_REASONS:
        return _SIMPLE_REASONS[kind]
    if kind == "config":
        return str(ctx["reason"])
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    if kind == "greater_than":
        return f"must be greater than {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    return msg[:1].lower() + msg[1:]
