"""Discord REST client with a rate limiter that shares CDP's bot token politely.

The limiter has two layers:

* a global pacer that spaces every request at least ``1 / global_rate`` seconds apart
  (callers reserve slots without holding a lock, so requests to different buckets are
  in flight concurrently), and that every bucket obeys during a global 429 pause;
* per-bucket windows learnt from ``X-RateLimit-*`` headers, keyed by bucket hash + major
  parameter (before the hash is known: method + route template + major parameter).
  An unknown bucket lets one request through to learn its limits, so a burst costs at
  most the 429s someone else caused.

Errors are the typed ones of ``monitor.errors``. After one 401 the client refuses every
further call without sending anything, because Discord resets tokens (and Cloudflare
bans IPs) that keep hammering with a dead one.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp

from monitor import USER_AGENT
from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import DiscordConfig
from monitor.errors import (
    DiscordConnectionError,
    DiscordForbidden,
    DiscordHTTPError,
    DiscordMalformedResponse,
    DiscordNotFound,
    DiscordRateLimited,
    DiscordServerError,
    DiscordTimeout,
    DiscordUnauthorized,
    TokenInvalidError,
)
from monitor.metrics import Metrics

DEFAULT_API_BASE = "https://discord.com/api/v10"
MAJOR_PARAMS = ("guild_id", "channel_id", "webhook_id")
# Methods whose retry cannot duplicate an effect. A POST that timed out may still have
# created its channel: retrying it is exactly how CDP leaks channels.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Reset-After and retry_after are rounded to milliseconds: wait a hair longer than they say.
RESET_MARGIN = 0.005
_LOG = logging.getLogger("monitor.discord.rest")


@dataclass
class ClientStats:
    """Counters a benchmark or a test reads; the Prometheus metrics hold the same facts."""

    sent: int = 0
    ratelimited: int = 0
    ratelimited_by_scope: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    invalid_requests: int = 0


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, equal jitter."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def major_parameter(params: Mapping[str, object]) -> str:
    """The value Discord keys a bucket on besides its hash ('' for routes without one)."""
    for name in MAJOR_PARAMS:
        if name in params:
            return str(params[name])
    return ""


def format_route(route: str, params: Mapping[str, object]) -> str:
    """Fill a route template, URL-quoting each path parameter."""
    try:
        return route.format_map({k: quote(str(v), safe="") for k, v in params.items()})
    except (KeyError, IndexError) as exc:
        raise ValueError(f"route {route!r} needs path parameter {exc}") from None


@dataclass(frozen=True)
class RateLimitHeaders:
    limit: int
    remaining: int
    reset_after: float
    bucket: str | None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateLimitHeaders | None:
        try:
            limit = int(headers["X-RateLimit-Limit"])
            remaining = int(headers["X-RateLimit-Remaining"])
            reset_after = float(headers["X-RateLimit-Reset-After"])
        except (KeyError, ValueError):
            return None
        return cls(
            max(1, limit),
            max(0, remaining),
            max(0.0, reset_after),
            headers.get("X-RateLimit-Bucket"),
        )


class _Bucket:
    """One rate-limit window: local accounting, corrected by what Discord reports.

    ``remaining`` is decremented when a request is admitted, so it already counts
    requests in flight. At a window reset those in-flight requests are assumed to land
    in the new window (conservative), and their answers, which describe the old window,
    are ignored once the window is known: ``generation`` tells them apart.

    Invariant: ``remaining == 0 and reset_at is None`` only while requests are
    outgoing, so a waiter for an answer (``changed``) is always woken.
    """

    def __init__(self) -> None:
        self.limit = 1  # unknown: one request at a time until headers teach us
        self.remaining = 1
        self.outgoing = 0
        self.reset_at: float | None = None  # monotonic end of the current window
        self.blocked_until = 0.0  # a 429 said: nothing before then
        self.generation = 0
        self.fresh = True  # no current-generation answer seen yet
        self.changed = asyncio.Event()

    def expire_if_due(self, now: float) -> None:
        if self.reset_at is not None and now >= self.reset_at:
            self.remaining = max(0, self.limit - self.outgoing)
            self.reset_at = None
            self.generation += 1
            self.fresh = True

    def wait_time(self, now: float) -> float | None:
        """0 if a request may go now, seconds to wait, or None: wait for an answer."""
        if now < self.blocked_until:
            return self.blocked_until - now
        self.expire_if_due(now)
        if self.remaining > 0:
            return 0.0
        if self.reset_at is not None:
            return self.reset_at - now
        return None

    def update(self, rl: RateLimitHeaders, generation: int, now: float) -> None:
        """Take in an answer's headers (``outgoing`` no longer counts that answer)."""
        self.limit = rl.limit
        reset_at = now + rl.reset_after + RESET_MARGIN
        if self.fresh:
            # First word on this window: any answer beats guessing. Every request sent in
            # it is still outgoing or is this one, which bounds what is left.
            self.remaining = min(rl.remaining, max(0, rl.limit - self.outgoing - 1))
            self.fresh = False
        elif generation == self.generation:
            self.remaining = min(self.remaining, rl.remaining)
            reset_at = max(reset_at, self.reset_at or 0.0)
        else:
            return  # a late answer about a window we already left
        self.reset_at = reset_at

    def block(self, until: float) -> None:
        """A 429 on this bucket: nothing goes before ``until`` whatever answers say."""
        self.blocked_until = max(self.blocked_until, until)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def idle(self, now: float) -> bool:
        self.expire_if_due(now)
        return self.outgoing == 0 and self.reset_at is None and now >= self.blocked_until


@dataclass(frozen=True)
class _Ticket:
    """An admitted request: which bucket, in which window generation."""

    bucket: _Bucket
    generation: int
    method: str
    route: str
    major: str


class RateLimiter:
    """Bucket bookkeeping plus the global pacer. All methods run on one event loop."""

    def __init__(self, *, global_rate: float, clock: Clock) -> None:
        if global_rate <= 0:
            raise ValueError("global_rate must be positive")
        self._interval = 1.0 / global_rate
        self._clock = clock
        self._next_slot = 0.0
        self._global_until = 0.0
        self._hashes: dict[tuple[str, str], str] = {}
        # Keyed by (bucket id, major parameter); the bucket id is Discord's hash once
        # known, else "METHOD /route/template".
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket_id(self, method: str, route: str) -> str:
        return self._hashes.get((method, route)) or f"{method} {route}"

    def bucket(self, method: str, route: str, major: str) -> _Bucket:
        key = (self._bucket_id(method, route), major)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 4096:
                self._prune()
            b = self._buckets[key] = _Bucket()
        return b

    def _learn_hash(self, method: str, route: str, bucket_hash: str) -> None:
        """Move every bucket of this route (one per major parameter) under its hash."""
        old_id = self._bucket_id(method, route)
        self._hashes[(method, route)] = bucket_hash
        for key in [k for k in self._buckets if k[0] == old_id]:
            b = self._buckets.pop(key)
            # If another route already knows this hash + major, its bucket wins; waiters
            # here re-resolve to it on their next look.
            self._buckets.setdefault((bucket_hash, key[1]), b)

    def _prune(self) -> None:
        now = self._clock.monotonic()
        for key, b in list(self._buckets.items()):
            if b.idle(now):
                del self._buckets[key]

    async def acquire(self, method: str, route: str, major: str) -> _Ticket:
        """Wait until the bucket has room and a global slot is due."""
        while True:
            b = self.bucket(method, route, major)
            wait = b.wait_time(self._clock.monotonic())
            if wait == 0.0:
                break
            if wait is None:
                await b.changed.wait()
            else:
                await self._clock.sleep(wait)
        b.remaining -= 1
        b.outgoing += 1
        ticket = _Ticket(b, b.generation, method, route, major)
        try:
            await self._global_slot()
        except BaseException:
            self.release(ticket, None)
            raise
        return ticket

    async def _global_slot(self) -> None:
        while True:
            now = self._clock.monotonic()
            slot = max(now, self._next_slot, self._global_until)
            self._next_slot = slot + self._interval
            if slot > now:
                await self._clock.sleep(slot - now)
            # A global 429 may have arrived while we slept: take a later slot then.
            if self._clock.monotonic() >= self._global_until:
                return

    def release(self, ticket: _Ticket, headers: Mapping[str, str] | None) -> None:
        """Account for a finished attempt; learn the bucket from the answer's headers."""
        b = ticket.bucket
        b.outgoing -= 1
        rl = RateLimitHeaders.parse(headers) if headers is not None else None
        if rl is None:
            if b.fresh and b.reset_at is None:
                # Nothing learnt (no answer, or no headers): give the slot back.
                b.remaining = min(b.limit - b.outgoing, b.remaining + 1)
        else:
            if rl.bucket and self._hashes.get((ticket.method, ticket.route)) != rl.bucket:
                self._learn_hash(ticket.method, ticket.route, rl.bucket)
            b.update(rl, ticket.generation, self._clock.monotonic())
        b.notify()

    def pause_bucket(self, ticket: _Ticket, seconds: float) -> None:
        ticket.bucket.block(self._clock.monotonic() + seconds + RESET_MARGIN)
        ticket.bucket.notify()

    def pause_global(self, seconds: float) -> None:
        until = self._clock.monotonic() + seconds + RESET_MARGIN
        self._global_until = max(self._global_until, until)

    @property
    def global_paused_until(self) -> float:
        return self._global_until


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, reason: str, error: Exception, delay: float | None = None) -> None:
        self.reason = reason
        self.error = error
        self.delay = delay  # None: exponential backoff


class DiscordRestClient:
    """Concurrency-safe Discord REST client; one per bot token."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        token: str,
        api_base: str = DEFAULT_API_BASE,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOG,
        global_rate: float = 25.0,
        max_retries: int = 3,
        timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        max_ratelimit_wait: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._token = token
        self._api_base = api_base.rstrip("/")
        self._clock = clock
        self._log = logger
        self._max_retries = max_retries
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_ratelimit_wait = max_ratelimit_wait
        self._rng = rng or random.Random()
        self._limiter = RateLimiter(global_rate=global_rate, clock=clock)
        self._token_invalid = False
        self.stats = ClientStats()

    @classmethod
    def from_config(
        cls,
        config: DiscordConfig,
        *,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOG,
        max_retries: int | None = None,
    ) -> DiscordRestClient:
        """A client with the `discord` section's token, base URL, budget and retries."""
        return cls(
            session=session,
            metrics=metrics,
            token=config.token.get_secret_value(),
            api_base=config.api_base,
            clock=clock,
            logger=logger,
            global_rate=config.global_rate,
            max_retries=config.max_retries if max_retries is None else max_retries,
            timeout=config.request_timeout,
        )

    @property
    def token_invalid(self) -> bool:
        return self._token_invalid

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    async def request(
        self,
        method: str,
        route: str,
        *,
        params: Mapping[str, object] | None = None,
        json: Any = None,
        query: Mapping[str, str | int] | None = None,
        idempotent: bool | None = None,
        max_retries: int | None = None,
    ) -> Any:
        """Send one request; returns the decoded JSON (None for 204).

        ``route`` is the template (``/channels/{channel_id}``), ``params`` fills it.
        Retries 5xx, timeouts and connection errors only for idempotent requests unless
        ``idempotent`` says otherwise; 429s and refused connections are always retried.
        ``max_retries`` overrides the client's bound for this call (0: one attempt).
        """
        method = method.upper()
        params = params or {}
        path = format_route(route, params)
        major = major_parameter(params)
        retry_ok = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        bound = self._max_retries if max_retries is None else max_retries
        failures = 0
        ratelimit_retries = 0
        while True:
            try:
                return await self._attempt(method, route, path, major, json, query)
            except _Retry as r:
                if r.reason == "ratelimited":
                    ratelimit_retries += 1
                    exhausted = ratelimit_retries > bound
                else:
                    failures += 1
                    exhausted = failures > bound or not (retry_ok or r.reason == "connect")
                if exhausted:
                    raise r.error from None
                delay = r.delay
                if delay is None:
                    delay = backoff_delay(
                        failures - 1, base=self._backoff_base, cap=self._backoff_cap, rng=self._rng
                    )
                self.stats.retries += 1
                self._metrics.discord_retries.labels(route=route, reason=r.reason).inc()
                if r.reason != "ratelimited":  # 429s were logged when they came
                    self._log.warning("discord: %s; retry in %.2fs", r.error, delay)
                await self._clock.sleep(delay)

    async def _attempt(
        self,
        method: str,
        route: str,
        path: str,
        major: str,
        json: Any,
        query: Mapping[str, str | int] | None,
    ) -> Any:
        self._refuse_if_token_invalid(method, route)
        ticket = await self._limiter.acquire(method, route, major)
        headers: Mapping[str, str] | None = None
        try:
            # The token may have died while we waited for our slot.
            self._refuse_if_token_invalid(method, route)
            self.stats.sent += 1
            started = self._clock.monotonic()
            try:
                async with self._session.request(
                    method,
                    self._api_base + path,
                    headers={"Authorization": f"Bot {self._token}", "User-Agent": USER_AGENT},
                    json=json,
                    params=query,
                    timeout=self._timeout,
                ) as resp:
                    headers = resp.headers
                    status = resp.status
                    try:
                        body = await resp.read()
                    except aiohttp.ClientPayloadError as exc:
                        self._observe(route, method, str(status), started)
                        raise self._malformed(route, method, f"truncated answer: {exc}") from exc
            except TimeoutError as exc:
                self._observe(route, method, "timeout", started)
                timeout = DiscordTimeout(f"{method} {route}: timed out", route=route, method=method)
                raise _Retry("timeout", timeout) from exc
            except aiohttp.ClientConnectorError as exc:
                # Never reached Discord: safe to retry any method.
                self._observe(route, method, "connection_error", started)
                err = DiscordConnectionError(f"{method} {route}: {exc}", route=route, method=method)
                raise _Retry("connect", err) from exc
            except aiohttp.ClientError as exc:
                self._observe(route, method, "connection_error", started)
                err = DiscordConnectionError(f"{method} {route}: {exc}", route=route, method=method)
                raise _Retry("connection", err) from exc
            self._observe(route, method, str(status), started)
        finally:
            self._limiter.release(ticket, headers)
        return self._handle(method, route, status, headers, body, ticket)

    def _handle(
        self,
        method: str,
        route: str,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        ticket: _Ticket,
    ) -> Any:
        if 200 <= status < 300:
            if status == 204:
                return None
            try:
                return jsonlib.loads(body)
            except ValueError as exc:
                raise self._malformed(route, method, f"HTTP {status} body is not JSON") from exc
        code, message, data = _error_fields(body)
        kw: dict[str, Any] = {"code": code, "message": message, "route": route, "method": method}
        if status == 429:
            self._handle_429(method, route, headers, data, ticket, kw)
        if status in (401, 403):
            self._count_invalid()
        if status == 401:
            self._token_invalid = True
            self._metrics.discord_token_invalid.set(1)
            self._log.error("discord answered 401: token invalid; no further Discord calls")
            raise DiscordUnauthorized(401, **kw)
        if status == 403:
            raise DiscordForbidden(403, **kw)
        if status == 404:
            raise DiscordNotFound(404, **kw)
        if status >= 500:
            raise _Retry("server_error", DiscordServerError(status, **kw))
        raise DiscordHTTPError(status, **kw)

    def _handle_429(
        self,
        method: str,
        route: str,
        headers: Mapping[str, str],
        data: Mapping[str, Any],
        ticket: _Ticket,
        kw: dict[str, Any],
    ) -> NoReturn:
        retry_after = _float(data.get("retry_after"))
        if retry_after is None:
            retry_after = _float(headers.get("Retry-After")) or 1.0
        is_global = (
            bool(data.get("global")) or headers.get("X-RateLimit-Global", "").lower() == "true"
        )
        scope = headers.get("X-RateLimit-Scope") or ("global" if is_global else "user")
        self.stats.ratelimited += 1
        self.stats.ratelimited_by_scope[scope] = self.stats.ratelimited_by_scope.get(scope, 0) + 1
        self._metrics.discord_ratelimited.labels(scope=scope).inc()
        if scope != "shared":
            self._count_invalid()
        if is_global:
            self._limiter.pause_global(retry_after)
        else:
            self._limiter.pause_bucket(ticket, retry_after)
        self._log.warning(
            "discord 429 on %s %s (scope %s, global %s): waiting %.2fs",
            method,
            route,
            scope,
            is_global,
            retry_after,
        )
        err = DiscordRateLimited(retry_after=retry_after, is_global=is_global, scope=scope, **kw)
        if retry_after > self._max_ratelimit_wait:
            raise err
        # The limiter already holds the wait; backoff on top would only slow us down.
        raise _Retry("ratelimited", err, delay=0.0)

    def _refuse_if_token_invalid(self, method: str, route: str) -> None:
        if self._token_invalid:
            raise TokenInvalidError(
                401,
                message="token marked invalid by an earlier 401; not calling Discord",
                route=route,
                method=method,
            )

    def _count_invalid(self) -> None:
        self.stats.invalid_requests += 1
        self._metrics.discord_invalid_requests.inc()

    def _malformed(self, route: str, method: str, why: str) -> DiscordMalformedResponse:
        self._metrics.discord_malformed.labels(route=route).inc()
        return DiscordMalformedResponse(f"{method} {route}: {why}", route=route, method=method)

    def _observe(self, route: str, method: str, code: str, started: float) -> None:
        self._metrics.discord_requests.labels(route=route, method=method, code=code).inc()
        self._metrics.discord_request_duration.labels(route=route, method=method).observe(
            max(0.0, self._clock.monotonic() - started)
        )

    # -- helpers for the endpoints the monitor uses ------------------------------------

    async def get_gateway(self) -> Any:
        return await self.request("GET", "/gateway")

    async def get_gateway_bot(self) -> Any:
        return await self.request("GET", "/gateway/bot")

    async def get_current_user(self) -> Any:
        return await self.request("GET", "/users/@me")

    async def list_guild_channels(self, guild_id: int | str) -> Any:
        return await self.request(
            "GET", "/guilds/{guild_id}/channels", params={"guild_id": guild_id}
        )

    async def create_guild_channel(self, guild_id: int | str, name: str, type: int = 0) -> Any:
        return await self.request(
            "POST",
            "/guilds/{guild_id}/channels",
            params={"guild_id": guild_id},
            json={"name": name, "type": type},
        )

    async def get_channel(self, channel_id: int | str) -> Any:
        return await self.request(
            "GET", "/channels/{channel_id}", params={"channel_id": channel_id}
        )

    async def delete_channel(self, channel_id: int | str) -> Any:
        return await self.request(
            "DELETE", "/channels/{channel_id}", params={"channel_id": channel_id}
        )

    async def list_messages(self, channel_id: int | str, limit: int = 50) -> Any:
        return await self.request(
            "GET",
            "/channels/{channel_id}/messages",
            params={"channel_id": channel_id},
            query={"limit": limit},
        )

    async def create_message(self, channel_id: int | str, content: str) -> Any:
        return await self.request(
            "POST",
            "/channels/{channel_id}/messages",
            params={"channel_id": channel_id},
            json={"content": content},
        )


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _error_fields(body: bytes) -> tuple[int | None, str, Mapping[str, Any]]:
    """Discord's error JSON ({"code", "message", ...}); tolerant of HTML from proxies."""
    try:
        data = jsonlib.loads(body)
    except ValueError:
        return None, body[:200].decode("utf-8", "replace"), {}
    if not isinstance(data, dict):
        return None, "", {}
    code = data.get("code")
    return (code if isinstance(code, int) else None), str(data.get("message", "")), data
