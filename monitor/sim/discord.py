"""Discord simulator: REST (under /api/v10), gateway websocket, rate limits, faults.

Faithful to what Discord documents where cdp-monitor depends on it: `Bot` token auth,
snowflake ids carrying creation time, lowercased channel names, the 500-channel limit
(code 30013), 404 code 10003, per-route buckets keyed by bucket + major parameter with
`X-RateLimit-*` headers, a global per-second limit, 429 bodies with `retry_after` and
`global` plus `X-RateLimit-Scope`, and counting of invalid (401/403/429) requests.

    sim = DiscordSimulator(SimSettings(guild_id=..., token="sim-token"))
    await sim.start("127.0.0.1", 0)      # 0 = a free port
    sim.api_base, sim.gateway_url, sim.admin_url
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.discord.snowflake import make_snowflake, snowflake_time
from monitor.httpserve import start_site

API_PREFIX = "/api/v10"
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
    bot_user_id: int = 1_100_000_000_000_000_100


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
    routes: tuple[str, ...] = ()  # empty: every route; else "METHOD /template" keys


@dataclass
class GatewayFaults:
    refuse: bool = False
    hello_delay_ms: float = 0.0
    ack_delay_ms: float = 0.0
    drop_ack: bool = False
    close_code: int | None = None


@dataclass
class Message:
    id: int
    content: str
    author_id: int
    author_name: str


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


def _inner_errors(code: str, message: str) -> dict[str, Any]:
    # Discord sends string codes here, but its OpenAPI description types `code` as an
    # integer; we follow the description and keep Discord's string code in the message.
    return {"_errors": [{"code": 50035, "message": f"{code}: {message}"}]}


def _form_error(field_name: str, code: str, message: str) -> SimError:
    return SimError(400, 50035, "Invalid Form Body", {field_name: _inner_errors(code, message)})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass
class _Bucket:
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
        self.buckets: dict[tuple[str, str], _Bucket] = {}
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
                "close_codes": {str(k): v for k, v in self.gateway_close_codes.items()},
            },
        }


class DiscordSimulator:
    def __init__(self, settings: SimSettings | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings or SimSettings()
        self.clock = clock
        self.state = SimState(self.settings)
        self.random = random.Random(self.settings.seed)
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.host = ""
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.port = await start_site(self.app, host, port)
        self.host = host

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/_sim"

    def urls(self) -> dict[str, str]:
        return {
            "api_base": self.api_base,
            "gateway_url": self.gateway_url,
            "admin_url": self.admin_url,
            "guild_id": str(self.settings.guild_id),
            "token": self.settings.token,
        }

    # -- model helpers (also used by the admin API) ----------------------------------

    def new_id(self, at: float | None = None) -> int:
        self.state.increment = (self.state.increment + 1) & 0xFFF
        return make_snowflake(
            self.clock.time() if at is None else at, worker=1, increment=self.state.increment
        )

    def guild_channels(self, guild_id: int) -> list[Channel]:
        return [c for c in self.state.channels.values() if c.guild_id == guild_id]

    def add_channel(
        self,
        name: str,
        type_: int = 0,
        *,
        age_seconds: float = 0.0,
        parent_id: int | None = None,
    ) -> Channel:
        guild_id = self.settings.guild_id
        listed = [c for c in self.guild_channels(guild_id) if c.type not in THREAD_TYPES]
        if type_ not in THREAD_TYPES and len(listed) >= self.settings.channel_limit:
            raise SimError(
                400,
                30013,
                f"Maximum number of guild channels reached ({self.settings.channel_limit})",
            )
        created = self.clock.time() - max(0.0, age_seconds)
        if type_ in (0, 5):  # Discord normalises text channel names
            name = name.lower().replace(" ", "-")
        channel = Channel(
            id=self.new_id(created),
            guild_id=guild_id,
            name=name,
            type=type_,
            position=len(listed),
            parent_id=parent_id,
        )
        self.state.channels[channel.id] = channel
        return channel

    def add_message(self, channel: Channel, content: str, *, author: str = "someone") -> Message:
        author_id = self.settings.bot_user_id if author == "bot" else 1_100_000_000_000_000_200
        msg = Message(self.new_id(), content, author_id, author)
        channel.messages.append(msg)
        return msg

    def channel_json(self, c: Channel) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(c.id),
            "type": c.type,
            "flags": 0,
            "guild_id": str(c.guild_id),
            "name": c.name,
            "parent_id": None if c.parent_id is None else str(c.parent_id),
            "position": c.position,
            "permission_overwrites": [],
        }
        if c.type in (0, 5, 15):
            out.update(
                last_message_id=None if c.last_message_id is None else str(c.last_message_id),
                topic=None,
                nsfw=False,
                rate_limit_per_user=0,
            )
        if c.type in (2, 13):
            out.update(bitrate=64000, user_limit=0, rtc_region=None)
        return out

    def message_json(self, m: Message, channel_id: int) -> dict[str, Any]:
        return {
            "type": 0,
            "content": m.content,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "timestamp": _iso(snowflake_time(m.id)),
            "edited_timestamp": None,
            "flags": 0,
            "components": [],
            "id": str(m.id),
            "channel_id": str(channel_id),
            "author": self._user_json(m.author_id, m.author_name),
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
        }

    def _user_json(self, user_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name,
            "avatar": None,
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "global_name": None,
            "primary_guild": None,
        }

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._discord_middleware])
        r = app.router
        r.add_get(API_PREFIX + "/gateway", self._get_gateway)
        r.add_get(API_PREFIX + "/gateway/bot", self._get_gateway_bot)
        r.add_get(API_PREFIX + "/users/@me", self._get_me)
        r.add_get(API_PREFIX + "/guilds/{guild_id}/channels", self._list_channels)
        r.add_post(API_PREFIX + "/guilds/{guild_id}/channels", self._create_channel)
        r.add_get(API_PREFIX + "/channels/{channel_id}", self._get_channel)
        r.add_delete(API_PREFIX + "/channels/{channel_id}", self._delete_channel)
        r.add_get(API_PREFIX + "/channels/{channel_id}/messages", self._list_messages)
        r.add_post(API_PREFIX + "/channels/{channel_id}/messages", self._post_message)
        r.add_get("/gateway", self._gateway_ws)
        r.add_get("/gateway/", self._gateway_ws)
        r.add_get("/_sim/state", self._admin_state)
        r.add_get("/_sim/faults", self._admin_get_faults)
        r.add_put("/_sim/faults", self._admin_put_faults)
        r.add_delete("/_sim/faults", self._admin_clear_faults)
        r.add_post("/_sim/guilds/{guild_id}/channels", self._admin_seed)
        r.add_post("/_sim/channels/{channel_id}/messages", self._admin_message)
        r.add_get("/_sim/requests", self._admin_requests)
        return app

    # -- the Discord-behaviour middleware --------------------------------------------

    @web.middleware
    async def _discord_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        route = self._route_key(request)
        if route is None:
            return self._finish(
                "unrouted", _error_response(404, 0, "404: Not Found"), rate_headers={}
            )
        faults = self.state.rest_faults
        faulted = not faults.routes or route in faults.routes
        if faulted and faults.reset_rate and self.random.random() < faults.reset_rate:
            self._record(route, 0)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # the connection is gone; nothing to answer
        delay = 0.0
        if faulted:
            delay = faults.latency_ms + (faults.jitter_ms * self.random.random())
            if faults.timeout_rate and self.random.random() < faults.timeout_rate:
                delay = faults.hang_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)

        if route != "GET /gateway" and not self._authorized(request):
            return self._finish(route, _error_response(401, 0, "401: Unauthorized"), {})

        now = self.clock.monotonic()
        limited = self._check_global(now)
        if limited is not None:
            return self._finish(route, limited, {})
        rate_headers, limited = self._check_bucket(route, request, now)
        if limited is not None:
            return self._finish(route, limited, rate_headers)
        if faulted and faults.shared_429_rate and self.random.random() < faults.shared_429_rate:
            return self._finish(
                route, _ratelimited(1.0, is_global=False, scope="shared"), rate_headers
            )
        if faulted and faults.error_rate and self.random.random() < faults.error_rate:
            return self._finish(route, _server_error(faults.error_status), rate_headers)
        if faulted and faults.malformed_rate and self.random.random() < faults.malformed_rate:
            return self._finish(
                route,
                web.Response(status=200, text='{"id": "1', content_type="application/json"),
                rate_headers,
            )
        try:
            response = await handler(request)
        except SimError as exc:
            response = _error_response(exc.status, exc.code, exc.message, exc.errors)
        return self._finish(route, response, rate_headers)

    def _route_key(self, request: web.Request) -> str | None:
        resource = request.match_info.route.resource
        if resource is None or not resource.canonical.startswith(API_PREFIX):
            return None
        return f"{request.method} {resource.canonical[len(API_PREFIX) :]}"

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bot {self.settings.token}"

    def _check_global(self, now: float) -> web.Response | None:
        window = self.state.global_window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.settings.global_limit:
            retry_after = max(0.001, window[0] + 1.0 - now)
            return _ratelimited(retry_after, is_global=True, scope="global")
        window.append(now)
        return None

    def _check_bucket(
        self, route: str, request: web.Request, now: float
    ) -> tuple[dict[str, str], web.Response | None]:
        limit = self.settings.route_limits.get(route)
        if limit is None:
            return {}, None
        major = request.match_info.get("guild_id") or request.match_info.get("channel_id") or ""
        bucket = self.state.buckets.setdefault((limit.bucket, major), _Bucket())
        if now >= bucket.reset_at:
            bucket.count = 0
            bucket.reset_at = now + limit.per
        reset_after = max(0.0, bucket.reset_at - now)
        limited = None
        if bucket.count >= limit.limit:
            limited = _ratelimited(reset_after, is_global=False, scope="user")
        else:
            bucket.count += 1
        headers = {
            "X-RateLimit-Limit": str(limit.limit),
            "X-RateLimit-Remaining": str(limit.limit - bucket.count),
            "X-RateLimit-Reset": f"{self.clock.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": limit.bucket,
        }
        return headers, limited

    def _finish(
        self, route: str, response: web.StreamResponse, rate_headers: dict[str, str]
    ) -> web.StreamResponse:
        response.headers.update(rate_headers)
        status = response.status
        self._record(route, status)
        if status in (401, 403) or (
            status == 429 and response.headers.get("X-RateLimit-Scope") != "shared"
        ):
            self.state.invalid_requests += 1
        if status == 429:
            self.state.ratelimited[response.headers.get("X-RateLimit-Scope", "user")] += 1
        return response

    def _record(self, route: str, status: int) -> None:
        self.state.requests[(route, status)] += 1
        self.state.request_log.append((self.clock.monotonic(), route, status))

    # -- REST handlers -----------------------------------------------------------------

    def _guild(self, request: web.Request) -> int:
        guild_id = _snowflake_param(request, "guild_id")
        if guild_id != self.settings.guild_id:
            raise SimError(404, 10004, "Unknown Guild")
        return guild_id

    def _channel(self, request: web.Request) -> Channel:
        channel = self.state.channels.get(_snowflake_param(request, "channel_id"))
        if channel is None:
            raise SimError(404, 10003, "Unknown Channel")
        return channel

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return web.json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        total = self.settings.session_start_total
        return web.json_response(
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": total,
                    "remaining": max(0, total - self.state.session_starts_used),
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        user = self._user_json(self.settings.bot_user_id, "cdp-bot")
        user.update(bot=True, mfa_enabled=False, locale="en-US")
        return web.json_response(user)

    async def _list_channels(self, request: web.Request) -> web.Response:
        guild_id = self._guild(request)
        channels = [
            self.channel_json(c)
            for c in self.guild_channels(guild_id)
            if c.type in GUILD_LISTED_TYPES
        ]
        return web.json_response(channels)

    async def _create_channel(self, request: web.Request) -> web.Response:
        self._guild(request)
        body = await _json_object(request)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise _form_error(
                "name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        type_ = body.get("type", 0)
        if type_ is None:
            type_ = 0
        if not isinstance(type_, int) or isinstance(type_, bool) or type_ not in CREATABLE_TYPES:
            raise _form_error(
                "type", "BASE_TYPE_CHOICES", f"Value must be one of {sorted(CREATABLE_TYPES)}."
            )
        parent = body.get("parent_id")
        parent_id = None
        if parent is not None:
            try:
                parent_id = int(parent)
            except (TypeError, ValueError):
                raise _form_error(
                    "parent_id", "NUMBER_TYPE_COERCE", "Value is not snowflake."
                ) from None
        channel = self.add_channel(name, type_, parent_id=parent_id)
        return web.json_response(self.channel_json(channel), status=201)

    async def _get_channel(self, request: web.Request) -> web.Response:
        return web.json_response(self.channel_json(self._channel(request)))

    async def _delete_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        del self.state.channels[channel.id]
        return web.json_response(self.channel_json(channel))

    async def _list_messages(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        raw = request.query.get("limit", "50")
        try:
            limit = int(raw)
        except ValueError:
            raise _form_error("limit", "NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.') from None
        if not 1 <= limit <= 100:
            raise _form_error("limit", "NUMBER_TYPE_MAX", "Int value should be between 1 and 100.")
        newest_first = list(reversed(channel.messages))[:limit]
        return web.json_response([self.message_json(m, channel.id) for m in newest_first])

    async def _post_message(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        body = await _json_object(request)
        content = body.get("content", "")
        if not isinstance(content, str) or len(content) > 2000:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        if not content:
            raise SimError(400, 50006, "Cannot send an empty message")
        msg = self.add_message(channel, content, author="bot")
        return web.json_response(self.message_json(msg, channel.id))

    # -- gateway -----------------------------------------------------------------------

    async def _gateway_ws(self, request: web.Request) -> web.StreamResponse:
        faults = self.state.gateway_faults
        if faults.refuse:
            self.state.gateway["refused"] += 1
            return web.Response(status=503, text="upstream connect error")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.state.gateway["connections"] += 1
        try:
            await self._gateway_session(ws, faults)
        finally:
            self._sockets.discard(ws)
        return ws

    async def _gateway_session(self, ws: web.WebSocketResponse, faults: GatewayFaults) -> None:
        if faults.hello_delay_ms:
            await asyncio.sleep(faults.hello_delay_ms / 1000.0)
        if faults.close_code is not None:
            self.state.gateway_close_codes[faults.close_code] += 1
            await ws.close(code=faults.close_code, message=b"simulated close")
            return
        await ws.send_json(
            {
                "op": 10,
                "d": {"heartbeat_interval": self.settings.heartbeat_interval_ms},
                "s": None,
                "t": None,
            }
        )
        seq = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                payload = json.loads(msg.data)
                op = payload["op"]
            except (ValueError, KeyError, TypeError):
                self.state.gateway_close_codes[4002] += 1
                await ws.close(code=4002, message=b"Error while decoding payload.")
                return
            if op == 1:
                self.state.gateway["heartbeats"] += 1
                if faults.drop_ack:
                    continue
                if faults.ack_delay_ms:
                    await asyncio.sleep(faults.ack_delay_ms / 1000.0)
                self.state.gateway["acks"] += 1
                await ws.send_json({"op": 11})
            elif op == 2:
                self.state.gateway["identifies"] += 1
                self.state.session_starts_used += 1
                seq += 1
                await ws.send_json(
                    {
                        "op": 0,
                        "t": "READY",
                        "s": seq,
                        "d": {
                            "v": 10,
                            "user": self._user_json(self.settings.bot_user_id, "cdp-bot"),
                            "guilds": [{"id": str(self.settings.guild_id), "unavailable": True}],
                            "session_id": f"sim-{self.state.session_starts_used}",
                            "resume_gateway_url": self.gateway_url,
                        },
                    }
                )
            else:
                self.state.gateway_close_codes[4001] += 1
                await ws.close(code=4001, message=b"Unknown opcode.")
                return

    # -- admin API ---------------------------------------------------------------------

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    async def _admin_requests(self, request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "-inf"))
        except ValueError:
            return web.json_response({"error": "since must be a number"}, status=400)
        rows = [
            {"t": t, "route": route, "status": status}
            for t, route, status in self.state.request_log
            if t >= since
        ]
        return web.json_response({"now": self.clock.monotonic(), "requests": rows})

    async def _admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults_json())

    def _faults_json(self) -> dict[str, Any]:
        rest = dict(self.state.rest_faults.__dict__)
        rest["routes"] = list(rest["routes"])
        return {"rest": rest, "gateway": dict(self.state.gateway_faults.__dict__)}

    async def _admin_put_faults(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            rest = body.pop("rest", None) or {}
            gateway = body.pop("gateway", None) or {}
            if body:
                raise ValueError(f"unknown keys: {sorted(body)}")
            if "routes" in rest:
                rest["routes"] = tuple(rest["routes"])
            # Build both before swapping so a bad body changes nothing.
            new_rest = RestFaults(**{**self.state.rest_faults.__dict__, **rest})
            new_gw = GatewayFaults(**{**self.state.gateway_faults.__dict__, **gateway})
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.state.rest_faults, self.state.gateway_faults = new_rest, new_gw
        return web.json_response(self._faults_json())

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.state.rest_faults = RestFaults()
        self.state.gateway_faults = GatewayFaults()
        return web.json_response(self._faults_json())

    async def _admin_seed(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        try:
            guild_id = int(request.match_info["guild_id"])
            if guild_id != self.settings.guild_id:
                raise ValueError("unknown guild")
            count = int(body.get("count", 1))
            prefix = str(body.get("prefix", "cdp-chat-"))
            messages = int(body.get("messages", 0))
            age = float(body.get("age_seconds", 0))
            type_ = int(body.get("type", 0))
            names = body.get("names")
            if names is not None and (not isinstance(names, list) or len(names) != count):
                raise ValueError("names must be a list of `count` strings")
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        created: list[str] = []
        try:
            for i in range(count):
                name = str(names[i]) if names else f"{prefix}{self.random.getrandbits(48):012x}"
                channel = self.add_channel(name, type_, age_seconds=age)
                for j in range(messages):
                    self.add_message(channel, f"seeded message {j}")
                created.append(str(channel.id))
        except SimError as exc:
            return web.json_response(
                {"error": exc.message, "code": exc.code, "channels": created}, status=exc.status
            )
        return web.json_response({"channels": created})

    async def _admin_message(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        raw = request.match_info["channel_id"]
        channel = self.state.channels.get(int(raw)) if raw.isdigit() else None
        if channel is None:
            return web.json_response({"error": "unknown channel"}, status=404)
        msg = self.add_message(
            channel, str(body.get("content", "hello")), author=str(body.get("author", "someone"))
        )
        return web.json_response(self.message_json(msg, channel.id))


def _snowflake_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise _form_error(name, "NUMBER_TYPE_COERCE", f'Value "{raw}" is not snowflake.')
    return int(raw)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise SimError(
            400,
            50035,
            "Invalid Form Body",
            _inner_errors("JSON_INVALID", "The request body contains invalid JSON."),
        ) from None
    if not isinstance(body, dict):
        raise SimError(
            400,
            50035,
            "Invalid Form Body",
            _inner_errors("DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"),
        )
    return body


async def _admin_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "invalid JSON"}', content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text='{"error": "body must be an object"}', content_type="application/json"
        )
    return body


def _error_response(
    status: int, code: int, message: str, errors: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return web.json_response(body, status=status)


def _ratelimited(retry_after: float, *, is_global: bool, scope: str) -> web.Response:
    response = web.json_response(
        {
            "message": "You are being rate limited.",
            "retry_after": round(retry_after, 3),
            "global": is_global,
            "code": 0,
        },
        status=429,
    )
    response.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    response.headers["X-RateLimit-Scope"] = scope
    if is_global:
        response.headers["X-RateLimit-Global"] = "true"
    return response


def _server_error(status: int) -> web.Response:
    if status == 502:  # Cloudflare answers gateway errors with HTML, not JSON
        return web.Response(
            status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        )
    return _error_response(status, 0, f"{status}: Internal Server Error")


__all__ = [
    "DEFAULT_ROUTE_LIMITS",
    "Channel",
    "DiscordSimulator",
    "GatewayFaults",
    "RestFaults",
    "RouteLimit",
    "SimError",
    "SimSettings",
    "SimState",
]
