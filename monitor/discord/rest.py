"""Discord REST client: requests, retries and typed errors, paced by the rate limiter of
``monitor.discord.ratelimit`` so it shares CDP's bot token politely.

Errors are the typed ones of ``monitor.errors``. After one 401 the client refuses every
further call without sending anything, because Discord resets tokens (and Cloudflare
bans IPs) that keep hammering with a dead one. A Cloudflare ban (a 429 Discord did not
make) is never retried: every call on every route fails with `DiscordCloudflareBan`,
without sending, until the ban is over.
"""

from __future__ import annotations

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
from monitor.discord.attempts import no_hidden_resend
from monitor.discord.ban import BanGate, is_cloudflare_ban
from monitor.discord.endpoints import Endpoints
from monitor.discord.ratelimit import RateLimiter, Ticket, backoff_delay, major_parameter, parse_429
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

# Methods whose retry cannot duplicate an effect. A POST that timed out may still have
# created its channel: retrying it is exactly how CDP leaks channels.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_LOG = logging.getLogger("monitor.discord.rest")


@dataclass
class ClientStats:
    """Counters a benchmark or a test reads; the Prometheus metrics hold the same facts."""

    sent: int = 0
    ratelimited: int = 0
    ratelimited_by_scope: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    invalid_requests: int = 0


def format_route(route: str, params: Mapping[str, object]) -> str:
    """Fill a route template, URL-quoting each path parameter."""
    try:
        return route.format_map({k: quote(str(v), safe="") for k, v in params.items()})
    except (KeyError, IndexError) as exc:
        raise ValueError(f"route {route!r} needs path parameter {exc}") from None


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, reason: str, error: Exception, delay: float | None = None) -> None:
        self.reason = reason
        self.error = error
        self.delay = delay  # None: exponential backoff


class DiscordRestClient(Endpoints):
    """Concurrency-safe Discord REST client; one per bot token."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        token: str,
        # The discord.* config keys: no defaults here, the config holds the only ones.
        api_base: str,
        global_rate: float,
        max_retries: int,
        timeout: float,
        clock: Clock = SYSTEM_CLOCK,
        logger: logging.Logger = _LOG,
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
        self._limiter = RateLimiter(
            global_rate=global_rate, clock=clock, max_wait=max_ratelimit_wait
        )
        self._token_invalid = False
        self._ban = BanGate(clock)
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
    def session(self) -> aiohttp.ClientSession:
        """Discord's session (through `discord.proxy`): the probes and the gateway use it."""
        return self._session

    @property
    def token_invalid(self) -> bool:
        return self._token_invalid

    @property
    def banned_for(self) -> float:
        """Seconds left of a Cloudflare ban (0: not banned)."""
        return self._ban.left()

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
        self._ban.refuse(method, route)
        ticket = await self._limiter.acquire(method, route, major)
        headers: Mapping[str, str] | None = None
        try:
            # The token may have died, or the IP been banned, while we waited for our slot.
            self._refuse_if_token_invalid(method, route)
            self._ban.refuse(method, route)
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
                    middlewares=(no_hidden_resend(),),
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
        ticket: Ticket,
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
        if status == 429 and is_cloudflare_ban(headers, body):
            self._banned(method, route, headers, kw)
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
        ticket: Ticket,
        kw: dict[str, Any],
    ) -> NoReturn:
        said = parse_429(headers, data)
        self._limiter.obey_429(ticket, said)
        retry_after, is_global, scope = said.retry_after, said.is_global, said.scope
        self._count_429(scope)
        if scope != "shared":
            self._count_invalid()
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

    def _banned(
        self, method: str, route: str, headers: Mapping[str, str], kw: dict[str, Any]
    ) -> NoReturn:
        err = self._ban.start(headers, **kw)
        self._count_429("cloudflare")
        self._count_invalid()
        self._log.error(
            "discord: %s %s answered by Cloudflare, not Discord (%r): this IP is banned; "
            "no Discord call for %.0fs",
            method,
            route,
            kw["message"][:80],
            err.retry_after,
        )
        raise err

    def _count_429(self, scope: str) -> None:
        self.stats.ratelimited += 1
        self.stats.ratelimited_by_scope[scope] = self.stats.ratelimited_by_scope.get(scope, 0) + 1
        self._metrics.discord_ratelimited.labels(scope=scope).inc()

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
