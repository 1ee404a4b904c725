"""`CdpEmulator`: one CDP "process" at a time behind a listening port, and the gin
middleware chain every client request goes through (main.go:40-45,
router/api-router.go): request id (`X-Request-Id`), the `[GIN]` line, the per-IP
REQUEST_RATE_LIMIT, proxy-secret auth, gin's `404 page not found`.

A crash (the stay-active task's nil-context panic, or `POST /_cdp/restart`) kills the
process: in-flight connections are dropped, its goroutines (abandoned creates, delete
timers) die with it; then, like docker's `restart: always`, a new one starts and logs
its start lines again."""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.httpserve import start_site
from monitor.sim.cdp.admin import AdminApi, CozeFaults
from monitor.sim.cdp.apiroutes import ApiHandlers
from monitor.sim.cdp.channels import Channels
from monitor.sim.cdp.conversation import Conversation
from monitor.sim.cdp.discordgo import DiscordgoClient
from monitor.sim.cdp.gateway import GatewaySession
from monitor.sim.cdp.golog import STDERR, CdpLog
from monitor.sim.cdp.handlers import REQUEST_ID, OpenAiHandlers, json_response
from monitor.sim.cdp.settings import ID_CHARS, RATE_WINDOW, VERSION, ApiError, CdpSettings, Stats
from monitor.sim.cdp.stayactive import daily_task

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_FOUND = b"404 page not found"


class CdpFatal(Exception):
    """CDP's FatalLog at start-up: the process exits 1 (no restart helps)."""


@dataclass
class Process:
    """What one CDP process holds in memory; all of it is lost when it dies."""

    client: DiscordgoClient
    channels: Channels
    conversation: Conversation
    session: aiohttp.ClientSession
    gateway: GatewaySession | None = None
    hits: dict[str, list[float]] = field(default_factory=dict)  # InMemoryRateLimiter
    requests: set[tuple[asyncio.Task[Any], Any]] = field(default_factory=set)


class CdpEmulator:
    def __init__(
        self,
        settings: CdpSettings,
        *,
        session: aiohttp.ClientSession | None = None,  # unused: each process has its own
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._random = random.Random(settings.seed)
        self.stats = Stats()
        self._log = CdpLog(
            clock,
            capacity=settings.log_capacity,
            log_dir=settings.log_dir,
            path=settings.log_path,
            echo=settings.echo,
        )
        self.log_lines = self._log.lines
        self.log_records = self._log.records
        self.coze = CozeFaults()
        self.bot_models: set[str] | None = None  # a bot_config.json with these models
        self.coze_bot_id = settings.coze_bot_id
        self.channel_id = settings.channel_id if settings.default_channel else ""
        self._process: Process | None = None
        self._runner: web.AppRunner | None = None
        self._crashing: asyncio.Task[None] | None = None
        self.app = self._build_app()
        self.host = ""
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def process(self) -> Process:
        assert self._process is not None, "CDP is not running"
        return self._process

    @property
    def running(self) -> bool:
        return self._process is not None

    def is_current(self, proc: Process) -> bool:
        """Whether `proc` is still the running process: a killed one (its requests
        cancelled mid-handler) runs no more of its code, deferred calls included."""
        return self._process is proc

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start the process and listen; CdpFatal after a `[FATAL]` line."""
        self.host = host
        await self._boot(port)

    async def _boot(self, port: int) -> None:
        self._log.open()
        self._log.sys(f"COZE-DISCORD-PROXY {VERSION} started")
        problem = self.settings.fatal
        if self.settings.default_channel and not self.settings.channel_id:
            problem = "环境变量 CHANNEL_ID 未设置"  # discord.go:221-222
        if problem:
            self._log.fatal(problem)
            self._log.close()
            raise CdpFatal(problem)
        client = DiscordgoClient(self.settings, self.clock, lambda: self.stats)
        await client.open()
        session = aiohttp.ClientSession()
        channels = Channels(self, client)
        self._process = Process(client, channels, Conversation(self, session), session)
        if self.settings.gateway:
            self._process.gateway = GatewaySession(self, session)
            channels.go(self._process.gateway.run())
        self._runner, self.port = await start_site(self.app, self.host, port)
        self._log.sys("Environment variable check passed.")
        self._log.sys("Bot is now running. Enjoy It.")
        if self.settings.stay_active:
            channels.go(daily_task(self))

    async def _kill(self) -> None:
        """The process dies: connections dropped, goroutines and timers gone."""
        proc, self._process = self._process, None
        if proc is None:
            return
        for task, transport in list(proc.requests):
            self.stats.dropped_requests += 1
            if transport is not None:
                transport.abort()
            task.cancel()
        goroutines, timers = await proc.channels.kill()
        self.stats.killed_creates += goroutines
        self.stats.lost_delete_timers += timers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await proc.client.close()
        await proc.session.close()
        self._log.close()

    def crash(self, lines: tuple[str, ...] = ()) -> asyncio.Task[None]:
        """Kill the process (after writing `lines` to stderr) and start a new one."""
        if self._crashing is None or self._crashing.done():
            self._crashing = asyncio.get_running_loop().create_task(self._crash(lines))
        return self._crashing

    async def _crash(self, lines: tuple[str, ...]) -> None:
        for line in lines:
            self._log.emit(STDERR, line + "\n")
        await self._kill()
        self.stats.restarts += 1
        await asyncio.sleep(self.settings.restart_delay)
        await self._boot(self.port)

    async def stop(self) -> None:
        if self._crashing is not None and not self._crashing.done():
            self._crashing.cancel()
            await asyncio.gather(self._crashing, return_exceptions=True)
        await self._kill()

    def echo(self) -> None:
        """Write the log lines to this process's stdout/stderr, those so far first."""
        self._log.start_echo()

    def gateway_error(self, message: str) -> None:
        """discordgo's own log line (stdlib logger, stderr, never in --log-dir)."""
        stamp = datetime.fromtimestamp(self.clock.time()).strftime("%Y/%m/%d %H:%M:%S")
        self._log.emit(STDERR, f"{stamp} [DG0] wsapi.go:98:Open() {message}\n", file=False)

    def log(self, level: str, request_id: str | None, message: str) -> None:
        self._log.line(level, request_id, message)

    def sys_log(self, message: str, *, error: bool = False) -> None:
        self._log.sys(message, error=error)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/_cdp"

    def new_request_id(self) -> str:
        """middleware/request-id.go: local time, the unpadded nanoseconds, 8 of [0-9a-zA-Z]."""
        now = self.clock.time()
        stamp = datetime.fromtimestamp(now).strftime("%Y%m%d%H%M%S")
        nanos = round(now * 1e9) % 1_000_000_000
        tail = "".join(self._random.choice(ID_CHARS) for _ in range(8))
        return f"{stamp}{nanos}{tail}"

    # -- the gin engine ----------------------------------------------------------------

    def _build_app(self) -> web.Application:
        # CDP reads bodies of any size (GPT-4V images); aiohttp's default is 1 MiB.
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        OpenAiHandlers(self).add_routes(app.router)
        if not self.settings.only_openai_api:
            ApiHandlers(self).add_routes(app.router)
        AdminApi(self).add_routes(app.router)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_cdp/"):
            return await handler(request)
        rid = self.new_request_id()
        REQUEST_ID.set(rid)
        started = self.clock.monotonic()
        proc = self.process
        task = asyncio.current_task()
        assert task is not None
        entry = (task, request.transport)
        proc.requests.add(entry)
        self.stats.requests_in_flight += 1
        status, finished = 500, False
        try:
            try:
                response = await self._chain(request, handler, proc)
            except ApiError as exc:
                response = json_response(exc.body, exc.status)
            if not response.prepared:
                response.headers["X-Request-Id"] = rid
            status, finished = response.status, True
            return response
        finally:
            proc.requests.discard(entry)
            self.stats.requests_in_flight -= 1
            if finished:  # a killed process writes nothing more
                self.stats.requests[(request.path, status)] += 1
                elapsed = self.clock.monotonic() - started
                ip = client_ip(request)
                self._log.gin(rid, status, elapsed, ip, request.method, request.path)

    async def _chain(
        self, request: web.Request, handler: Handler, proc: Process
    ) -> web.StreamResponse:
        self._rate_limit(request, proc)
        matched = getattr(request.match_info, "http_exception", None) is None
        if not matched:
            return web.Response(body=NOT_FOUND, status=404, headers={"Content-Type": "text/plain"})
        self._authorize(request)
        return await handler(request)

    def _rate_limit(self, request: web.Request, proc: Process) -> None:
        """InMemoryRateLimiter.Request: at most N per window per client IP."""
        limit = self.settings.request_rate_limit
        key = "REQUEST_RATE_LIMIT" + client_ip(request)
        now = self.clock.monotonic()
        hits = proc.hits.setdefault(key, [])
        if len(hits) < limit:
            hits.append(now)
            return
        if hits and now - hits[0] >= self.settings.scaled(RATE_WINDOW):
            hits.pop(0)
            hits.append(now)
            return
        raise ApiError(429, {"message": "请求过于频繁,请稍后再试", "success": False})

    def _authorize(self, request: web.Request) -> None:
        """middleware/auth.go: only when PROXY_SECRET is set."""
        secrets = self.settings.secrets
        if not secrets:
            return
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").replace("Bearer ", "", 1)
            if given not in secrets:
                error = {
                    "message": "authorization(proxy-secret)校验失败",
                    "type": "invalid_request_error",
                    "param": "",
                    "code": "invalid_authorization",
                }
                raise ApiError(401, {"error": error})
        elif request.path.startswith("/api/"):
            if request.headers.get("proxy-secret", "") not in secrets:
                message = "无权进行此操作,未提供正确的 proxy-secret"
                raise ApiError(401, {"message": message, "success": False})

    # -- admin view ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        by_path: dict[str, dict[str, int]] = {}
        for (path, status), n in sorted(s.requests.items()):
            by_path.setdefault(path, {})[str(status)] = n
        timers = sorted(self._process.channels.delete_timers) if self._process else []
        users = len(self._process.conversation.user_auths) if self._process else 0
        # goroutines still to finish: abandoned creates waiting on the bucket lock, calls
        proc = self._process
        goroutines = (
            len(proc.channels.goroutines) - len(timers) + proc.client.pending_calls if proc else 0
        )
        counters = {k: v for k, v in vars(s).items() if isinstance(v, int)}
        return {
            **counters,
            "running": self.running,
            "requests": by_path,
            "total_requests": sum(s.requests.values()),
            "late_channel_ids": list(s.late_channel_ids),
            "pending_delete_timers": len(timers),
            "pending_delete_channel_ids": timers,
            "user_tokens_left": users,
            "goroutines": goroutines,
        }

    def reset_stats(self) -> None:
        in_flight = (self.stats.requests_in_flight, self.stats.creates_in_flight)
        self.stats = Stats()
        self.stats.requests_in_flight, self.stats.creates_in_flight = in_flight
        self.stats.max_concurrent_creates = self.stats.creates_in_flight


def client_ip(request: web.Request) -> str:
    """gin's ClientIP with every proxy trusted: X-Forwarded-For's leftmost address
    (checked from the right), else X-Real-IP, else the peer."""
    for header in ("X-Forwarded-For", "X-Real-IP"):
        items = request.headers.get(header, "").split(",")
        for i in range(len(items) - 1, -1, -1):
            text = items[i].strip()
            try:
                ipaddress.ip_address(text)
            except ValueError:
                break
            if i == 0:
                return text
    return request.remote or ""


__all__ = ["CdpEmulator", "CdpFatal"]
