"""The config's field types: annotated types and the validators behind them.

Validators raise `problem()` so the reason is ours, verbatim. Defaults live in the
schema, never here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationInfo

from monitor.config.errors import problem
from monitor.discord.snowflake import parse_snowflake
from monitor.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_size, split_host_port


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise problem(DURATION_HINT) from None


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise problem(SIZE_HINT) from None


def _no_bool(kind: str) -> Callable[[Any], Any]:
    # pydantic's lax mode takes `yes` as 1; a flag where a number belongs is a typo.
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise problem(f"must be {kind}")
        return value

    return check


def _fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise problem("must be greater than 0 and at most 1")
    return value


def _snowflake(value: Any) -> Any:
    number = parse_snowflake(value)
    if number is None:
        raise problem("must be a Discord id (a positive integer)")
    return number


def _id_list(value: Any) -> Any:
    # One string from the environment, e.g. "123,456", is a list too.
    if isinstance(value, str):
        return [item for item in re.split(r"[\s,]+", value) if item]
    return value


def _http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise problem("must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise problem("must be an http:// or https:// URL")
    return value


def _base_url(value: str) -> str:
    _http_url(value)
    if urlsplit(value).query or urlsplit(value).fragment:
        raise problem("must be a base URL without ?query or #fragment")
    return value.rstrip("/")


def _ws_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise problem("must be a ws:// or wss:// URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise problem("must be a ws:// or wss:// URL")
    return value


_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h", "socks4")


def _proxy_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise problem("must be an http://, https:// or socks5:// URL") from None
    if parts.scheme.lower() not in _PROXY_SCHEMES or not parts.hostname:
        raise problem("must be an http://, https:// or socks5:// URL")
    return value


def _never_or_duration(value: Any) -> Any:
    # `never` (or CDP's 0 / negative) means CDP never deletes its channels.
    if value is None or (isinstance(value, str) and value.strip().lower() == "never"):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*-\d+(\.\d*)?\s*", value):
        return None  # CDP's CHANNEL_AUTO_DEL_TIME=-1 through ${...}
    seconds = _duration(value)
    return None if seconds <= 0 else seconds


def _non_empty(value: tuple[str, ...]) -> tuple[str, ...]:
    # Not Field(min_length=1): pydantic would also report "too short" when an item is bad.
    if not value:
        raise problem("must not be empty")
    return value


def _listen(value: str) -> str:
    try:
        split_host_port(value)
    except ValueError as exc:
        raise problem(str(exc)) from None
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise problem(f"not a valid regular expression: {exc}") from None
    return value


# Names of ordinary channels (Discord lowercases text-channel names): a
# `reconcile.name_pattern` matching any of them would have the reconciler delete channels
# that are not CDP's. Includes the empty name and a bare `cdp`, so `""`, `.*` and `cdp`
# are refused along with anything else that matches near everything.
ORDINARY_CHANNEL_NAMES = (
    "",
    "general",
    "rules",
    "welcome",
    "announcements",
    "公告",
    "chat",
    "general-chat",
    "off-topic",
    "help",
    "support",
    "bot-commands",
    "moderator-only",
    "a",
    "1",
    "cdp",
    "cdp-chat",
    "cdp-general",
)


def _name_pattern(value: str) -> str:
    _regex(value)
    if not value.startswith("^"):
        raise problem("must be anchored at the start with ^ (e.g. ^cdp-chat-)")
    regex = re.compile(value)
    hits = [name or '""' for name in ORDINARY_CHANNEL_NAMES if regex.match(name)]
    if hits:
        raise problem(
            f"matches ordinary channel names ({', '.join(hits[:5])}): the reconciler would "
            "delete channels that are not CDP's; match CDP's prefix, e.g. ^cdp-(chat|对话)-"
        )
    return value


def _bot_token(value: SecretStr) -> SecretStr:
    token = value.get_secret_value()
    if not token:
        raise problem("must not be empty")
    if token.lower().startswith("bot "):
        raise problem("give the bare token, without the 'Bot ' prefix")
    _check_header_safe(token)
    return value


def _control_token(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        _check_header_safe(value.get_secret_value())
    return value


def _check_header_safe(token: str) -> None:
    if not all(33 <= ord(ch) < 127 for ch in token):
        raise problem("must be printable ASCII without spaces")


def _empty_is_none(value: Any) -> Any:
    # `token: ${CDP_MONITOR_CONTROL_TOKEN:-}` means "no token" when the variable is unset.
    return None if value == "" else value


def _upper(value: Any) -> Any:
    if isinstance(value, str):
        stripped = value.strip().upper()
        return None if stripped == "" else stripped
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    # Relative paths are relative to the config file, not to wherever the daemon started.
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


# Case-insensitive choices: `Annotated[Literal["a", "b"], Lowercase]`.
Lowercase = BeforeValidator(_lower)
Uppercase = BeforeValidator(_upper)  # and "" is None

Duration = Annotated[float, BeforeValidator(_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Int = Annotated[int, BeforeValidator(_no_bool("an integer"))]
Number = Annotated[float, BeforeValidator(_no_bool("a number"))]
Fraction = Annotated[float, BeforeValidator(_no_bool("a number")), AfterValidator(_fraction)]
Size = Annotated[int, BeforeValidator(_size)]
Snowflake = Annotated[int, BeforeValidator(_snowflake)]
SnowflakeSet = Annotated[frozenset[Snowflake], BeforeValidator(_id_list)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
WsUrl = Annotated[str, AfterValidator(_ws_url)]
Listen = Annotated[str, AfterValidator(_listen)]
ProxyUrl = Annotated[str, BeforeValidator(_empty_is_none), AfterValidator(_proxy_url)]
# A duration, or None for `never`.
NeverOrDuration = Annotated[float | None, BeforeValidator(_never_or_duration)]
# A regex choosing channels to delete: anchored, and matching no ordinary channel name.
NamePattern = Annotated[str, AfterValidator(_name_pattern)]
ResolvedPath = Annotated[Path, AfterValidator(_resolve_path)]
Argv = Annotated[tuple[str, ...], AfterValidator(_non_empty)]
BotToken = Annotated[SecretStr, AfterValidator(_bot_token)]
# Optional secret: empty means unset, so `${VAR:-}` works for "no token".
OptionalToken = Annotated[
    SecretStr | None, BeforeValidator(_empty_is_none), AfterValidator(_control_token)
]
