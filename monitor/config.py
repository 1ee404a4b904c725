"""YAML → environment expansion and secret files → pydantic schema → frozen `Config`.

Every problem in a file is reported at once, as one `ConfigError` whose `problems`
are `(dotted.path, reason)` pairs. Secrets are `SecretStr`, so they never show up in a
repr, a dump or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from monitor.discord.snowflake import parse_snowflake
from monitor.errors import ConfigError
from monitor.units import (
    DURATION_HINT,
    SIZE_HINT,
    HostPort,
    format_duration,
    is_loopback_host,
    parse_duration,
    parse_size,
    same_endpoint,
    split_host_port,
    url_host_port,
)
from monitor.vocab import DEFAULT_NAME_PATTERN

__all__ = [
    "DEFAULT_NAME_PATTERN",
    "DURATION_HINT",
    "ActionConfig",
    "ActionsConfig",
    "BreakerConfig",
    "CdpLogConfig",
    "CdpProbeConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DiscordConfig",
    "GateConfig",
    "GatewayProbeConfig",
    "HealthConfig",
    "HostPort",
    "LogConfig",
    "ProbesConfig",
    "ReconcileConfig",
    "RestProbeConfig",
    "SignalsConfig",
    "StatuspageProbeConfig",
    "default_config_path",
    "format_duration",
    "is_loopback_host",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "split_host_port",
]


# ---------------------------------------------------------------------------
# Field types. Validators raise PydanticCustomError so the message is ours, verbatim.


def _problem(reason: str) -> PydanticCustomError:
    return PydanticCustomError("config", "{reason}", {"reason": reason})


def _field_problems(*problems: tuple[str, str]) -> PydanticCustomError:
    """Cross-field problems of one section, each reported at its own key."""
    return PydanticCustomError("config_fields", "invalid section", {"problems": list(problems)})


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise _problem(DURATION_HINT) from None


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise _problem(SIZE_HINT) from None


def _no_bool(kind: str) -> Callable[[Any], Any]:
    # pydantic's lax mode takes `yes` as 1; a flag where a number belongs is a typo.
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise _problem(f"must be {kind}")
        return value

    return check


def _fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise _problem("must be greater than 0 and at most 1")
    return value


def _snowflake(value: Any) -> Any:
    number = parse_snowflake(value)
    if number is None:
        raise _problem("must be a Discord id (a positive integer)")
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
        raise _problem("must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _problem("must be an http:// or https:// URL")
    return value


def _base_url(value: str) -> str:
    _http_url(value)
    if urlsplit(value).query or urlsplit(value).fragment:
        raise _problem("must be a base URL without ?query or #fragment")
    return value.rstrip("/")


def _ws_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        raise _problem("must be a ws:// or wss:// URL") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise _problem("must be a ws:// or wss:// URL")
    return value


def _non_empty(value: tuple[str, ...]) -> tuple[str, ...]:
    # Not Field(min_length=1): pydantic would also report "too short" when an item is bad.
    if not value:
        raise _problem("must not be empty")
    return value


def _listen(value: str) -> str:
    try:
        split_host_port(value)
    except ValueError as exc:
        raise _problem(str(exc)) from None
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise _problem(f"not a valid regular expression: {exc}") from None
    return value


def _bot_token(value: SecretStr) -> SecretStr:
    token = value.get_secret_value()
    if not token:
        raise _problem("must not be empty")
    if token.lower().startswith("bot "):
        raise _problem("give the bare token, without the 'Bot ' prefix")
    _check_header_safe(token)
    return value


def _control_token(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        _check_header_safe(value.get_secret_value())
    return value


def _check_header_safe(token: str) -> None:
    if not all(33 <= ord(ch) < 127 for ch in token):
        raise _problem("must be printable ASCII without spaces")


def _empty_is_none(value: Any) -> Any:
    # `token: ${CDP_MONITOR_CONTROL_TOKEN:-}` means "no token" when the variable is unset.
    return None if value == "" else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    # Relative paths are relative to the config file, not to wherever the daemon started.
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
PositiveDuration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Int = Annotated[int, BeforeValidator(_no_bool("an integer"))]
Number = Annotated[float, BeforeValidator(_no_bool("a number"))]
Fraction = Annotated[float, BeforeValidator(_no_bool("a number")), AfterValidator(_fraction)]
Size = Annotated[int, BeforeValidator(_size)]
Snowflake = Annotated[int, BeforeValidator(_snowflake)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
WsUrl = Annotated[str, AfterValidator(_ws_url)]
Listen = Annotated[str, AfterValidator(_listen)]
ResolvedPath = Annotated[Path, AfterValidator(_resolve_path)]
Argv = Annotated[tuple[str, ...], AfterValidator(_non_empty)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        # `gate:` with every key commented out parses as null: take the defaults.
        return {} if data is None else data


# ---------------------------------------------------------------------------
# Sections


class DiscordConfig(_Section):
    token: Annotated[SecretStr, AfterValidator(_bot_token)]
    token_file: ResolvedPath | None = None  # where `token` was read from, if anywhere
    guild_id: Snowflake
    api_base: BaseUrl = "https://discord.com/api/v10"
    gateway_url: WsUrl | None = None
    global_rate: Annotated[Number, Field(gt=0, le=50)] = 25.0
    max_retries: Annotated[Int, Field(ge=0)] = 3
    request_timeout: PositiveDuration = 10.0
    channel_limit: Annotated[Int, Field(ge=1)] = 500


class _TimedProbeConfig(_Section):
    """A probe whose runs can be slow without failing (gateway, rest)."""

    enabled: bool = True
    interval: PositiveDuration
    timeout: PositiveDuration = 10.0
    slow: PositiveDuration

    @model_validator(mode="after")
    def _slow_below_timeout(self) -> Self:
        if self.slow >= self.timeout:
            limit = format_duration(self.timeout)
            raise _field_problems(("slow", f"must be less than timeout ({limit})"))
        return self


class GatewayProbeConfig(_TimedProbeConfig):
    interval: PositiveDuration = 15.0
    slow: PositiveDuration = 1.0


class RestProbeConfig(_TimedProbeConfig):
    interval: PositiveDuration = 30.0
    slow: PositiveDuration = 2.0


class CdpProbeConfig(_Section):
    enabled: bool = True
    interval: PositiveDuration = 15.0
    timeout: PositiveDuration = 5.0
    url: BaseUrl | None = None  # None: gate.upstream


class StatuspageProbeConfig(_Section):
    enabled: bool = False
    interval: PositiveDuration = 60.0
    timeout: PositiveDuration = 10.0
    url: HttpUrl = "https://discordstatus.com/api/v2/summary.json"


class ProbesConfig(_Section):
    gateway: GatewayProbeConfig = GatewayProbeConfig()
    rest: RestProbeConfig = RestProbeConfig()
    cdp: CdpProbeConfig = CdpProbeConfig()
    statuspage: StatuspageProbeConfig = StatuspageProbeConfig()


class CdpLogConfig(_Section):
    enabled: bool = False
    file: ResolvedPath | None = None
    command: Argv | None = None
    restart_backoff: PositiveDuration = 5.0

    @model_validator(mode="after")
    def _one_source(self) -> CdpLogConfig:
        if self.file is not None and self.command is not None:
            raise _field_problems(("command", "set either file or command, not both"))
        if self.enabled and self.file is None and self.command is None:
            raise _field_problems(("file", "required when enabled (or set command)"))
        return self


class SignalsConfig(_Section):
    cdp_log: CdpLogConfig = CdpLogConfig()
    gate: bool = True


class HealthConfig(_Section):
    window: PositiveDuration = 120.0
    min_samples: Annotated[Int, Field(ge=1)] = 3
    source_min_samples: Annotated[Int, Field(ge=1)] = 6
    failure_ratio: Fraction = 0.3
    slow_ratio: Fraction = 0.5
    evaluate_interval: PositiveDuration = 5.0

    @model_validator(mode="after")
    def _window_spans_evaluations(self) -> HealthConfig:
        if self.window <= self.evaluate_interval:
            limit = format_duration(self.evaluate_interval)
            raise _field_problems(("window", f"must be longer than evaluate_interval ({limit})"))
        return self


class BreakerConfig(_Section):
    reset_timeout: PositiveDuration = 60.0
    success_threshold: Annotated[Int, Field(ge=1)] = 2
    backoff_factor: Annotated[Number, Field(ge=1)] = 2.0
    max_reset_timeout: PositiveDuration = 900.0
    backoff_reset_after: PositiveDuration = 1800.0

    @model_validator(mode="after")
    def _cap_above_base(self) -> BreakerConfig:
        if self.max_reset_timeout < self.reset_timeout:
            limit = format_duration(self.reset_timeout)
            raise _field_problems(
                ("max_reset_timeout", f"must be at least reset_timeout ({limit})")
            )
        return self


class GateConfig(_Section):
    enabled: bool = True
    listen: Listen = "0.0.0.0:7077"
    upstream: BaseUrl = "http://127.0.0.1:7078"
    when_open: Annotated[Literal["reject", "hold"], BeforeValidator(_lower)] = "reject"
    hold_max: PositiveDuration = 30.0
    max_concurrent_creates: Annotated[Int, Field(ge=1)] = 8
    queue_wait: Duration = 10.0
    create_rate: Annotated[Number, Field(ge=0)] = 0.0
    half_open_trials: Annotated[Int, Field(ge=1)] = 1
    cdp_default_channel: bool = False
    max_body: Annotated[Size, Field(ge=1)] = 1024 * 1024
    upstream_timeout: PositiveDuration = 330.0

    @model_validator(mode="after")
    def _not_a_loop(self) -> GateConfig:
        if same_endpoint(self.listen_address, url_host_port(self.upstream)):
            raise _field_problems(
                (
                    "upstream",
                    f"points at the gate itself (gate.listen is {self.listen}); "
                    "run CDP on another port",
                )
            )
        return self

    @property
    def listen_address(self) -> HostPort:
        return split_host_port(self.listen)


class ReconcileConfig(_Section):
    enabled: bool = True
    interval: PositiveDuration = 300.0
    name_pattern: Annotated[str, AfterValidator(_regex)] = DEFAULT_NAME_PATTERN
    protected_channel_ids: Annotated[frozenset[Snowflake], BeforeValidator(_id_list)] = frozenset()
    min_age: Duration = 600.0
    emergency_min_age: Duration = 120.0
    max_deletes_per_run: Annotated[Int, Field(ge=1)] = 100
    dry_run: bool = False
    high_watermark: Fraction = 0.8
    stale_after: PositiveDuration | None = None
    settle_delay: Duration = 30.0
    cdp_auto_delete: Duration = 5.0
    ledger_grace: Duration = 120.0
    census_interval: PositiveDuration = 60.0
    list_spacing: PositiveDuration = 30.0

    @model_validator(mode="after")
    def _emergency_is_shorter(self) -> ReconcileConfig:
        if self.emergency_min_age > self.min_age:
            limit = format_duration(self.min_age)
            raise _field_problems(("emergency_min_age", f"must not exceed min_age ({limit})"))
        return self

    @property
    def name_regex(self) -> re.Pattern[str]:
        return re.compile(self.name_pattern)


class ControlConfig(_Section):
    listen: Listen = "127.0.0.1:9105"
    token: Annotated[
        SecretStr | None, BeforeValidator(_empty_is_none), AfterValidator(_control_token)
    ] = None
    token_file: ResolvedPath | None = None  # where `token` was read from, if anywhere

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ControlConfig:
        if self.token is None and not is_loopback_host(self.listen_address.host):
            raise _field_problems(
                (
                    "token",
                    f"required because control.listen ({self.listen}) is not a loopback address",
                )
            )
        return self

    @property
    def listen_address(self) -> HostPort:
        return split_host_port(self.listen)


class ActionConfig(_Section):
    exec: Argv | None = None
    # Webhook URLs often embed a secret (Slack, Discord): keep them out of reprs.
    webhook: HttpUrl | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionConfig:
        if (self.exec is None) == (self.webhook is None):
            raise _problem("must set exactly one of exec or webhook")
        return self


class ActionsConfig(_Section):
    on_open: tuple[ActionConfig, ...] = ()
    on_close: tuple[ActionConfig, ...] = ()
    timeout: PositiveDuration = 10.0


class LogConfig(_Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Section):
    """The whole validated configuration. Immutable: reload builds a new one."""

    discord: DiscordConfig
    probes: ProbesConfig = ProbesConfig()
    signals: SignalsConfig = SignalsConfig()
    health: HealthConfig = HealthConfig()
    breaker: BreakerConfig = BreakerConfig()
    gate: GateConfig = GateConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    control: ControlConfig = ControlConfig()
    actions: ActionsConfig = ActionsConfig()
    # Validated so the default, too, is anchored to the config file's directory.
    state_dir: ResolvedPath = Field(default=Path("state"), validate_default=True)
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Config:
        if self.gate.enabled and same_endpoint(
            self.gate.listen_address, self.control.listen_address
        ):
            raise _field_problems(
                ("control.listen", f"is the same address as gate.listen ({self.gate.listen})")
            )
        return self

    @property
    def cdp_url(self) -> str:
        """Base URL of CDP itself, for the liveness probe."""
        return self.probes.cdp.url or self.gate.upstream


# ---------------------------------------------------------------------------
# Loading

_SECRET_SECTIONS = ("discord", "control")
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_Loc = tuple[str | int, ...]


def _dotted(loc: _Loc) -> str:
    return ".".join(str(part) for part in loc)


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """`$CDP_MONITOR_CONFIG`, else `./monitor.yaml`."""
    env = os.environ if environ is None else environ
    return Path(env.get("CDP_MONITOR_CONFIG") or "monitor.yaml")


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file. Raises ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([("", f"config file not found: {path}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([("", f"config file is not UTF-8 text: {path}")]) from None
    except OSError as exc:
        raise ConfigError([("", f"cannot read config file {path}: {exc.strerror}")]) from None
    return parse_config(text, source=path, environ=environ)


def parse_config(
    text: str, *, source: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config text. `source` anchors relative paths (else the working directory)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    base_dir = source.absolute().parent if source is not None else Path.cwd()
    problems: list[tuple[str, str]] = []

    data, duplicates = _load_yaml(text)
    problems += duplicates
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [("", "top level must be a mapping of sections (discord:, gate:, reconcile:, ...)")]
        )

    expanded = _expand_tree(data, (), env, problems)
    assert isinstance(expanded, dict)
    # Present so a missing section reports discord.token, not just `discord`.
    if expanded.get("discord") is None:
        expanded["discord"] = {}
    if "state_dir" not in expanded and env.get("STATE_DIRECTORY"):
        # systemd's StateDirectory=; it may list several, the first is ours.
        expanded["state_dir"] = env["STATE_DIRECTORY"].split(":")[0]
    covered: set[str] = set()  # tokens whose token_file failed: no follow-on "required"
    for section in _SECRET_SECTIONS:
        if not _read_token_file(expanded, section, base_dir, env, problems):
            covered.add(f"{section}.token")

    covered |= {path for path, _ in problems}
    try:
        config = Config.model_validate(expanded, context={"base_dir": base_dir})
    except ValidationError as exc:
        for path, reason in _translate(exc):
            if not _covered(path, covered):
                problems.append((path, reason))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def _covered(path: str, covered: set[str]) -> bool:
    # An unset ${VAR} or unreadable token_file already explains the follow-on schema error.
    return any(path == c or path.startswith(c + ".") for c in covered if c)


def _load_yaml(text: str) -> tuple[Any, list[tuple[str, str]]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        duplicates = list(_find_duplicates(node, (), set()))
        return loader.construct_document(node), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        raise ConfigError([("", f"not valid YAML: {what}{where}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _find_duplicates(node: yaml.Node, loc: _Loc, seen_nodes: set[int]) -> Iterator[tuple[str, str]]:
    # PyYAML silently keeps the last of two equal keys; a config typo hides that way.
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first_line:
                yield _dotted((*loc, key)), f"duplicate key (lines {first_line[key]} and {line})"
            else:
                first_line[key] = line
            yield from _find_duplicates(value_node, (*loc, key), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _find_duplicates(item, (*loc, index), seen_nodes)


def _expand_tree(
    value: Any, loc: _Loc, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> Any:
    if isinstance(value, dict):
        return {k: _expand_tree(v, (*loc, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "$" in value:
        try:
            return _expand(value, env)
        except ValueError as exc:
            problems.append((_dotted(loc), str(exc)))
            return ""
    return value


def _expand(text: str, env: Mapping[str, str]) -> str:
    """`${NAME}`, `${NAME:-default}` (default when unset or empty); `$${` is a literal `${`."""

    def replace(match: re.Match[str]) -> str:
        whole = match.group(0)
        if whole == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None or (default is not None and "${" in default):
            raise ValueError("bad ${...} reference (write ${NAME} or ${NAME:-default})")
        found = env.get(name)
        if default is not None:
            return found or default
        if found is None:
            raise ValueError(f"environment variable {name} is not set")
        return found

    return _ENV_REF.sub(replace, text)


def _read_token_file(
    data: dict[Any, Any],
    section: str,
    base_dir: Path,
    env: Mapping[str, str],
    problems: list[tuple[str, str]],
) -> bool:
    """Put the content of `<section>.token_file` in `<section>.token`. False if it failed."""
    block = data.get(section)
    if not isinstance(block, dict) or block.get("token_file") in (None, ""):
        return True
    name = block["token_file"]
    where = f"{section}.token_file"
    if not isinstance(name, str):
        return True  # the schema reports the wrong type
    if block.get("token") not in (None, ""):
        problems.append((where, f"set either {section}.token or {section}.token_file, not both"))
        return True
    path = Path(name)
    if not path.is_absolute():
        # systemd LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY.
        creds = env.get("CREDENTIALS_DIRECTORY")
        if creds and (Path(creds) / path).is_file():
            path = Path(creds) / path
        else:
            path = base_dir / path
    block = dict(block)
    data[section] = block
    block["token_file"] = str(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        problems.append((where, f"file not found: {path}"))
        return False
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problems.append((where, f"cannot read {path}: {reason}"))
        return False
    if not token:
        problems.append((where, f"file is empty: {path}"))
        return False
    block["token"] = token
    return True


# pydantic error type → our reason. Messages never quote the input: it may be a secret.
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


def _translate(exc: ValidationError) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: _Loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        if kind == "config_fields":
            for field, reason in ctx["problems"]:
                out.append((_dotted((*loc, *field.split("."))), reason))
            continue
        reason = _reason(kind, ctx, err["msg"])
        if kind == "missing" and loc[-1:] == ("token",) and loc[:1] == ("discord",):
            reason = "field required (or set discord.token_file)"
        out.append((_dotted(loc), reason))
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
