"""Request bodies decoded the way Go's `json.NewDecoder(body).Decode(&struct)` does:
the first JSON value only, `null` is an empty struct, keys match field names
case-insensitively and the last match wins, unknown keys are ignored, a value of the
wrong type fails the whole decode (with Go's error text, which CDP logs)."""

from __future__ import annotations

import json
from typing import Any

# field kinds: "string", "bool", "int", "messages" ([]OpenAIChatMessage), "any"
GO_TYPES = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "messages": "[]model.OpenAIChatMessage",
}


class DecodeError(Exception):
    """`str(exc)` is Go's error text."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(kind: str, value: Any) -> bool:
    if value is None or kind == "any":
        return True
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, list) and all(_message_fits(m) for m in value)


def _message_fits(message: Any) -> bool:
    if message is None:
        return True
    if not isinstance(message, dict):
        return False
    roles = [v for k, v in message.items() if k.lower() == "role"]
    return not roles or roles[-1] is None or isinstance(roles[-1], str)


def decode(raw: bytes, struct: str, fields: dict[str, str]) -> dict[str, Any]:
    """The decoded fields (absent ones missing); `struct` names the Go type in errors."""
    text = raw.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise DecodeError("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        bad = text[exc.pos : exc.pos + 1]
        if not bad:
            raise DecodeError("unexpected EOF") from None
        raise DecodeError(f"invalid character '{bad}' looking for beginning of value") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_kind(value)} into Go value of type model.{struct}"
        )
    out: dict[str, Any] = {}
    error: str | None = None
    by_lower = {name.lower(): name for name in fields}
    for key, item in value.items():
        name = by_lower.get(key.lower())
        if name is None:
            continue
        if not _fits(fields[name], item):
            error = error or (
                f"json: cannot unmarshal {_kind(item)} into Go struct field "
                f"{struct}.{name} of type {GO_TYPES[fields[name]]}"
            )
            continue
        out[name] = item
    if error is not None:
        raise DecodeError(error)
    return out
