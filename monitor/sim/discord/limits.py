"""What the Discord simulator does to every API request before its handler: Cloudflare
(bans, blocked User-Agents), faults (latency, hangs, resets, errors, 403s, malformed
bodies), auth (the bot token and user tokens), the global and per-route rate limits with
their headers and 429 bodies, the invalid-request ban, and the request counters."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from monitor.sim.discord.models import API_PREFIXES, Bucket, Handler, SimError
from monitor.sim.discord.responses import (
    Answer,
    cloudflare_ban,
    cloudflare_blocked,
    discord_json,
    error_response,
    ratelimited,
    server_error,
)

if TYPE_CHECKING:
    from monitor.sim.discord.simulator import DiscordSimulator

# What a user token may do here: read and post messages (CDP posts prompts this way).
USER_ROUTES = frozenset(
    {
        "GET /users/@me",
        "GET /channels/{channel_id}",
        "GET /channels/{channel_id}/messages",
        "POST /channels/{channel_id}/messages",
    }
)
WHO = web.RequestKey("sim_who", str)  # "bot" or "user:<token>", set for handlers
FORBIDDEN_MESSAGES = {50001: "Missing Access", 50013: "Missing Permissions"}


class DiscordBehaviour:
    """The simulator's middleware: Cloudflare, faults and rate limits, as Discord has them."""

    def __init__(self, sim: DiscordSimulator) -> None:
        self.sim = sim

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)  # the admin API and the gateway are never banned
        now = self.sim.clock.monotonic()
        if self.sim.state.banned_until > now:
            self._record("cloudflare-ban", 429)
            banned = cloudflare_ban(self.sim.state.banned_until - now)
            banned.headers["Server"] = "cloudflare"
            return banned
        route = self._route_key(request)
        refused = getattr(request.match_info, "http_exception", None)
        if isinstance(refused, web.HTTPMethodNotAllowed):
            answer = error_response(405, 0, "405: Method Not Allowed")
            return self._finish("unrouted", answer, {})
        if route is None:
            return self._finish("unrouted", error_response(404, 0, "404: Not Found"), {})
        if self._blocked_user_agent(request):
            return self._finish(route, cloudflare_blocked(), {})
        return await self._serve(request, handler, route)

    async def _serve(
        self, request: web.Request, handler: Handler, route: str
    ) -> web.StreamResponse:
        faults = self.sim.state.rest_faults
        faulted = not faults.routes or route in faults.routes
        chance = self.sim.random.random
        if faulted and faults.reset_rate and chance() < faults.reset_rate:
            self._record(route, 0)
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # the connection is gone; nothing to answer
        delay = faults.latency_ms + (faults.jitter_ms * chance()) if faulted else 0.0
        if faulted and faults.timeout_rate and chance() < faults.timeout_rate:
            delay = faults.hang_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        who = self._identify(request)
        if who is None and route != "GET /gateway":
            return self._finish(route, error_response(401, 0, "401: Unauthorized"), {})
        if who not in (None, "bot") and route not in USER_ROUTES:
            return self._finish(route, error_response(403, 50001, "Missing Access"), {})
        request[WHO] = who or ""
        now = self.sim.clock.monotonic()
        limited = self._check_global(now) if who == "bot" else None
        if limited is not None:
            return self._finish(route, limited, {})
        rate_headers, limited = self._check_bucket(route, request, now)
        if limited is not None:
            return self._finish(route, limited, rate_headers)
        if faulted:
            injected = self._injected_fault()
            if injected is not None:
                return self._finish(route, injected, rate_headers)
        try:
            response = await handler(request)
        except SimError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.errors)
        except Answer as answer:
            response = answer.response
        return self._finish(route, response, rate_headers)

    def _injected_fault(self) -> web.Response | None:
        faults = self.sim.state.rest_faults
        chance = self.sim.random.random
        if faults.shared_429_rate and chance() < faults.shared_429_rate:
            return ratelimited(faults.shared_429_retry_after, is_global=False, scope="shared")
        if faults.forbidden_rate and chance() < faults.forbidden_rate:
            code = faults.forbidden_code
            return error_response(403, code, FORBIDDEN_MESSAGES.get(code, "Missing Access"))
        if faults.error_rate and chance() < faults.error_rate:
            return server_error(faults.error_status)
        if faults.malformed_rate and chance() < faults.malformed_rate:
            response = discord_json(None)
            response.body = b'{"id": "1'
            return response
        return None

    def _route_key(self, request: web.Request) -> str | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None
        for prefix in API_PREFIXES:
            if resource.canonical.startswith(prefix + "/"):
                return f"{request.method} {resource.canonical[len(prefix) :]}"
        return None

    def _identify(self, request: web.Request) -> str | None:
        """ "bot", "user:<token>", or None for no or a wrong token."""
        auth = request.headers.get("Authorization", "")
        if auth == f"Bot {self.sim.settings.token}":
            return "bot"
        if auth and auth in self.sim.settings.user_tokens:
            return f"user:{auth}"
        return None

    def _blocked_user_agent(self, request: web.Request) -> bool:
        """Cloudflare blocks bot requests with no User-Agent or a browser's
        (discord-api-docs#6473, #4908); other agents pass in practice, though Discord asks
        for `DiscordBot (url, version)`."""
        if not request.headers.get("Authorization", "").startswith("Bot "):
            return False
        agent = request.headers.get("User-Agent", "").strip()
        return not agent or agent.startswith("Mozilla/")

    def _check_global(self, now: float) -> web.Response | None:
        window = self.sim.state.global_window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.sim.settings.global_limit:
            retry_after = max(0.001, window[0] + 1.0 - now)
            return ratelimited(retry_after, is_global=True, scope="global")
        window.append(now)
        return None

    def _check_bucket(
        self, route: str, request: web.Request, now: float
    ) -> tuple[dict[str, str], web.Response | None]:
        limit = self.sim.settings.route_limits.get(route)
        if limit is None:
            return {}, None
        major = request.match_info.get("guild_id") or request.match_info.get("channel_id") or ""
        who = request.get(WHO)
        key = major if who in (None, "", "bot") else f"{major}/{who}"  # a user has its own
        bucket = self.sim.state.buckets.setdefault((limit.bucket, key), Bucket())
        if now >= bucket.reset_at:
            bucket.count = 0
            bucket.reset_at = now + limit.per
        reset_after = max(0.0, bucket.reset_at - now)
        limited = None
        if bucket.count >= limit.limit:
            limited = ratelimited(reset_after, is_global=False, scope="user")
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
        response.headers["Server"] = "cloudflare"  # Discord's API sits behind Cloudflare
        status = response.status
        self._record(route, status)
        if status in (401, 403) or (
            status == 429 and response.headers.get("X-RateLimit-Scope") != "shared"
        ):
            self._count_invalid()
        if status == 429:
            self.sim.state.ratelimited[response.headers.get("X-RateLimit-Scope", "user")] += 1
        return response

    def _count_invalid(self) -> None:
        """Discord counts 401/403/429 (but shared 429s) and has Cloudflare ban an IP that
        makes 10,000 of them in 10 minutes; enforced when `invalid_request_limit` is set."""
        state, settings = self.sim.state, self.sim.settings
        state.invalid_requests += 1
        if settings.invalid_request_limit is None:
            return
        now = self.sim.clock.monotonic()
        times = state.invalid_times
        times.append(now)
        while times and times[0] <= now - settings.invalid_request_window_s:
            times.popleft()
        if len(times) >= settings.invalid_request_limit:
            state.banned_until = now + settings.invalid_request_ban_s
            times.clear()

    def _record(self, route: str, status: int) -> None:
        self.sim.state.requests[(route, status)] += 1
        self.sim.state.request_log.append((self.sim.clock.monotonic(), route, status))
