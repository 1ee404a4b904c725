"""`CdpEmulator`: lifecycle, the middleware every client request goes through (request
id, proxy-secret auth, JSON errors, the `[GIN]` line), and the admin API under /_cdp."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.httpserve import start_site
from monitor.sim.cdp.channels import Channels
from monitor.sim.cdp.discordgo import DiscordgoClient
from monitor.sim.cdp.golog import CdpLog
from monitor.sim.cdp.handlers import REQUEST_ID, Handlers
from monitor.sim.cdp.settings import ID_CHARS, ApiError, CdpSettings, Stats, openai_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CdpEmulator:
    def __init__(
        self,
        settings: CdpSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._random = random.Random(settings.seed)
        self.stats = Stats()
        self._log = CdpLog(clock, capacity=settings.log_capacity, path=settings.log_path)
        self.log_lines = self._log.lines
        self.client = DiscordgoClient(self, session)
        self.channels = Channels(self)
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()
        self.host = ""
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._log.open()
        await self.client.open()
        self._runner, self.port = await start_site(self.app, host, port)
        self.host = host

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.channels.stop()
        await self.client.close()
        self._log.close()

    def log(self, level: str, request_id: str | None, message: str) -> None:
        """common.logHelper: `[LEVEL] time | id | message ` (trailing space as in Go)."""
        self._log.line(level, request_id, message)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/_cdp"

    # -- request ids -------------------------------------------------------------------

    def new_request_id(self) -> str:
        """middleware/request-id.go: local time, the nanoseconds, 8 random characters."""
        now = self.clock.time()
        stamp = datetime.fromtimestamp(now).strftime("%Y%m%d%H%M%S")
        nanos = int(now * 1e9) % 1_000_000_000
        tail = "".join(self._random.choice(ID_CHARS) for _ in range(8))
        return f"{stamp}{nanos}{tail}"

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        Handlers(self).add_routes(r)
        r.add_get("/_cdp/state", self._admin_state)
        r.add_get("/_cdp/logs", self._admin_logs)
        r.add_post("/_cdp/restart", self._admin_restart)
        r.add_post("/_cdp/reset-stats", self._admin_reset)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_cdp/"):
            return await handler(request)
        rid = self.new_request_id()
        REQUEST_ID.set(rid)
        started = self.clock.monotonic()
        self.stats.requests_in_flight += 1
        status = 500
        try:
            try:
                self._authorize(request)
                response = await handler(request)
            except ApiError as exc:
                response = web.json_response(exc.body, status=exc.status)
            except web.HTTPException as exc:  # unknown path, wrong method, body too big
                response = web.json_response(
                    {
                        "error": {
                            "message": exc.reason,
                            "type": "invalid_request_error",
                            "code": str(exc.status),
                        }
                    },
                    status=exc.status,
                )
            if not response.prepared:  # a stream sets it itself before its headers go
                response.headers["X-Request-Id"] = rid
            status = response.status
            return response
        finally:
            self.stats.requests_in_flight -= 1
            self.stats.requests[(request.path, status)] += 1
            self._log.gin(
                rid,
                status,
                self.clock.monotonic() - started,
                request.remote or "",
                request.method,
                request.path,
            )

    def _authorize(self, request: web.Request) -> None:
        secrets = self.settings.secrets
        if not secrets:
            return
        if request.path.startswith("/v1/"):  # middleware/auth.go authHelperForOpenai
            given = request.headers.get("Authorization", "").replace("Bearer ", "", 1)
            if given not in secrets:
                raise openai_error(
                    401, "authorization(proxy-secret) check failed", code="invalid_authorization"
                )
        elif request.path.startswith("/api/"):
            if request.headers.get("proxy-secret", "") not in secrets:
                raise ApiError(
                    401, {"success": False, "message": "no valid proxy-secret was provided"}
                )

    # -- admin API ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        by_path: dict[str, dict[str, int]] = {}
        for (path, status), n in sorted(s.requests.items()):
            by_path.setdefault(path, {})[str(status)] = n
        return {
            "requests": by_path,
            "total_requests": sum(s.requests.values()),
            "requests_in_flight": s.requests_in_flight,
            "creates_in_flight": s.creates_in_flight,
            "max_concurrent_creates": s.max_concurrent_creates,
            "create_attempts": s.create_attempts,
            "create_timeouts": s.create_timeouts,
            "channels_created": s.channels_created,
            "late_channels": s.late_channels,
            "late_channel_ids": list(s.late_channel_ids),
            "channels_deleted": s.channels_deleted,
            "delete_failures": s.delete_failures,
            "pending_delete_timers": len(self.channels.delete_timers),
            "pending_delete_channel_ids": sorted(self.channels.delete_timers),
        }

    def restart(self) -> int:
        """What a CDP restart does to delete timers: forgets them. Returns how many."""
        return self.channels.forget_timers()

    def reset_stats(self) -> None:
        in_flight = (self.stats.requests_in_flight, self.stats.creates_in_flight)
        self.stats = Stats()
        self.stats.requests_in_flight, self.stats.creates_in_flight = in_flight
        self.stats.max_concurrent_creates = self.stats.creates_in_flight

    async def _admin_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _admin_logs(self, request: web.Request) -> web.Response:
        return web.json_response({"lines": list(self.log_lines)})

    async def _admin_restart(self, request: web.Request) -> web.Response:
        return web.json_response({"forgotten_delete_timers": self.restart()})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.snapshot())


__all__ = ["CdpEmulator"]
