"""Where config values come from besides the file, and the record of where each came
from (DESIGN section 5). Precedence, as Grafana's `GF_*`: `CDP_MONITOR_*` environment
variables, then the file, then CDP's own settings under their CDP names (from the
environment, else from `cdp.env_file`, the `.env` CDP's docker-compose reads), then
the schema's default.

`CDP_MONITOR_<SECTION>_<KEY>` names a key by its dotted path upper-cased with `.` as
`_`, nested sections included: `CDP_MONITOR_GATE_UPSTREAM`,
`CDP_MONITOR_PROBES_GATEWAY_INTERVAL`, `CDP_MONITOR_DISCORD_GATEWAY_SESSION_ENABLED`.
A value starting with `[` or `{` is read as YAML (a list or mapping); any other value is
the string the file would hold. Unknown `CDP_MONITOR_*` names are ignored (they may be
deployment variables such as `CDP_MONITOR_CONFIG`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

ENV_PREFIX = "CDP_MONITOR_"
FILE = "file"
DEFAULT = "default"


def _seconds(value: str) -> float | None:
    try:
        return float(int(value.strip()))
    except ValueError:
        return None


def _auto_delete(value: str) -> Any:
    # CDP: unset → 5 s; 0 or negative → never delete (controller/chat.go:193-199).
    seconds = _seconds(value)
    if seconds is None:
        return value  # the schema reports it
    return "never" if seconds <= 0 else f"{seconds:g}s"


def _del_type(value: str) -> str | None:
    # CDP acts only on ALL and OLDEST; any other value is unset.
    return value.strip().upper() if value.strip().upper() in ("ALL", "OLDEST") else None


# CDP's name → (dotted key, conversion of its value).
CDP_NAMES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "BOT_TOKEN": ("discord.token", str.strip),
    "GUILD_ID": ("discord.guild_id", str.strip),
    "PROXY_URL": ("discord.proxy", str.strip),
    "CHANNEL_AUTO_DEL_TIME": ("cdp.auto_delete", _auto_delete),
    "MAX_CHANNEL_DEL_TYPE": ("cdp.max_channel_del_type", _del_type),
    # Only the literal "1" turns CDP's default channel on (controller/chat.go:680, 708).
    "DEFAULT_CHANNEL_ENABLE": ("cdp.default_channel", lambda v: v == "1"),
}
# Both give cdp.request_timeout (CDP's default 300 s each): the longer one counts.
REPLY_TIMEOUT_NAMES = ("REQUEST_OUT_TIME", "STREAM_REQUEST_OUT_TIME")


def leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every settable key of the schema as a path; nested sections are walked."""
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from leaf_paths(kind, (*prefix, name))
        else:
            yield (*prefix, name)


def env_overlay(model: type[BaseModel], env: Mapping[str, str]) -> dict[tuple[str, ...], Any]:
    """The `CDP_MONITOR_*` variables that name a key: path → value."""
    names = {ENV_PREFIX + "_".join(path).upper(): path for path in leaf_paths(model)}
    out: dict[tuple[str, ...], Any] = {}
    for name, value in env.items():
        path = names.get(name)
        if path is None:
            continue
        out[path] = yaml.safe_load(value) if value[:1] in ("[", "{") else value
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """A docker-compose `.env`: `KEY=VALUE` lines, `#` comments, optional quotes and
    `export `. Raises OSError when unreadable."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def cdp_values(
    env: Mapping[str, str], env_file: Mapping[str, str], env_file_name: str
) -> dict[tuple[str, ...], tuple[Any, str]]:
    """CDP's settings by key: path → (value, where it came from). The environment wins
    over the `.env` file."""

    def lookup(name: str) -> tuple[str, str] | None:
        if env.get(name):
            return env[name], f"CDP's {name} (environment)"
        if env_file.get(name):
            return env_file[name], f"CDP's {name} ({env_file_name})"
        return None

    out: dict[tuple[str, ...], tuple[Any, str]] = {}
    for name, (dotted, convert) in CDP_NAMES.items():
        found = lookup(name)
        if found is not None:
            out[tuple(dotted.split("."))] = (convert(found[0]), found[1])
    timeouts = []
    for name in REPLY_TIMEOUT_NAMES:
        found = lookup(name)
        seconds = None if found is None else _seconds(found[0])
        if found is not None and seconds is not None and seconds > 0:
            timeouts.append((seconds, found[1]))
    if timeouts:
        seconds, where = max(timeouts)
        out[("cdp", "request_timeout")] = (f"{seconds:g}s", where)
    return out


def get_path(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def in_data(data: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    """Whether `path` is present in `data`, whatever its value."""
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def has_path(data: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or node.get(part) is None:
            return False
        node = node[part]
    return True


def set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {} if child is None else child
            if not isinstance(child, dict):
                return  # the file holds a non-mapping here: the schema reports it
        node = child
    node[path[-1]] = value
