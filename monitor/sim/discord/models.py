"""The Discord simulator's model: settings, fault settings, channels, messages, the
error a handler raises, and `SimState` (everything the simulator knows)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from monitor.discord.snowflake import snowflake_time

API_PREFIX = "/api/v10"
API_PREFIXES = ("/api/v9", "/api/v10")  # both versions serve the same routes here
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Channel types (Discord): text, voice, category, announcement, threads, stage, forum.
GUILD_LISTED_TYPES = frozenset({0, 2, 4, 5, 13, 15})
THREAD_TYPES = frozenset({10, 11, 12})
CREATABLE_TYPES = frozenset({0, 2, 4, 5, 13, 15})


@dataclass(frozen=True)
class RouteLimit:
    """A per-route bucket: `limit` requests per `per` seconds, keyed by major parameter."""

    bucket: str
    limit: int
    per: float


# Routes sharing a bucket name share their counters (GET and POST guild channels do,
# which is why the monitor must list channels sparingly: it spends CDP's create budget).
DEFAULT_ROUTE_LIMITS: dict[str, RouteLimit] = {
    "GET /gateway": RouteLimit("a1b2c3d4e5f60718293a4b5c6d7e8f90", 10, 1.0),
    "GET /gateway/bot": RouteLimit("0f1e2d3c4b5a69788796a5b4c3d2e1f0", 5, 5.0),
    "GET /users/@me": RouteLimit("9a8b7c6d5e4f30211203f4e5d6c7b8a9", 5, 1.0),
    "GET /guilds/{guild_id}/channels": RouteLimit("5c1f2e3d4c5b6a7988796a5b4c3d2e1f", 10, 2.0),
    "POST /guilds/{guild_id}/channels": RouteLimit("5c1f2e3d4c5b6a7988796a5b4c3d2e1f", 10, 2.0),
    "GET /channels/{channel_id}": RouteLimit("7e6d5c4b3a2918070f1e2d3c4b5a6978", 5, 1.0),
    "DELETE /channels/{channel_id}": RouteLimit("1a2b3c4d5e6f708192a3b4c5d6e7f809", 5, 1.0),
    "GET /channels/{channel_id}/messages": RouteLimit("2b3c4d5e6f708192a3b4c5d6e7f8091a", 5, 1.0),
    "POST /channels/{channel_id}/messages": RouteLimit("3c4d5e6f708192a3b4c5d6e7f8091a2b", 5, 5.0),
}


@dataclass(frozen=True)
class SimSettings:
    guild_id: int = 1_100_000_000_000_000_001
    token: str = "sim-token"
    channel_limit: int = 500
    global_limit: int = 50  # requests per second per bot, as Discord
    route_limits: dict[str, RouteLimit] = field(default_factory=lambda: dict(DEFAULT_ROUTE_LIMITS))
    seed: int = 0
    heartbeat_interval_ms: int = 41_250
    session_start_total: int = 1000
    bot_user_id: int = 1_100_000_000_000_000_100  # also the application id, as Discord's
    # Users who may post in the guild with `Authorization: <token>` (CDP's USER_AUTHORIZATION).
    user_tokens: tuple[str, ...] = ("sim-user-token",)
    coze_bot_id: int = 1_100_000_000_000_000_400  # the Coze bot persona's user id
    coze_reply_length: int = 60  # characters of a Coze answer
    coze_edits: int = 3  # MESSAGE_UPDATEs streaming it
    coze_components_as_edit: bool = False  # final buttons as the last edit, not a new message
    daily_channel_create_cap: int | None = None  # Discord's ~500/guild/day; off by default
    invalid_request_limit: int | None = None  # Discord: 10_000 per 10 minutes; off by default
    invalid_request_window_s: float = 600.0
    invalid_request_ban_s: float = 3600.0  # Cloudflare bans for about an hour
    max_concurrency: int = 1  # IDENTIFYs per `identify_spacing_s` (Discord: 5 s)
    identify_spacing_s: float = 5.0
    # Privileged intents the bot is allowed (the developer portal's switches): message
    # content only, which is not modelled (content is always sent). Members (1 << 1) and
    # presences (1 << 8) without permission close with 4014, as Discord does.
    allowed_privileged_intents: int = 1 << 15
    gateway_send_limit: int = 120  # client payloads per 60 s before 4008


@dataclass
class RestFaults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    timeout_rate: float = 0.0
    hang_ms: float = 60_000.0  # how long a "timed out" request is held before answering
    reset_rate: float = 0.0
    malformed_rate: float = 0.0  # 200 with a truncated JSON body
    shared_429_rate: float = 0.0  # 429 with scope "shared" (another app's load)
    shared_429_retry_after: float = 1.0  # seconds; Discord has sent 1336.57
    forbidden_rate: float = 0.0  # 403 with `forbidden_code`
    forbidden_code: int = 50013  # 50001 Missing Access or 50013 Missing Permissions
    cloudflare_ban_s: float = 0.0  # > 0: every REST route banned that long (error 1015)
    omit_last_message_id: bool = False  # channel listings without `last_message_id`
    routes: tuple[str, ...] = ()  # empty: every route; else "METHOD /template" keys


@dataclass
class GatewayFaults:
    refuse: bool = False
    hello_delay_ms: float = 0.0
    ack_delay_ms: float = 0.0
    drop_ack: bool = False
    close_code: int | None = None
    reconnect: bool = False  # op 7 right after READY / RESUMED
    invalid_session: bool = False  # op 9 (d: false) instead of READY / RESUMED


@dataclass
class CozeFaults:
    delay_ms: float = 0.0  # before the Coze persona starts answering
    silence: bool = False  # it never answers
    error: bool = False  # it answers with an error text


@dataclass
class Message:
    id: int
    content: str
    author_id: int
    author_name: str
    bot: bool = False
    reference: int | None = None  # the message this one replies to
    components: list[dict[str, Any]] = field(default_factory=list)
    edited_at: float | None = None


@dataclass
class Channel:
    id: int
    guild_id: int
    name: str
    type: int
    position: int
    parent_id: int | None = None
    messages: list[Message] = field(default_factory=list)

    @property
    def last_message_id(self) -> int | None:
        return self.messages[-1].id if self.messages else None


class SimError(Exception):
    """An answer the simulator gives as a Discord error (raised inside handlers)."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        super().__init__(message)


def inner_errors(code: str, message: str) -> dict[str, Any]:
    # Discord sends string codes here (its OpenAPI description says integer; the wire wins).
    return {"_errors": [{"code": code, "message": message}]}


def form_error(field_name: str, code: str, message: str) -> SimError:
    return SimError(400, 50035, "Invalid Form Body", {field_name: inner_errors(code, message)})


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class Bucket:
    count: int = 0
    reset_at: float = 0.0  # monotonic


class SimState:
    """Everything the simulator knows; tests may inspect it directly."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.channels: dict[int, Channel] = {}
        self.requests: Counter[tuple[str, int]] = Counter()  # (route key, status)
        self.ratelimited: Counter[str] = Counter()  # scope -> 429s
        self.invalid_requests = 0
        self.request_log: deque[tuple[float, str, int]] = deque(maxlen=20_000)
        self.gateway: Counter[str] = Counter()
        self.gateway_close_codes: Counter[int] = Counter()
        self.session_starts_used = 0
        self.rest_faults = RestFaults()
        self.gateway_faults = GatewayFaults()
        self.coze_faults = CozeFaults()
        self.banned_until = 0.0  # monotonic; a Cloudflare ban lasts until then
        self.invalid_times: deque[float] = deque()  # monotonic times of invalid requests
        self.creates_today: deque[float] = deque()  # times of channel creates (daily cap)
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.global_window: deque[float] = deque()
        self.increment = 0

    def busiest_second(self, since: int = 0) -> int:
        """Most requests in any 1 s window (the global limit's own rule), counting the
        request log from entry `since` on."""
        times = [t for t, _route, _status in list(self.request_log)[since:]]
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while times[lo] <= t - 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def snapshot(self) -> dict[str, Any]:
        by_route: dict[str, dict[str, int]] = {}
        for (route, status), n in sorted(self.requests.items()):
            by_route.setdefault(route, {})[str(status)] = n
        return {
            "guild_id": str(self.settings.guild_id),
            "channel_limit": self.settings.channel_limit,
            "channels": [
                {
                    "id": str(c.id),
                    "name": c.name,
                    "type": c.type,
                    "parent_id": None if c.parent_id is None else str(c.parent_id),
                    "message_count": len(c.messages),
                    "last_message_id": None
                    if c.last_message_id is None
                    else str(c.last_message_id),
                    "created_at": snowflake_time(c.id),
                }
                for c in self.channels.values()
            ],
            "requests": by_route,
            "total_requests": sum(self.requests.values()),
            "ratelimited": dict(self.ratelimited),
            "invalid_requests": self.invalid_requests,
            "gateway": {
                "connections": self.gateway["connections"],
                "identifies": self.gateway["identifies"],
                "heartbeats": self.gateway["heartbeats"],
                "acks": self.gateway["acks"],
                "refused": self.gateway["refused"],
                "resumes": self.gateway["resumes"],
                "close_codes": {str(k): v for k, v in self.gateway_close_codes.items()},
            },
        }
