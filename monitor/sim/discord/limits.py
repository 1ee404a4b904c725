"""What the Discord simulator does to every API request before its handler: faults
(latency, hangs, resets, errors, malformed bodies), auth, the global and per-route rate
limits with their headers and 429 bodies, and the request counters."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from monitor.sim.discord.models import API_PREFIX, Bucket, Handler, SimError

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator


class DiscordBehaviour:
    """The simulator's middleware: faults and rate limits, as Discord applies them."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX):
            return await handler(request)
        route = self._route_key(request)
        if route is None:
            return self._finish(
                "unrouted", _error_response(404, 0, "404: Not Found"), rate_headers={}
            )
        faults = self.sim.state.rest_faults
        faulted = not faults.routes or route in faults.routes
        if faulted and faults.reset_rate and self.sim.random.random() < faults.reset_rate:
            self._record(route, 0)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # the connection is gone; nothing to answer
        delay = 0.0
        if faulted:
            delay = faults.latency_ms + (faults.jitter_ms * self.sim.random.random())
            if faults.timeout_rate and self.sim.random.random() < faults.timeout_rate:
                delay = faults.hang_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)

        if route != "GET /gateway" and not self._authorized(request):
            return self._finish(route, _error_response(401, 0, "401: Unauthorized"), {})

        now = self.sim.clock.monotonic()
        limited = self._check_global(now)
        if limited is not None:
            return self._finish(route, limited, {})
        rate_headers, limited = self._check_bucket(route, request, now)
        if limited is not None:
            return self._finish(route, limited, rate_headers)
        if faulted and faults.shared_429_rate and self.sim.random.random() < faults.shared_429_rate:
            return self._finish(
                route, _ratelimited(1.0, is_global=False, scope="shared"), rate_headers
            )
        if faulted and faults.error_rate and self.sim.random.random() < faults.error_rate:
            return self._finish(route, _server_error(faults.error_status), rate_headers)
        if faulted and faults.malformed_rate and self.sim.random.random() < faults.malformed_rate:
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
        return request.headers.get("Authorization", "") == f"Bot {self.sim.settings.token}"

    def _check_global(self, now: float) -> web.Response | None:
        window = self.sim.state.global_window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.sim.settings.global_limit:
            retry_after = max(0.001, window[0] + 1.0 - now)
            return _ratelimited(retry_after, is_global=True, scope="global")
        window.append(now)
        return None

    def _check_bucket(
        self, route: str, request: web.Request, now: float
    ) -> tuple[dict[str, str], web.Response | None]:
        limit = self.sim.settings.route_limits.get(route)
        if limit is None:
            return {}, None
        major = request.match_info.get("guild_id") or request.match_info.get("channel_id") or ""
        bucket = self.sim.state.buckets.setdefault((limit.bucket, major), Bucket())
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
            "X-RateLimit-Reset": f"{self.sim.clock.time() + reset_after:.3f}",
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
            self.sim.state.invalid_requests += 1
        if status == 429:
            self.sim.state.ratelimited[response.headers.get("X-RateLimit-Scope", "user")] += 1
        return response

    def _record(self, route: str, status: int) -> None:
        self.sim.state.requests[(route, status)] += 1
        self.sim.state.request_log.append((self.sim.clock.monotonic(), route, status))


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
