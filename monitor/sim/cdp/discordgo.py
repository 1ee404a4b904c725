"""Discord REST as discordgo v0.27.1 (what CDP links) calls it, and its error texts.

- One lock per bucket, keyed by URL (restapi.go:167-192): every call of one URL, e.g.
  all creates AND listings of a guild (`/guilds/<id>/channels`), waits for the one
  before it. The lock is held from before the request until its response headers
  arrive (`Bucket.Release`, ratelimit.go:95-96, restapi.go:234-246); an exhausted
  bucket or a global limit is slept out while holding it.
- `http.Client{Timeout: 20 s}` (discord.go:45), scaled by `time_scale`.
- 502 retried `MaxRestRetries` (3) times; every 429 slept out for `retry_after` (as
  Discord says, never scaled, no cap) and retried (restapi.go:269-294).
- Errors carry Go's text: `HTTP 400 Bad Request, <body>` (restapi.go:81),
  `Post "<url>": context deadline exceeded (Client.Timeout exceeded while awaiting
  headers)`, `Exceeded Max retries HTTP 502 Bad Gateway, <body>`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from monitor.clock import Clock
from monitor.sim.cdp.settings import DISCORDGO_USER_AGENT, MAX_502_RETRIES, CdpSettings, Stats

# The URL CDP's errors name (discordgo's EndpointAPI), whatever the emulator talks to.
SHOWN_API = "https://discord.com/api/v9"


class GoError(Exception):
    """An error as CDP sees it: `str(exc)` is Go's `err.Error()`."""


class RestError(GoError):
    """discordgo's RESTError: `HTTP <status line>, <raw body>`."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status} {reason}, {body.decode('utf-8', 'replace')}")


def json_syntax_error(raw: bytes) -> str:
    """Go's `encoding/json` text for a body that is not JSON."""
    text = raw.decode("utf-8", "replace").lstrip()
    if not text:
        return "unexpected end of JSON input"
    return f"invalid character '{text[0]}' looking for beginning of value"


def go_op(method: str) -> str:
    return method[:1].upper() + method[1:].lower()  # url.Error's Op: "Post", "Get"


@dataclass
class Bucket:
    remaining: int = 1
    reset_at: float = 0.0  # monotonic
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscordgoClient:
    """CDP's discordgo Session for REST; one per CDP process (`close` on a crash)."""

    def __init__(self, settings: CdpSettings, clock: Clock, stats: Callable[[], Stats]) -> None:
        self.settings = settings
        self.clock = clock
        self._stats = stats
        self._session: aiohttp.ClientSession | None = None
        self._buckets: dict[str, Bucket] = {}
        self._global_until = 0.0  # monotonic
        self.lock_order: list[str] = []  # paths in the order their bucket was taken
        self._calls: set[asyncio.Task[Any]] = set()

    async def open(self) -> None:
        # Go's transport has no connection cap; aiohttp's default of 100 would queue
        # abandoned creates on our side instead of at Discord.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"User-Agent": DISCORDGO_USER_AGENT},
        )

    async def close(self) -> None:
        """The process is gone: its calls in flight die with it."""
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() the emulator first"
        return self._session

    @property
    def pending_calls(self) -> int:
        """Calls still on their way, those CDP stopped waiting for included."""
        return len(self._calls)

    def bucket(self, path: str) -> Bucket:
        return self._buckets.setdefault(path, Bucket())

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, create: bool = False
    ) -> Any:
        """One discordgo call: the decoded JSON answer, or a GoError."""
        bucket = self.bucket(path)
        sequence = 0
        while True:
            status, reason, raw = await self._locked_call(bucket, method, path, body, create)
            if status in (200, 201, 204):
                return json.loads(raw) if raw else None
            if status == 502:
                if sequence < MAX_502_RETRIES:
                    sequence += 1
                    continue
                text = raw.decode("utf-8", "replace")
                raise GoError(f"Exceeded Max retries HTTP {status} {reason}, {text}")
            if status == 429:
                await self._sleep_429(raw)
                continue
            raise RestError(status, reason, raw)

    async def _sleep_429(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            # a Cloudflare ban answers text/plain: discordgo gives up with this error
            raise GoError(f"json unmarshal: {json_syntax_error(raw)}") from None
        retry_after = data.get("retry_after", 0) if isinstance(data, dict) else 0
        if not isinstance(retry_after, int | float):
            retry_after = 0
        await self.clock.sleep(float(retry_after))  # Discord's seconds, not scaled

    async def _locked_call(
        self, bucket: Bucket, method: str, path: str, body: dict[str, Any] | None, create: bool
    ) -> tuple[int, str, bytes]:
        """The call with the bucket locked until its headers (or an error) arrive.

        On the 20 s timeout CDP's error comes at once; the request itself is left to
        finish (the simulator reads a body only after its latency, where Discord had
        it already), so a create Discord was working on still lands, as it does."""
        shown = f'{go_op(method)} "{SHOWN_API}{path}"'
        await bucket.lock.acquire()
        holder = [bucket.lock]  # emptied when released, once
        try:
            self.lock_order.append(path)
            await self._wait_for_bucket(bucket)
            call = asyncio.get_running_loop().create_task(
                self._call(bucket, holder, method, path, body, create)
            )
            self._calls.add(call)
            call.add_done_callback(self._call_done)
            timeout = self.settings.scaled(self.settings.http_timeout)
            try:
                return await asyncio.wait_for(asyncio.shield(call), timeout)
            except TimeoutError:
                if create:
                    call.add_done_callback(self._landed)
                raise
        except TimeoutError:
            raise GoError(
                f"{shown}: context deadline exceeded (Client.Timeout exceeded while awaiting"
                " headers)"
            ) from None
        except aiohttp.ClientError as exc:
            raise GoError(f"{shown}: {exc}") from None
        finally:
            _release(holder)

    async def _call(
        self,
        bucket: Bucket,
        holder: list[asyncio.Lock],
        method: str,
        path: str,
        body: dict[str, Any] | None,
        create: bool,
    ) -> tuple[int, str, bytes]:
        url = self.settings.discord_api_base.rstrip("/") + path
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bot {self.settings.token}"}}
        if body is not None:
            kwargs["json"] = body
        with self._counting(create):
            async with self.session.request(method, url, **kwargs) as resp:
                self._update_bucket(bucket, resp.headers)
                _release(holder)  # Bucket.Release: at the headers
                raw = await resp.read()
                return resp.status, resp.reason or "", raw

    def _landed(self, call: asyncio.Task[Any]) -> None:
        """A create CDP gave up on at the client timeout that Discord did make."""
        if call.cancelled() or call.exception() is not None:
            return
        status, _, raw = call.result()
        if status in (200, 201):
            stats = self._stats()
            stats.late_channels += 1
            stats.late_channel_ids.append(str(json.loads(raw)["id"]))

    def _call_done(self, call: asyncio.Task[Any]) -> None:
        self._calls.discard(call)
        if not call.cancelled():
            call.exception()  # an abandoned call's failure is nobody's business

    @contextmanager
    def _counting(self, create: bool) -> Iterator[None]:
        stats = self._stats()
        if create:
            stats.creates_in_flight += 1
            stats.max_concurrent_creates = max(
                stats.max_concurrent_creates, stats.creates_in_flight
            )
        try:
            yield
        finally:
            if create:
                self._stats().creates_in_flight -= 1

    async def _wait_for_bucket(self, bucket: Bucket) -> None:
        """RateLimiter.GetWaitTime, slept while the bucket is locked."""
        now = self.clock.monotonic()
        wait = 0.0
        if bucket.remaining < 1 and bucket.reset_at > now:
            wait = bucket.reset_at - now
        elif self._global_until > now:
            wait = self._global_until - now
        if wait > 0:
            await self.clock.sleep(wait)
        bucket.remaining -= 1

    def _update_bucket(self, bucket: Bucket, headers: Any) -> None:
        try:
            reset_after = headers.get("X-RateLimit-Reset-After")
            if reset_after is not None:
                until = self.clock.monotonic() + float(reset_after)
                if headers.get("X-RateLimit-Global"):
                    self._global_until = until
                else:
                    bucket.reset_at = until
            remaining = headers.get("X-RateLimit-Remaining")
            if remaining is not None:
                bucket.remaining = int(remaining)
        except ValueError:
            pass  # discordgo returns the parse error; the call itself already happened


def _release(holder: list[asyncio.Lock]) -> None:
    if holder:
        holder.pop().release()
