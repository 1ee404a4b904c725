"""Discord's rate limits, kept on our side so CDP's bot token is shared politely.

Two layers:

* a global pacer that spaces every request at least ``1 / global_rate`` seconds apart
  (callers reserve slots without holding a lock, so requests to different buckets are
  in flight concurrently), and that every bucket obeys during a global 429 pause;
* per-bucket windows learnt from ``X-RateLimit-*`` headers, keyed by bucket hash + major
  parameter (before the hash is known: method + route template + major parameter).
  An unknown bucket lets one request through to learn its limits, so a burst costs at
  most the 429s someone else caused.

No call waits longer than ``max_wait`` for its turn: ``acquire`` raises
`DiscordRateLimited` at once when the pause it would sit out is longer (a shared 429 of
1336 s would otherwise hang every later call on its bucket).

`parse_429` reads what a 429 says (how long, global or not, whose limit); `backoff_delay`
spaces the retries of failed requests.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.clock import Clock
from monitor.errors import DiscordRateLimited

# Reset-After and retry_after are rounded to milliseconds: wait a hair longer than they say.
RESET_MARGIN = 0.005
MAJOR_PARAMS = ("guild_id", "channel_id", "webhook_id")


def major_parameter(params: Mapping[str, object]) -> str:
    """The value Discord keys a bucket on besides its hash ('' for routes without one)."""
    for name in MAJOR_PARAMS:
        if name in params:
            return str(params[name])
    return ""


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, equal jitter."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


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


class Bucket:
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
        self.blocked_scope = "user"  # whose limit that 429 was
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

    def block(self, until: float, scope: str) -> None:
        """A 429 on this bucket: nothing goes before ``until`` whatever answers say."""
        if until > self.blocked_until:
            self.blocked_until, self.blocked_scope = until, scope

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def idle(self, now: float) -> bool:
        self.expire_if_due(now)
        return self.outgoing == 0 and self.reset_at is None and now >= self.blocked_until


@dataclass(frozen=True)
class Ticket:
    """An admitted request: which bucket, in which window generation."""

    bucket: Bucket
    generation: int
    method: str
    route: str
    major: str


class RateLimiter:
    """Bucket bookkeeping plus the global pacer. All methods run on one event loop."""

    def __init__(self, *, global_rate: float, clock: Clock, max_wait: float = math.inf) -> None:
        if global_rate <= 0:
            raise ValueError("global_rate must be positive")
        self._interval = 1.0 / global_rate
        self._clock = clock
        self._max_wait = max_wait
        self._next_slot = 0.0
        self._global_until = 0.0
        self._global_scope = "global"
        self._hashes: dict[tuple[str, str], str] = {}
        # Keyed by (bucket id, major parameter); the bucket id is Discord's hash once
        # known, else "METHOD /route/template".
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket_id(self, method: str, route: str) -> str:
        return self._hashes.get((method, route)) or f"{method} {route}"

    def bucket(self, method: str, route: str, major: str) -> Bucket:
        key = (self._bucket_id(method, route), major)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 4096:
                self._prune()
            b = self._buckets[key] = Bucket()
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

    async def acquire(self, method: str, route: str, major: str) -> Ticket:
        """Wait until the bucket has room and a global slot is due; raise
        `DiscordRateLimited` at once if that would take longer than ``max_wait``."""
        deadline = self._clock.monotonic() + self._max_wait
        while True:
            b = self.bucket(method, route, major)
            now = self._clock.monotonic()
            wait = b.wait_time(now)
            if wait == 0.0:
                break
            if wait is None:
                await b.changed.wait()  # an answer in flight: bounded by its timeout
                continue
            if now + wait > deadline:
                raise self._too_long(method, route, wait, b.blocked_scope, is_global=False)
            await self._clock.sleep(wait)
        b.remaining -= 1
        b.outgoing += 1
        ticket = Ticket(b, b.generation, method, route, major)
        try:
            await self._global_slot(deadline, method, route)
        except BaseException:
            self.release(ticket, None)
            raise
        return ticket

    def _too_long(
        self, method: str, route: str, wait: float, scope: str, *, is_global: bool
    ) -> DiscordRateLimited:
        why = f"rate limited: would wait {wait:.2f}s, over max_ratelimit_wait {self._max_wait:g}s"
        return DiscordRateLimited(
            retry_after=wait,
            is_global=is_global,
            scope=scope,
            message=why,
            route=route,
            method=method,
        )

    async def _global_slot(self, deadline: float, method: str, route: str) -> None:
        while True:
            now = self._clock.monotonic()
            slot = max(now, self._next_slot, self._global_until)
            if slot > deadline:  # checked before reserving, so no slot is wasted
                scope = self._global_scope if self._global_until > now else "global"
                raise self._too_long(method, route, slot - now, scope, is_global=True)
            self._next_slot = slot + self._interval
            if slot > now:
                await self._clock.sleep(slot - now)
            # A global 429 may have arrived while we slept: take a later slot then.
            if self._clock.monotonic() >= self._global_until:
                return

    def global_wait(self) -> float:
        """Seconds every request of this bot must still wait (a global 429 or a ban):
        CDP shares the token and the IP, so its creates wait as long."""
        return max(0.0, self._global_until - self._clock.monotonic())

    def release(self, ticket: Ticket, headers: Mapping[str, str] | None) -> None:
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

    def pause_bucket(self, ticket: Ticket, seconds: float, scope: str = "user") -> None:
        ticket.bucket.block(self._clock.monotonic() + seconds + RESET_MARGIN, scope)
        ticket.bucket.notify()

    def obey_429(self, ticket: Ticket, said: TooManyRequests) -> None:
        """Hold back the whole token or the ticket's bucket for as long as a 429 says."""
        if said.is_global:
            self.pause_global(said.retry_after, said.scope)
        else:
            self.pause_bucket(ticket, said.retry_after, said.scope)

    def pause_global(self, seconds: float, scope: str = "global") -> None:
        until = self._clock.monotonic() + seconds + RESET_MARGIN
        if until > self._global_until:
            self._global_until, self._global_scope = until, scope

    @property
    def global_paused_until(self) -> float:
        return self._global_until


@dataclass(frozen=True)
class TooManyRequests:
    """What a 429 says: wait `retry_after` seconds, on the whole token or one bucket."""

    retry_after: float
    is_global: bool
    scope: str  # X-RateLimit-Scope: user, global or shared


def parse_429(headers: Mapping[str, str], data: Mapping[str, Any]) -> TooManyRequests:
    """Read a 429 from its headers and JSON body (the body's retry_after wins)."""
    retry_after = float_or_none(data.get("retry_after"))
    if retry_after is None:
        retry_after = float_or_none(headers.get("Retry-After")) or 1.0
    is_global = bool(data.get("global")) or headers.get("X-RateLimit-Global", "").lower() == "true"
    scope = headers.get("X-RateLimit-Scope") or ("global" if is_global else "user")
    return TooManyRequests(retry_after, is_global, scope)


def float_or_none(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
