"""CDP emulator: coze-discord-proxy's channel lifecycle, leaks included, over real HTTP.

It behaves the way coze-discord-proxy (Go, github deanxv/coze-discord-proxy) does toward
its clients and toward Discord (here: the Discord simulator), so the channel leak is
real in emulation:

- every `POST /v1/chat/completions` / `POST /v1/images/generations` without a
  `channelId` creates `cdp-chat-<requestId>` through CreateChannelWithRetry: up to
  `attempts` attempts of `attempt_timeout` each, a timed-out attempt is abandoned but
  never cancelled, so its channel appears later with no delete timer;
- after the response ends an in-memory timer deletes the channel (`auto_delete` s);
  a failed delete is never retried, and a restart (`POST /_cdp/restart`) forgets timers;
- the log lines cdp-monitor reads (`[GIN]`, `[WARN] ... retrying...N`, `[ERR] ...`).

    emu = CdpEmulator(CdpSettings(discord_api_base=sim.api_base, guild_id=...))
    await emu.start("127.0.0.1", 0)      # 0 = a free port
    emu.base_url, emu.admin_url
    await emu.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.errors import DiscordError, DiscordHTTPError, DiscordTimeout
from monitor.httpserve import start_site
from monitor.vocab import CHANNEL_PREFIX, LEGACY_CHANNEL_PREFIX

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# discordgo v0.27.1 is what CDP links; Discord sees this User-Agent from CDP.
DISCORDGO_USER_AGENT = "DiscordBot (https://github.com/bwmarrin/discordgo, v0.27.1)"
MAX_MESSAGE_LEN = 2000
IMAGE_URL = "https://example.invalid/img.png"
MODELS = ("gpt-4o", "gpt-4o-mini", "dall-e-3")
_ID_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LIMIT_CODE = 30013
_MAX_429_RETRIES = 20  # discordgo retries 429s forever; a bound keeps stop() prompt
_MAX_502_RETRIES = 3  # discordgo's MaxRestRetries
# The current request's id, set by the middleware (a ContextVar works with every
# aiohttp version, unlike typed request keys).
_request_id: ContextVar[str] = ContextVar("cdp_request_id")


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


class _ApiError(Exception):
    """An error answer a handler gives (turned into JSON by the middleware)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body))


def _openai_error(
    status: int, message: str, type_: str = "invalid_request_error", code: str | None = None
) -> _ApiError:
    return _ApiError(
        status, {"error": {"message": message, "type": type_, "code": code or str(status)}}
    )


def format_go_duration(seconds: float) -> str:
    """`time.Duration.String()` as Go prints it: `1.234s`, `3m0s`, `250ms`, `12.5µs`."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def frac(value: int, unit: int) -> str:
        whole, rest = divmod(value, unit)
        if not rest:
            return str(whole)
        digits = str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}"

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    hours, ns = divmod(ns, 3_600_000_000_000)
    minutes, ns = divmod(ns, 60_000_000_000)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{frac(ns, 1_000_000_000)}s"


def _go_error_text(exc: BaseException) -> str:
    """How discordgo's RESTError reads in CDP's logs: `HTTP 400 Bad Request, {...}`."""
    if isinstance(exc, DiscordHTTPError):
        try:
            phrase = HTTPStatus(exc.status).phrase
        except ValueError:
            phrase = ""
        body = json.dumps({"message": exc.discord_message, "code": exc.code or 0})
        return f"HTTP {exc.status} {phrase}, {body}"
    return str(exc) or type(exc).__name__


@dataclass
class _Bucket:
    """discordgo's view of one rate-limit bucket (keyed by URL, like discordgo)."""

    remaining: int = 1
    reset_at: float = 0.0  # monotonic
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Stats:
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
        self._session = session
        self._own_session = session is None
        self._random = random.Random(settings.seed)
        self.stats = _Stats()
        self.log_lines: deque[str] = deque(maxlen=settings.log_capacity)
        self._log_file: TextIO | None = None
        self._buckets: dict[str, _Bucket] = {}
        self._global_until = 0.0  # monotonic
        self._delete_timers: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._default_channel: str | None = settings.default_channel_id
        self._default_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()
        self.host = ""
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self.settings.log_path is not None:
            self._log_file = self.settings.log_path.open("a", encoding="utf-8")
        if self._session is None:
            # Go's transport has no connection cap; aiohttp's default of 100 would
            # queue abandoned creates on our side instead of at Discord.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                headers={"User-Agent": DISCORDGO_USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
            )
        self._runner, self.port = await start_site(self.app, host, port)
        self.host = host

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks = [*self._delete_timers.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._delete_timers.clear()
        self._background.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return self.base_url + "/_cdp"

    # -- logging (CDP's formats) -------------------------------------------------------

    def _now_text(self) -> str:
        # Go formats local time without a zone.
        return datetime.fromtimestamp(self.clock.time()).strftime("%Y/%m/%d - %H:%M:%S")

    def _emit(self, line: str) -> None:
        self.log_lines.append(line)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def log(self, level: str, request_id: str | None, message: str) -> None:
        """common.logHelper: `[LEVEL] time | id | message ` (trailing space as in Go)."""
        self._emit(f"[{level}] {self._now_text()} | {request_id or 'UNKNOWN'} | {message} ")

    def _log_gin(
        self, request_id: str, status: int, seconds: float, ip: str, method: str, path: str
    ) -> None:
        # middleware/logger.go: "[GIN] %s | %s | %3d | %13v | %15s | %7s %s"
        self._emit(
            f"[GIN] {self._now_text()} | {request_id} | {status:3d} | "
            f"{format_go_duration(seconds):>13} | {ip:>15} | {method:>7} {path}"
        )

    def new_request_id(self) -> str:
        """middleware/request-id.go: local time, the nanoseconds, 8 random characters."""
        now = self.clock.time()
        stamp = datetime.fromtimestamp(now).strftime("%Y%m%d%H%M%S")
        nanos = int(now * 1e9) % 1_000_000_000
        tail = "".join(self._random.choice(_ID_CHARS) for _ in range(8))
        return f"{stamp}{nanos}{tail}"

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/images/generations", self._images)
        r.add_get("/v1/models", self._models)
        r.add_post("/api/channel/create", self._api_channel_create)
        r.add_post("/api/thread/create", self._api_thread_create)
        r.add_get("/api/channel/del/all/cdp", self._api_del_all)
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
        _request_id.set(rid)
        started = self.clock.monotonic()
        self.stats.requests_in_flight += 1
        status = 500
        try:
            try:
                self._authorize(request)
                response = await handler(request)
            except _ApiError as exc:
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
            self._log_gin(
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
                raise _openai_error(
                    401, "authorization(proxy-secret) check failed", code="invalid_authorization"
                )
        elif request.path.startswith("/api/"):
            if request.headers.get("proxy-secret", "") not in secrets:
                raise _ApiError(
                    401, {"success": False, "message": "no valid proxy-secret was provided"}
                )

    # -- request bodies ----------------------------------------------------------------

    async def _json_object(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _openai_error(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _openai_error(400, "request body must be a JSON object")
        return body

    @staticmethod
    def _optional(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
        value = body.get(key)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise _openai_error(400, f"`{key}` must be a {kind.__name__}")
        return value

    def _channel_id_field(self, body: dict[str, Any]) -> str | None:
        value = self._optional(body, "channelId", str, None)
        return value or None  # an empty channelId means "create one", as in CDP

    @staticmethod
    def _prompt(messages: Any) -> str:
        if not isinstance(messages, list) or not messages:
            raise _openai_error(400, "`messages` must be a non-empty array")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _openai_error(400, "each message must be an object with a `role`")
        chosen = next((m for m in reversed(messages) if m["role"] == "user"), messages[-1])
        content = chosen.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "\n".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str) or not content.strip():
            raise _openai_error(400, "the last user message has no text content")
        return content[:MAX_MESSAGE_LEN]

    # -- OpenAI endpoints --------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        created = int(self.clock.time())
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": created, "owned_by": "coze"}
                    for m in MODELS
                ],
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rid = _request_id.get()
        body = await self._json_object(request)
        model = self._optional(body, "model", str, "gpt-4o")
        stream = self._optional(body, "stream", bool, False)
        channel_field = self._channel_id_field(body)
        prompt = self._prompt(body.get("messages"))
        channel_id, created = await self._send_channel(rid, channel_field)
        try:
            reply = await self._converse(rid, channel_id, prompt)
            if stream:
                return await self._stream_reply(request, rid, model, reply)
            return web.json_response(self._completion(rid, model, prompt, reply))
        finally:
            # CDP defers SetChannelDeleteTimer: it runs when the handler returns,
            # whether the conversation worked or not.
            if created:
                self._schedule_delete(channel_id)

    async def _images(self, request: web.Request) -> web.Response:
        rid = _request_id.get()
        body = await self._json_object(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise _openai_error(400, "`prompt` must be a non-empty string")
        self._optional(body, "model", str, None)
        channel_field = self._channel_id_field(body)
        channel_id, created = await self._send_channel(rid, channel_field)
        try:
            await self._converse(rid, channel_id, prompt[:MAX_MESSAGE_LEN], image=True)
            return web.json_response(
                {"created": int(self.clock.time()), "data": [{"url": IMAGE_URL}]}
            )
        finally:
            if created:
                self._schedule_delete(channel_id)

    def _completion(self, rid: str, model: str, prompt: str, reply: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(prompt) // 4)
        completion_tokens = max(1, len(reply) // 4)
        return {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": int(self.clock.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def _stream_reply(
        self, request: web.Request, rid: str, model: str, reply: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Request-Id": rid,
            }
        )
        await response.prepare(request)
        pieces = _split(reply, self.settings.stream_chunks)
        created = int(self.clock.time())
        for i, piece in enumerate(pieces):
            if i:
                await self.clock.sleep(self.settings.stream_chunk_delay)
            last = i == len(pieces) - 1
            delta: dict[str, str] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
                ],
            }
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _converse(
        self, rid: str, channel_id: str, prompt: str, *, image: bool = False
    ) -> str:
        """Post the prompt, let the Coze bot think, and have it answer in the channel."""
        try:
            await self._discord("POST", f"/channels/{channel_id}/messages", {"content": prompt})
            await self.clock.sleep(self.settings.reply_delay)
            reply = (
                f"Here is your image: {IMAGE_URL}"
                if image
                else f"This is the simulated Coze bot answering: {prompt}"
            )[:MAX_MESSAGE_LEN]
            await self._discord("POST", f"/channels/{channel_id}/messages", {"content": reply})
        except DiscordError as exc:
            message = f"discord send message error: {_go_error_text(exc)}"
            self.log("ERR", rid, message)
            raise _openai_error(500, message, "request_error") from exc
        return reply

    # -- channels: the part that leaks -------------------------------------------------

    async def _send_channel(self, rid: str, channel_field: str | None) -> tuple[str, bool]:
        """The channel to talk in and whether this request created it (so owns a timer)."""
        if channel_field:
            return channel_field, False
        if self.settings.default_channel_enable:
            return await self._default_channel_id(rid), False
        name = f"{CHANNEL_PREFIX}{rid}"
        return await self.create_channel_with_retry(rid, name), True

    async def _default_channel_id(self, rid: str) -> str:
        async with self._default_lock:
            if self._default_channel is None:
                try:
                    self._default_channel = await self._create_channel("cdp-default")
                except DiscordError as exc:
                    raise _openai_error(500, _go_error_text(exc), "request_error") from exc
            return self._default_channel

    async def create_channel_with_retry(self, rid: str, name: str) -> str:
        """CreateChannelWithRetry: timed-out attempts keep running in the background."""
        attempts = self.settings.attempts
        timeouts = 0
        for attempt in range(1, attempts + 1):
            task = asyncio.create_task(self._create_channel(name))
            self._track(task)
            if not await self._finished_within(task, self.settings.attempt_timeout):
                # Never cancelled: the request is already at Discord and its channel
                # will exist, with nobody left to delete it.
                task.add_done_callback(self._abandoned_done)
                self.stats.create_timeouts += 1
                timeouts += 1
                if attempt < attempts:
                    self.log("WARN", rid, f"Create channel timed out, retrying...{attempt}")
                continue
            exc = task.exception()
            if exc is None:
                return task.result()
            if isinstance(exc, DiscordHTTPError) and exc.code == _LIMIT_CODE:
                message = (
                    f"Maximum number of server channels reached ({_LIMIT_CODE}), "
                    f"please delete unused channels: {_go_error_text(exc)}"
                )
                self.log("ERR", rid, message)
                raise _openai_error(500, message, "request_error")
            self.log("WARN", rid, f"Failed to create channel, error: {_go_error_text(exc)}")
        if timeouts == attempts:
            message = f"failed after {attempts} attempts due to timeout, please reset BOT_TOKEN"
        else:
            message = f"failed to create channel after {attempts} attempts, please reset BOT_TOKEN"
        self.log("ERR", rid, message)
        raise _openai_error(500, message, "request_error")

    async def _finished_within(self, task: asyncio.Task[str], timeout: float) -> bool:
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return task.done()

    def _abandoned_done(self, task: asyncio.Task[str]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self.stats.late_channels += 1
        self.stats.late_channel_ids.append(task.result())

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed background attempt is no crash

    async def _create_channel(self, name: str, parent_id: str | None = None) -> str:
        body: dict[str, Any] = {"name": name, "type": 0}
        if parent_id:
            body["parent_id"] = parent_id
        self.stats.create_attempts += 1
        data = await self._discord(
            "POST", f"/guilds/{self.settings.guild_id}/channels", body, create=True
        )
        self.stats.channels_created += 1
        return str(data["id"])

    def _schedule_delete(self, channel_id: str) -> None:
        """SetChannelDeleteTimer: an in-memory timer, replaced if one exists."""
        if self.settings.auto_delete <= 0:
            return
        old = self._delete_timers.pop(channel_id, None)
        if old is not None:
            old.cancel()
        self._delete_timers[channel_id] = asyncio.create_task(self._delete_later(channel_id))

    async def _delete_later(self, channel_id: str) -> None:
        try:
            await self.clock.sleep(self.settings.auto_delete)
            await self._discord("DELETE", f"/channels/{channel_id}")
            self.stats.channels_deleted += 1
        except DiscordError as exc:  # never retried, as in CDP
            self.stats.delete_failures += 1
            self.log("ERR", None, f"delete channel {channel_id} error: {_go_error_text(exc)}")
        finally:
            if self._delete_timers.get(channel_id) is asyncio.current_task():
                del self._delete_timers[channel_id]

    # -- CDP's /api endpoints ----------------------------------------------------------

    async def _api_channel_create(self, request: web.Request) -> web.Response:
        rid = _request_id.get()
        body = await self._json_object(request)
        name = body.get("name")
        parent = body.get("parentId") or None
        if not isinstance(name, str) or not name:
            raise _openai_error(400, "`name` must be a non-empty string")
        if parent is not None and not isinstance(parent, str):
            raise _openai_error(400, "`parentId` must be a string")
        try:
            channel_id = await self._create_channel(name, parent)
        except DiscordError as exc:
            self.log("ERR", rid, f"create channel error: {_go_error_text(exc)}")
            # CDP answers its /api failures with 200 and success=false.
            return web.json_response({"success": False, "message": "discord create channel error"})
        return web.json_response({"success": True, "data": {"id": channel_id, "name": name}})

    async def _api_thread_create(self, request: web.Request) -> web.Response:
        await self._json_object(request)
        raise _ApiError(501, {"success": False, "message": "thread creation is not emulated"})

    async def _api_del_all(self, request: web.Request) -> web.Response:
        """ChannelDelAllForCdp: every temporary channel, in use or not, one by one."""
        rid = _request_id.get()
        deleted = 0
        try:
            channels = await self._discord("GET", f"/guilds/{self.settings.guild_id}/channels")
            for channel in channels:
                name = str(channel.get("name", ""))
                if name.startswith((CHANNEL_PREFIX, LEGACY_CHANNEL_PREFIX)):
                    await self._discord("DELETE", f"/channels/{channel['id']}")
                    deleted += 1
                    self.stats.channels_deleted += 1
        except DiscordError as exc:  # stops at the first error
            self.log("ERR", rid, f"delete channel error: {_go_error_text(exc)}")
            return web.json_response(
                {"success": False, "message": "discord delete channel error", "deleted": deleted}
            )
        return web.json_response(
            {"success": True, "message": "discord delete channel success", "deleted": deleted}
        )

    # -- Discord REST, the way discordgo does it ---------------------------------------

    @contextlib.contextmanager
    def _counting_create(self, create: bool) -> Iterator[None]:
        if not create:
            yield
            return
        self.stats.creates_in_flight += 1
        self.stats.max_concurrent_creates = max(
            self.stats.max_concurrent_creates, self.stats.creates_in_flight
        )
        try:
            yield
        finally:
            self.stats.creates_in_flight -= 1

    async def _discord(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, create: bool = False
    ) -> Any:
        """One call with discordgo's rate-limit handling: wait out an exhausted bucket
        before sending, sleep `retry_after` and retry on 429, retry 502 a few times."""
        bucket = self._buckets.setdefault(path, _Bucket())  # discordgo keys by URL
        errors_502 = 0
        for _ in range(_MAX_429_RETRIES):
            lock = bucket.lock if self.settings.bucket_lock else contextlib.nullcontext()
            async with lock:
                await self._wait_for_bucket(bucket)
                with self._counting_create(create):
                    status, headers, data = await self._http(method, path, body)
                self._update_bucket(bucket, headers)
            if status == 429:
                retry_after = 1.0
                if isinstance(data, dict) and isinstance(data.get("retry_after"), int | float):
                    retry_after = float(data["retry_after"])
                if headers.get("X-RateLimit-Global") == "true" or (
                    isinstance(data, dict) and data.get("global") is True
                ):
                    self._global_until = self.clock.monotonic() + retry_after
                await self.clock.sleep(retry_after)
                continue
            if status == 502 and errors_502 < _MAX_502_RETRIES:
                errors_502 += 1
                continue
            if status >= 400:
                code = data.get("code") if isinstance(data, dict) else None
                message = data.get("message", "") if isinstance(data, dict) else str(data)
                raise DiscordHTTPError(
                    status,
                    code=code if isinstance(code, int) else None,
                    message=str(message),
                    route=path,
                    method=method,
                )
            return data
        raise DiscordHTTPError(429, message="rate limited too often", route=path, method=method)

    async def _wait_for_bucket(self, bucket: _Bucket) -> None:
        now = self.clock.monotonic()
        wait = 0.0
        if bucket.remaining < 1 and bucket.reset_at > now:
            wait = bucket.reset_at - now
        wait = max(wait, self._global_until - now)
        if wait > 0:
            await self.clock.sleep(wait)
        bucket.remaining -= 1

    def _update_bucket(self, bucket: _Bucket, headers: dict[str, str]) -> None:
        try:
            remaining = headers.get("X-RateLimit-Remaining")
            reset_after = headers.get("X-RateLimit-Reset-After")
            if remaining is not None:
                bucket.remaining = int(remaining)
            if reset_after is not None:
                bucket.reset_at = self.clock.monotonic() + float(reset_after)
        except ValueError:
            pass  # discordgo ignores headers it cannot parse

    async def _http(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, str], Any]:
        assert self._session is not None, "start() the emulator first"
        url = self.settings.discord_api_base.rstrip("/") + path
        timeout = (
            aiohttp.ClientTimeout(total=self.settings.http_timeout)
            if self.settings.http_timeout > 0
            else None
        )
        headers = {"Authorization": f"Bot {self.settings.token}"}
        try:
            kwargs: dict[str, Any] = {"json": body, "headers": headers}
            if timeout is not None:
                kwargs["timeout"] = timeout
            async with self._session.request(method, url, **kwargs) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers = dict(resp.headers)
        except TimeoutError as exc:
            raise DiscordTimeout(f"{method} {path}: timed out", route=path, method=method) from exc
        except aiohttp.ClientError as exc:
            raise DiscordError(f"{method} {path}: {exc}", route=path, method=method) from exc
        try:
            data: Any = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            data = raw.decode("utf-8", "replace")
        if status < 300 and not isinstance(data, dict | list):
            # every call we make answers a JSON object or array on success
            raise DiscordError(f"{method} {path}: malformed response", route=path, method=method)
        return status, resp_headers, data

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
            "pending_delete_timers": len(self._delete_timers),
            "pending_delete_channel_ids": sorted(self._delete_timers),
        }

    def restart(self) -> int:
        """What a CDP restart does to delete timers: forgets them. Returns how many."""
        timers = list(self._delete_timers.values())
        self._delete_timers.clear()
        for task in timers:
            task.cancel()
        return len(timers)

    def reset_stats(self) -> None:
        in_flight = (self.stats.requests_in_flight, self.stats.creates_in_flight)
        self.stats = _Stats()
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


def _split(text: str, n: int) -> list[str]:
    """`text` in `n` consecutive pieces of near-equal length (some may be empty)."""
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


__all__ = ["CdpEmulator", "CdpSettings", "format_go_duration"]
