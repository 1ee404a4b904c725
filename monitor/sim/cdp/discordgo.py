"""Discord REST the way discordgo (what CDP links) calls it: its User-Agent, a bucket per
URL waited out before sending, `retry_after` slept and retried on 429 (a global 429
holding every bucket), 502 retried a few times, and errors as `DiscordHTTPError`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from monitor.errors import DiscordError, DiscordHTTPError, DiscordTimeout
from monitor.sim.cdp.settings import DISCORDGO_USER_AGENT, MAX_429_RETRIES, MAX_502_RETRIES

if TYPE_CHECKING:
    from monitor.sim.cdp.emulator import CdpEmulator


@dataclass
class Bucket:
    """discordgo's view of one rate-limit bucket (keyed by URL, like discordgo)."""

    remaining: int = 1
    reset_at: float = 0.0  # monotonic
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscordgoClient:
    """CDP's Discord session; `request` is one call with discordgo's retry rules."""

    def __init__(self, emu: CdpEmulator, session: aiohttp.ClientSession | None) -> None:
        self.emu = emu
        self._session = session
        self._own_session = session is None
        self._buckets: dict[str, Bucket] = {}
        self._global_until = 0.0  # monotonic

    async def open(self) -> None:
        if self._session is None:
            # Go's transport has no connection cap; aiohttp's default of 100 would
            # queue abandoned creates on our side instead of at Discord.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                headers={"User-Agent": DISCORDGO_USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
            )

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.contextmanager
    def _counting_create(self, create: bool) -> Iterator[None]:
        if not create:
            yield
            return
        self.emu.stats.creates_in_flight += 1
        self.emu.stats.max_concurrent_creates = max(
            self.emu.stats.max_concurrent_creates, self.emu.stats.creates_in_flight
        )
        try:
            yield
        finally:
            self.emu.stats.creates_in_flight -= 1

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, create: bool = False
    ) -> Any:
        """One call with discordgo's rate-limit handling: wait out an exhausted bucket
        before sending, sleep `retry_after` and retry on 429, retry 502 a few times."""
        bucket = self._buckets.setdefault(path, Bucket())  # discordgo keys by URL
        errors_502 = 0
        for _ in range(MAX_429_RETRIES):
            lock = bucket.lock if self.emu.settings.bucket_lock else contextlib.nullcontext()
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
                    self._global_until = self.emu.clock.monotonic() + retry_after
                await self.emu.clock.sleep(retry_after)
                continue
            if status == 502 and errors_502 < MAX_502_RETRIES:
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

    async def _wait_for_bucket(self, bucket: Bucket) -> None:
        now = self.emu.clock.monotonic()
        wait = 0.0
        if bucket.remaining < 1 and bucket.reset_at > now:
            wait = bucket.reset_at - now
        wait = max(wait, self._global_until - now)
        if wait > 0:
            await self.emu.clock.sleep(wait)
        bucket.remaining -= 1

    def _update_bucket(self, bucket: Bucket, headers: dict[str, str]) -> None:
        try:
            remaining = headers.get("X-RateLimit-Remaining")
            reset_after = headers.get("X-RateLimit-Reset-After")
            if remaining is not None:
                bucket.remaining = int(remaining)
            if reset_after is not None:
                bucket.reset_at = self.emu.clock.monotonic() + float(reset_after)
        except ValueError:
            pass  # discordgo ignores headers it cannot parse

    async def _http(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, str], Any]:
        assert self._session is not None, "start() the emulator first"
        url = self.emu.settings.discord_api_base.rstrip("/") + path
        timeout = (
            aiohttp.ClientTimeout(total=self.emu.settings.http_timeout)
            if self.emu.settings.http_timeout > 0
            else None
        )
        headers = {"Authorization": f"Bot {self.emu.settings.token}"}
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
