"""The config's sections and `Config`: every key, its type and its default.

These defaults are the product's only defaults: components read their settings from
these sections and define none of their own. Cross-field rules of a section live on
the section, reported at the key to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from monitor.config.errors import field_problems, problem
from monitor.config.fields import (
    Argv,
    BaseUrl,
    BotToken,
    Duration,
    Fraction,
    HttpUrl,
    Int,
    Listen,
    Lowercase,
    NamePattern,
    NeverOrDuration,
    Number,
    OptionalToken,
    PositiveDuration,
    ProxyUrl,
    ResolvedPath,
    Size,
    Snowflake,
    SnowflakeSet,
    Uppercase,
    WsUrl,
)
from monitor.events import EVENT_KINDS
from monitor.units import (
    HostPort,
    format_duration,
    is_loopback_host,
    same_endpoint,
    split_host_port,
    url_host_port,
)
from monitor.vocab import DEFAULT_NAME_PATTERN

CDP_CREATE_ATTEMPTS = 3  # CreateChannelWithRetry (coze-discord-proxy discord/channel.go)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        # `gate:` with every key commented out parses as null: take the defaults.
        return {} if data is None else data


# ---------------------------------------------------------------------------
# Sections


class GatewaySessionConfig(_Section):
    """The daemon's own gateway session (live channels, daily creations, heartbeats)."""

    enabled: bool = True
    identify_reserve: Annotated[Int, Field(ge=0)] = 100
    max_identifies_per_day: Annotated[Int, Field(ge=1)] = 20
    compress: bool = False
    resync_interval: PositiveDuration = 1800.0


class DiscordConfig(_Section):
    token: BotToken
    token_file: ResolvedPath | None = None  # where `token` was read from, if anywhere
    guild_id: Snowflake
    api_base: BaseUrl = "https://discord.com/api/v10"
    gateway_url: WsUrl | None = None
    global_rate: Annotated[Number, Field(gt=0, le=50)] = 25.0
    max_retries: Annotated[Int, Field(ge=0)] = 3
    request_timeout: PositiveDuration = 10.0
    channel_limit: Annotated[Int, Field(ge=1)] = 500
    daily_create_limit: Annotated[Int, Field(ge=0)] = 500  # 0: off
    gateway_session: GatewaySessionConfig = GatewaySessionConfig()
    # Every Discord request (REST, probes, the gateway) goes through it; None: none, but
    # the standard proxy environment (HTTPS_PROXY, NO_PROXY, ...) is honoured.
    proxy: Annotated[ProxyUrl | None, Field(repr=False)] = None


class CdpConfig(_Section):
    """CDP's own settings, as CDP has them (its names fill these in: config/sources.py)."""

    auto_delete: NeverOrDuration = 5.0  # CHANNEL_AUTO_DEL_TIME; None: never
    request_timeout: PositiveDuration = 300.0  # REQUEST_OUT_TIME / STREAM_REQUEST_OUT_TIME
    # CDP's 60 s per creation attempt; lower only to match a time-compressed test CDP.
    create_attempt_timeout: PositiveDuration = 60.0
    env_file: ResolvedPath | None = None
    # MAX_CHANNEL_DEL_TYPE: with ALL or OLDEST CDP deletes in-use cdp-chat- channels itself
    # when the guild is full (30013); null: unset.
    max_channel_del_type: Annotated[Literal["ALL", "OLDEST"] | None, Uppercase] = None
    default_channel: bool = False  # DEFAULT_CHANNEL_ENABLE=1: CDP creates no channels

    @property
    def creation_window(self) -> float:
        """The longest CDP takes to create a request's channel: 3 attempts."""
        return CDP_CREATE_ATTEMPTS * self.create_attempt_timeout

    @property
    def request_lifetime(self) -> float:
        """Creation window plus the reply timeout: a request is over after this."""
        return self.creation_window + self.request_timeout


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
            raise field_problems(("slow", f"must be less than timeout ({limit})"))
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
    # The newest file matching it (CDP's --log-dir: `<dir>/log-*.log`), relative paths
    # anchored to the config file's directory.
    glob: ResolvedPath | None = None
    command: Argv | None = None
    restart_backoff: PositiveDuration = 5.0

    @model_validator(mode="after")
    def _one_source(self) -> CdpLogConfig:
        given = [k for k in ("file", "glob", "command") if getattr(self, k) is not None]
        if len(given) > 1:
            raise field_problems(
                (given[1], f"set only one of file, glob or command ({given[0]} is set)")
            )
        if self.enabled and not given:
            raise field_problems(("file", "required when enabled (or set glob or command)"))
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
            raise field_problems(("window", f"must be longer than evaluate_interval ({limit})"))
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
            raise field_problems(("max_reset_timeout", f"must be at least reset_timeout ({limit})"))
        return self


class GateConfig(_Section):
    enabled: bool = True
    listen: Listen = "0.0.0.0:7077"
    upstream: BaseUrl = "http://127.0.0.1:7078"
    when_open: Annotated[Literal["reject", "hold"], Lowercase] = "reject"
    hold_max: PositiveDuration = 30.0
    max_concurrent_creates: Annotated[Int, Field(ge=1)] = 8
    queue_wait: Duration = 10.0
    create_rate: Annotated[Number, Field(ge=0)] = 0.0
    # Admit a create only while its predicted wait in CDP's create queue stays under
    # (1 - limit_headroom) x cdp.create_attempt_timeout (monitor/gate/limit.py).
    adaptive_limit: bool = True
    limit_headroom: Annotated[Number, Field(ge=0, lt=1)] = 0.25
    half_open_trials: Annotated[Int, Field(ge=1)] = 1
    cdp_default_channel: bool = False  # kept for old configs: cdp.default_channel
    # Creates only (the rest stream): CDP takes base64 images of any size.
    max_body: Annotated[Size, Field(ge=1)] = 64 * 1024 * 1024
    # A floor: the gate waits at least cdp's creation window + cdp.request_timeout.
    upstream_timeout: PositiveDuration = 480.0
    # Listener limits against slow and idle clients (slowloris, descriptor exhaustion).
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 60.0
    idle_timeout: PositiveDuration = 30.0
    max_connections: Annotated[Int, Field(ge=1)] = 1024

    @model_validator(mode="after")
    def _not_a_loop(self) -> GateConfig:
        if same_endpoint(self.listen_address, url_host_port(self.upstream)):
            raise field_problems(
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
    name_pattern: NamePattern = DEFAULT_NAME_PATTERN
    protected_channel_ids: SnowflakeSet = frozenset()
    min_age: Duration = 600.0
    emergency_min_age: Duration = 120.0
    max_deletes_per_run: Annotated[Int, Field(ge=1)] = 100
    dry_run: bool = False
    high_watermark: Fraction = 0.8
    stale_after: PositiveDuration | None = None
    settle_delay: Duration = 30.0
    ledger_grace: Duration = 120.0
    census_interval: PositiveDuration = 60.0
    list_spacing: PositiveDuration = 30.0

    @model_validator(mode="after")
    def _emergency_is_shorter(self) -> ReconcileConfig:
        if self.emergency_min_age > self.min_age:
            limit = format_duration(self.min_age)
            raise field_problems(("emergency_min_age", f"must not exceed min_age ({limit})"))
        return self

    @property
    def name_regex(self) -> re.Pattern[str]:
        return re.compile(self.name_pattern)


class ControlConfig(_Section):
    listen: Listen = "127.0.0.1:9105"
    token: OptionalToken = None
    token_file: ResolvedPath | None = None  # where `token` was read from, if anywhere
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = 10.0
    idle_timeout: PositiveDuration = 30.0
    max_connections: Annotated[Int, Field(ge=1)] = 64

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ControlConfig:
        if self.token is None and not is_loopback_host(self.listen_address.host):
            raise field_problems(
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
            raise problem("must set exactly one of exec or webhook")
        return self


class NotifyConfig(_Section):
    """Messages to notification services through Apprise URLs (the `notify` extra)."""

    # Apprise URLs hold the service's secret (a bot token, a webhook key): SecretStr.
    urls: tuple[SecretStr, ...] = ()
    # CDP's own NOTIFY_TELEGRAM_BOT_TOKEN / NOTIFY_TELEGRAM_USER_ID, if set, add a target.
    cdp_env: bool = True
    # auto: zh when CDP's Telegram variables are the only target, else en.
    language: Literal["auto", "zh", "en"] = "auto"
    period: PositiveDuration = 600.0  # at most one message per event kind per period
    timeout: PositiveDuration = 10.0
    events: tuple[str, ...] = EVENT_KINDS
    reconcile_threshold: Annotated[Int, Field(ge=1)] = 10  # deletions in one run
    # daily_creations_near_cap: creations in 24 h at this share of discord.daily_create_limit.
    creations_ratio: Fraction = 0.8
    instance: str = ""  # prefixed to every title, to tell several daemons apart

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(EVENT_KINDS))
        if unknown:
            raise problem(f"unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENT_KINDS)}")
        return value


class ActionsConfig(_Section):
    on_open: tuple[ActionConfig, ...] = ()
    on_close: tuple[ActionConfig, ...] = ()
    timeout: PositiveDuration = 10.0
    notify: NotifyConfig = NotifyConfig()


class LogConfig(_Section):
    level: Annotated[Literal["debug", "info", "warning", "error"], Lowercase] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Section):
    """The whole validated configuration. Immutable: reload builds a new one."""

    discord: DiscordConfig
    cdp: CdpConfig = CdpConfig()
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
            raise field_problems(
                ("control.listen", f"is the same address as gate.listen ({self.gate.listen})")
            )
        return self

    @property
    def cdp_url(self) -> str:
        """Base URL of CDP itself, for the liveness probe."""
        return self.probes.cdp.url or self.gate.upstream
