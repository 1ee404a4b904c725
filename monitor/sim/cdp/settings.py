"""The CDP emulator's settings (CDP's own environment variables, `from_env`), CDP's
constants and fixed texts, the error a handler raises, and the counters it keeps.

Durations are CDP's real ones (60 s attempts, 20 s HTTP timeout, 5 min reply timeout);
`time_scale` divides every one of them when the emulator runs (`scaled`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

VERSION = "v4.6.5"
# discordgo v0.27.1 is what CDP links; Discord sees this User-Agent on bot-token calls.
DISCORDGO_USER_AGENT = "DiscordBot (https://github.com/bwmarrin/discordgo, v0.27.1)"
# sendmessage.go:46: the browser User-Agent of the user-token sends.
BROWSER_USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/121.0.0.0 Safari/537.36"
)
ID_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FULL_GUILD_TEXT = "Maximum number of server channels reached"  # channel.go:129
SEGMENT_RUNES = 1990  # discord.go:549
MAX_502_RETRIES = 3  # discordgo MaxRestRetries
DEFAULT_AUTO_DELETE = 5.0  # chat.go:203, CHANNEL_AUTO_DEL_TIME unset
REQUEST_OUT_TIME = 300.0  # config.RequestOutTimeDuration
RATE_WINDOW = 60.0  # config.RequestRateLimitDuration
COZE_BOT_ID = "1100000000000000400"
# common/constants.go: a reply with one of these texts is an error, not an answer.
COZE_ERROR_TEXT = "There are too many users now. Please try again a bit later."
COZE_USER_DAILY_LIMIT_TEXT = (
    "You have exceeded the daily limit for sending messages to the bot. Please try again later."
)
# DefaultOpenaiModelList (common/constants.go:12-36), served by /v1/models.
MODELS = tuple(
    "gpt-3.5-turbo gpt-3.5-turbo-1106 gpt-3.5-turbo-0125 gpt-4 gpt-4-0613 gpt-4-32k "
    "gpt-4-32k-0613 gpt-4-turbo gpt-4-turbo-preview gpt-4o gpt-4o-2024-05-13 "
    "gpt-4o-2024-08-06 gpt-4o-2024-11-20 chatgpt-4o-latest gpt-4o-mini "
    "gpt-4o-mini-2024-07-18 gpt-4-vision-preview gpt-4-turbo-2024-04-09 "
    "gpt-4-1106-preview dall-e-3 o1-mini o1-preview o3-mini".split()
)
IMAGE_URL = "https://example.invalid/img.png"


@dataclass(frozen=True)
class CdpSettings:
    discord_api_base: str
    guild_id: int | str
    token: str = "sim-token"  # BOT_TOKEN
    # USER_AUTHORIZATION (the Discord simulator's default user token by default)
    user_tokens: tuple[str, ...] = ("sim-user-token",)
    coze_bot_id: str = COZE_BOT_ID  # COZE_BOT_ID
    time_scale: float = 1.0  # divides every CDP timer
    attempt_timeout: float = 60.0  # CreateChannelWithRetry, per attempt
    attempts: int = 3
    http_timeout: float = 20.0  # discordgo's http.Client
    auto_delete: float | None = None  # CHANNEL_AUTO_DEL_TIME; None: 5 s; <= 0 never
    request_out_time: float | None = None  # REQUEST_OUT_TIME; None: 300 s
    stream_request_out_time: float | None = None  # STREAM_REQUEST_OUT_TIME
    max_channel_del_type: str = ""  # MAX_CHANNEL_DEL_TYPE: ALL | OLDEST | ""
    default_channel_enable: str = ""  # DEFAULT_CHANNEL_ENABLE; only "1" counts
    channel_id: str = ""  # CHANNEL_ID
    stay_active_enable: str = ""  # COZE_BOT_STAY_ACTIVE_ENABLE; "" or "1": on
    request_rate_limit: int = 60  # REQUEST_RATE_LIMIT, per client IP per minute
    proxy_secret: str | None = None  # PROXY_SECRET, comma-separated secrets
    only_openai_api: bool = False  # ONLY_OPENAI_API=1
    fatal: str | None = None  # a startup FatalLog found while reading the environment
    # Coze's reply over the emulator's own gateway session, from the simulator's Coze
    # persona; False: the emulator plays Coze itself (a simulator without the persona)
    gateway: bool = False
    reply_delay: float = 0.5  # the Coze bot thinking (when the emulator plays Coze)
    stream_chunks: int = 5  # edits of Coze's reply
    stream_chunk_delay: float = 0.05
    restart_delay: float = 1.0  # `restart: always`: seconds before the new process
    log_dir: Path | None = None  # --log-dir: <dir>/log-<start date>.log
    log_path: Path | None = None  # one fixed file as well (the demo tails it)
    echo: bool = False  # write lines to this process's stdout/stderr, as CDP does
    seed: int = 0
    log_capacity: int = 10_000  # lines kept in memory

    def __post_init__(self) -> None:
        problems = []
        if self.attempts < 1:
            problems.append("attempts must be at least 1")
        if self.attempt_timeout <= 0 or self.time_scale <= 0:
            problems.append("attempt_timeout and time_scale must be positive")
        if self.stream_chunks < 1:
            problems.append("stream_chunks must be at least 1")
        if self.reply_delay < 0 or self.stream_chunk_delay < 0 or self.restart_delay < 0:
            problems.append("delays must not be negative")
        if self.log_capacity < 1 or self.request_rate_limit < 0:
            problems.append("log_capacity must be at least 1, request_rate_limit >= 0")
        if not str(self.guild_id).isdigit():
            problems.append("guild_id must be a snowflake")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def for_simulator(cls, sim: Any, **overrides: Any) -> CdpSettings:
        """Settings that talk to a Discord simulator (`DiscordSimulator`, duck-typed): its
        bot token and, when it has them, its user tokens and Coze persona, whose replies
        then arrive over the emulator's own gateway session."""
        values: dict[str, Any] = {
            "discord_api_base": sim.api_base,
            "guild_id": sim.settings.guild_id,
            "token": sim.settings.token,
        }
        user_tokens = getattr(sim.settings, "user_tokens", None)
        if user_tokens and hasattr(sim.settings, "coze_bot_id"):
            values.update(
                user_tokens=tuple(user_tokens),
                coze_bot_id=str(sim.settings.coze_bot_id),
                gateway=True,
            )
        values.update(overrides)
        return cls(**values)

    def scaled(self, seconds: float) -> float:
        """A CDP duration as the emulator waits it."""
        return seconds / self.time_scale

    @property
    def secrets(self) -> frozenset[str]:
        # config.go:11: split on ",", so "a," also admits the empty secret.
        if not self.proxy_secret:
            return frozenset()
        return frozenset(self.proxy_secret.split(","))

    @property
    def user_auths(self) -> tuple[str, ...]:
        return tuple(t for t in self.user_tokens if t)

    @property
    def default_channel(self) -> bool:
        return self.default_channel_enable == "1"

    @property
    def stay_active(self) -> bool:
        return self.stay_active_enable in ("", "1")

    def with_env(self, env: Mapping[str, str]) -> CdpSettings:
        """These settings overridden by CDP's own environment variables in `env`."""
        changes: dict[str, Any] = {}
        fatal = None
        if "USER_AUTHORIZATION" in env:
            changes["user_tokens"] = tuple(env["USER_AUTHORIZATION"].split(","))
        for key, name in (("COZE_BOT_ID", "coze_bot_id"), ("CHANNEL_ID", "channel_id")):
            if key in env:
                changes[name] = env[key]
        for key, name in (
            ("MAX_CHANNEL_DEL_TYPE", "max_channel_del_type"),
            ("DEFAULT_CHANNEL_ENABLE", "default_channel_enable"),
            ("COZE_BOT_STAY_ACTIVE_ENABLE", "stay_active_enable"),
        ):
            changes[name] = env.get(key, "")
        if env.get("PROXY_SECRET"):
            changes["proxy_secret"] = env["PROXY_SECRET"]
        changes["only_openai_api"] = env.get("ONLY_OPENAI_API") == "1"
        if env.get("REQUEST_RATE_LIMIT", "").strip():
            changes["request_rate_limit"] = _go_int(env["REQUEST_RATE_LIMIT"], 60)
        if env.get("CHANNEL_AUTO_DEL_TIME", ""):
            try:
                changes["auto_delete"] = float(int(env["CHANNEL_AUTO_DEL_TIME"]))
            except ValueError:
                fatal = "环境变量 CHANNEL_AUTO_DEL_TIME 设置有误"  # discord.go:238-243
        for key, name in (
            ("REQUEST_OUT_TIME", "request_out_time"),
            ("STREAM_REQUEST_OUT_TIME", "stream_request_out_time"),
        ):
            if env.get(key, ""):
                changes[name] = _out_time(env[key])
        changes["fatal"] = fatal
        return replace(self, **changes)


def _go_int(text: str, default: int) -> int:
    # common/env/helper.go: a value that does not parse falls back to the default.
    try:
        return int(text)
    except ValueError:
        return default


def _out_time(text: str) -> float:
    # A value that does not parse makes every request answer 400 (chat.go:323-330);
    # NaN carries that to the handler.
    try:
        return float(int(text))
    except ValueError:
        return float("nan")


def go_json(value: Any) -> bytes:
    """`encoding/json` output: no spaces, raw UTF-8, `<>&` escaped as Go does."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class ApiError(Exception):
    """An answer a handler gives instead of its normal one (status and JSON body)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body))


def request_error(message: str, status: int = 500) -> ApiError:
    """model.OpenAIErrorResponse as CDP fills it for its 500s."""
    return ApiError(
        status,
        {"error": {"message": message, "type": "request_error", "param": "", "code": "500"}},
    )


def api_failure(message: str, status: int = 200) -> ApiError:
    """gin.H{"success": false, "message": ...}: keys sorted, as Go marshals a map."""
    return ApiError(status, {"message": message, "success": False})


CREATE_FAILED = "config error,check logs"  # chat.go:172-188, any creation failure


@dataclass
class Stats:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    requests_in_flight: int = 0
    creates_in_flight: int = 0
    max_concurrent_creates: int = 0
    create_attempts: int = 0
    create_timeouts: int = 0
    create_errors: int = 0
    channels_created: int = 0
    late_channels: int = 0
    late_channel_ids: list[str] = field(default_factory=list)
    channels_deleted: int = 0
    delete_failures: int = 0
    prompts_sent: int = 0
    restarts: int = 0
    dropped_requests: int = 0
    killed_creates: int = 0
    lost_delete_timers: int = 0
