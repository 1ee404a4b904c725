"""The CDP emulator's settings and constants, the counters it keeps, and the error a
handler raises (answered as JSON by the middleware)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# discordgo v0.27.1 is what CDP links; Discord sees this User-Agent from CDP.
DISCORDGO_USER_AGENT = "DiscordBot (https://github.com/bwmarrin/discordgo, v0.27.1)"
MAX_MESSAGE_LEN = 2000
IMAGE_URL = "https://example.invalid/img.png"
MODELS = ("gpt-4o", "gpt-4o-mini", "dall-e-3")
ID_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
LIMIT_CODE = 30013
MAX_429_RETRIES = 20  # discordgo retries 429s forever; a bound keeps stop() prompt
MAX_502_RETRIES = 3  # discordgo's MaxRestRetries
# The current request's id, set by the middleware (a ContextVar works with every


@dataclass(frozen=True)
class CdpSettings:
    discord_api_base: str
    guild_id: int | str
    token: str = "sim-token"
    attempt_timeout: float = 60.0  # per CreateChannelWithRetry attempt
    attempts: int = 3
    reply_delay: float = 0.5  # the Coze bot thinking
    auto_delete: float = 5.0  # CHANNEL_AUTO_DEL_TIME; <= 0 never deletes
    default_channel_enable: bool = False  # DEFAULT_CHANNEL_ENABLE=1
    default_channel_id: str | None = None  # CHANNEL_ID; None: create `cdp-default` once
    proxy_secret: str | None = None  # PROXY_SECRET, comma-separated secrets
    stream_chunks: int = 5
    stream_chunk_delay: float = 0.05
    log_path: Path | None = None
    seed: int = 0
    # discordgo holds a per-bucket mutex across each HTTP request, which serializes
    # creates per guild (a hung create blocks the next ones): off by default so
    # concurrency shows up in `max_concurrent_creates`.
    bucket_lock: bool = False
    http_timeout: float = 0.0  # discordgo's http.Client timeout is 20 s; <= 0 none
    log_capacity: int = 10_000  # lines kept in memory

    def __post_init__(self) -> None:
        problems = []
        if self.attempts < 1:
            problems.append("attempts must be at least 1")
        if self.attempt_timeout <= 0:
            problems.append("attempt_timeout must be positive")
        if self.stream_chunks < 1:
            problems.append("stream_chunks must be at least 1")
        if self.reply_delay < 0 or self.stream_chunk_delay < 0:
            problems.append("delays must not be negative")
        if self.log_capacity < 1:
            problems.append("log_capacity must be at least 1")
        if not str(self.guild_id).isdigit():
            problems.append("guild_id must be a snowflake")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def secrets(self) -> frozenset[str]:
        if not self.proxy_secret:
            return frozenset()
        return frozenset(s for s in self.proxy_secret.split(",") if s)


class ApiError(Exception):
    """An error answer a handler gives (turned into JSON by the middleware)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body))


def openai_error(
    status: int, message: str, type_: str = "invalid_request_error", code: str | None = None
) -> ApiError:
    return ApiError(
        status, {"error": {"message": message, "type": type_, "code": code or str(status)}}
    )


@dataclass
class Stats:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    requests_in_flight: int = 0
    creates_in_flight: int = 0
    max_concurrent_creates: int = 0
    create_attempts: int = 0
    create_timeouts: int = 0
    channels_created: int = 0
    late_channels: int = 0
    late_channel_ids: list[str] = field(default_factory=list)
    channels_deleted: int = 0
    delete_failures: int = 0
