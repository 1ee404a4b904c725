"""The REST client against a Cloudflare ban and long rate-limit pauses.

A small real aiohttp server on a free loopback port answers what Discord and Cloudflare
answer: Discord's answers are JSON with ``Via: 1.1 google`` and ``X-RateLimit-*``
headers; Cloudflare's ban is a 429 with a text or HTML body (``error code: 1015``), no
``Via`` and no rate-limit headers, on every route. Time is an injected clock.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.clock import Clock, FakeClock, ManualClock
from monitor.discord.ban import CLOUDFLARE_BAN_DEFAULT, ban_length, is_cloudflare_ban
from monitor.discord.ratelimit import RateLimiter
from monitor.discord.rest import DiscordRestClient
from monitor.errors import DiscordCloudflareBan, DiscordError, DiscordRateLimited
from monitor.metrics import Metrics
from monitor.vocab import RATELIMIT_SCOPES
from tests.helpers.upstream import serve_all

DISCORD = {"Via": "1.1 google"}
BAN_TEXT = "error code: 1015"


@dataclass
class FrontDoor:
    """What the server answers: Discord, or Cloudflare's ban, or a scripted 429."""

    ban: bool = False
    ban_body: str = BAN_TEXT
    ban_type: str = "text/plain"
    ban_retry_after: str | None = None
    ratelimit_429: dict[str, Any] | None = None  # one Discord 429 (JSON body) to answer
    ratelimit_scope: str = "shared"
    seen: Counter[str] = field(default_factory=Counter)  # "METHOD /path" -> requests

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen[f"{request.method} {request.path}"] += 1
        if self.ban:
            headers = {} if self.ban_retry_after is None else {"Retry-After": self.ban_retry_after}
            return web.Response(
                status=429, text=self.ban_body, content_type=self.ban_type, headers=headers
            )
        if self.ratelimit_429 is not None:
            body, self.ratelimit_429 = self.ratelimit_429, None
            headers = {
                **DISCORD,
                "Retry-After": str(int(body["retry_after"]) + 1),
                "X-RateLimit-Scope": self.ratelimit_scope,
            }
            if body.get("global"):
                headers["X-RateLimit-Global"] = "true"
            return _json(body, status=429, headers=headers)
        limits = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": "b-" + request.path.split("/")[3],
        }
        return _json({"id": "1", "path": request.path}, headers={**DISCORD, **limits})

    def total(self) -> int:
        return sum(self.seen.values())


def _json(body: Any, *, status: int = 200, headers: dict[str, str]) -> web.Response:
    # Discord's Content-Type is exactly application/json, without a charset.
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )


@asynccontextmanager
async def front_door(door: FrontDoor) -> AsyncIterator[str]:
    async with serve_all(door.handle) as url:
        yield url + "/api/v10"


def new_client(
    http: aiohttp.ClientSession, api_base: str, clock: Clock, **kw: Any
) -> DiscordRestClient:
    return DiscordRestClient(
        session=http,
        metrics=Metrics(CollectorRegistry()),
        token="t",
        api_base=api_base,
        clock=clock,
        rng=random.Random(0),
        **{"global_rate": 50.0, "max_retries": 3, "timeout": 10.0, **kw},
    )


def ratelimited(client: DiscordRestClient, scope: str) -> float:
    value = client.metrics.registry.get_sample_value(
        "cdpmon_discord_ratelimited_total", {"scope": scope}
    )
    assert value is not None, f"scope {scope} not pre-created"
    return value


async def every_route(client: DiscordRestClient) -> list[BaseException | Any]:
    calls = [
        client.get_channel(11),
        client.get_current_user(),
        client.list_guild_channels(22),
        client.create_message(33, "hi"),
        client.delete_channel(44),
    ]
    return list(await asyncio.gather(*calls, return_exceptions=True))


# -- telling a ban from Discord's own 429 ---------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "ban"),
    [
        ({}, b"error code: 1015", True),
        ({}, b"<html><title>Access denied | discord.com</title></html>", True),
        ({}, b"", True),
        ({"Retry-After": "1800"}, b"error code: 1015", True),
        (
            {"Via": "1.1 google"},
            b'{"message": "You are being rate limited.", "retry_after": 1}',
            False,
        ),
        # JSON without Via (a proxy stripped it; our simulator before issue 11): Discord's.
        ({}, b'{"message": "You are being rate limited.", "retry_after": 1}', False),
        # Via with a text body: made behind Discord's edge; not an IP ban.
        ({"Via": "1.1 google"}, b"upstream error", False),
    ],
)
def test_a_ban_is_a_429_without_via_and_without_json(
    headers: dict[str, str], body: bytes, ban: bool
) -> None:
    assert is_cloudflare_ban(headers, body) is ban


def test_ban_length_is_retry_after_else_the_long_default() -> None:
    assert ban_length({"Retry-After": "1800"}) == 1800.0
    assert ban_length({}) == CLOUDFLARE_BAN_DEFAULT == 3600.0
    for junk in ("soon", "0", "-5", "inf", "nan"):
        assert ban_length({"Retry-After": junk}) == CLOUDFLARE_BAN_DEFAULT, junk


def test_cloudflare_is_a_ratelimit_scope_known_up_front() -> None:
    assert "cloudflare" in RATELIMIT_SCOPES


# -- the client under a ban -----------------------------------------------------------------


async def test_a_ban_stops_every_route_without_retrying(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    door = FrontDoor(ban=True)
    async with front_door(door) as api_base:
        client = new_client(http, api_base, clock)
        assert ratelimited(client, "cloudflare") == 0  # pre-created: increase() sees the first
        with pytest.raises(DiscordCloudflareBan) as err:
            await client.get_channel(10)
        assert door.total() == 1  # never retried
        assert err.value.status == 429 and err.value.scope == "cloudflare"
        assert err.value.retry_after == CLOUDFLARE_BAN_DEFAULT
        assert err.value.until == clock.monotonic() + CLOUDFLARE_BAN_DEFAULT
        assert BAN_TEXT in str(err.value)
        # Every other call, on every route and method, fails at once without sending.
        results = await every_route(client)
        assert all(isinstance(r, DiscordCloudflareBan) for r in results), results
        assert door.total() == 1
        assert ratelimited(client, "cloudflare") == 1
        assert all(ratelimited(client, s) == 0 for s in ("user", "global", "shared"))
        assert client.stats.retries == 0
        assert client.banned_for == CLOUDFLARE_BAN_DEFAULT


async def test_concurrent_calls_send_at_most_one_request_per_route(
    http: aiohttp.ClientSession,
) -> None:
    door = FrontDoor(ban=True, ban_body="<html>error code: 1015</html>", ban_type="text/html")
    async with front_door(door) as api_base:
        client = new_client(http, api_base, FakeClock())
        results = await every_route(client) + await every_route(client)
        assert all(isinstance(r, DiscordCloudflareBan) for r in results), results
        assert door.total() >= 1
        assert max(door.seen.values()) == 1, door.seen
        assert ratelimited(client, "cloudflare") == door.total()


async def test_calls_resume_when_the_ban_of_retry_after_is_over(
    http: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    door = FrontDoor(ban=True, ban_retry_after="120")
    async with front_door(door) as api_base:
        client = new_client(http, api_base, clock)
        with pytest.raises(DiscordCloudflareBan) as err:
            await client.get_current_user()
        assert err.value.retry_after == 120.0
        door.ban = False  # Cloudflare lifts it; we must not find out early
        clock.advance(119.0)
        with pytest.raises(DiscordCloudflareBan) as err:
            await client.get_channel(1)
        assert err.value.retry_after == pytest.approx(1.0)
        assert door.total() == 1
        clock.advance(1.0)
        assert client.banned_for == 0
        results = await every_route(client)
        assert not any(isinstance(r, BaseException) for r in results), results
        assert door.total() == 6


async def test_discords_own_429_keeps_todays_handling(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    door = FrontDoor(ratelimit_429={"message": "You are being rate limited.", "retry_after": 2.5})
    door.ratelimit_scope = "user"
    async with front_door(door) as api_base:
        client = new_client(http, api_base, clock)
        assert (await client.get_channel(5))["id"] == "1"  # waited out, retried
        assert door.total() == 2
        assert ratelimited(client, "user") == 1 and ratelimited(client, "cloudflare") == 0
        assert client.banned_for == 0


# -- long pauses: never wait longer than max_ratelimit_wait ---------------------------------

SHARED_1336 = {"message": "You are being rate limited.", "retry_after": 1336.57, "global": False}


async def finish_without_clock(call: Any) -> Any:
    """Await ``call`` while the ManualClock stands still: a call that sleeps would never
    finish, so the safety timeout (real time, never reached when the code is right) turns
    a hang into a failure."""
    return await asyncio.wait_for(call, timeout=30)


@pytest.mark.parametrize("is_global", [False, True])
async def test_a_1336s_429_never_leaves_a_call_waiting(
    http: aiohttp.ClientSession, is_global: bool
) -> None:
    clock = ManualClock()
    door = FrontDoor(ratelimit_429={**SHARED_1336, "global": is_global})
    async with front_door(door) as api_base:
        client = new_client(http, api_base, clock, max_ratelimit_wait=60.0)
        with pytest.raises(DiscordRateLimited) as first:
            await finish_without_clock(client.get_channel(7))
        assert first.value.retry_after == 1336.57 and first.value.scope == "shared"
        # The next call on that bucket (and, for a global pause, on any) raises at once.
        later = [client.get_channel(7)] + ([client.get_current_user()] if is_global else [])
        for call in later:
            with pytest.raises(DiscordRateLimited) as err:
                await finish_without_clock(call)
            assert err.value.retry_after > 60.0
            assert "max_ratelimit_wait" in str(err.value)
        assert not isinstance(err.value, DiscordCloudflareBan)
        assert clock.sleeps == [] and door.total() == 1
        # Once the pause is over, the bucket works again.
        clock.advance(1337.0)
        assert (await finish_without_clock(client.get_channel(7)))["id"] == "1"


async def test_acquire_waits_out_a_pause_within_max_wait_and_refuses_a_longer_one() -> None:
    clock = ManualClock()
    limiter = RateLimiter(global_rate=1000.0, clock=clock, max_wait=60.0)
    ticket = await limiter.acquire("GET", "/channels/{channel_id}", "1")
    limiter.release(ticket, None)
    limiter.pause_bucket(ticket, 1336.57, "shared")
    with pytest.raises(DiscordRateLimited) as err:
        await limiter.acquire("GET", "/channels/{channel_id}", "1")
    assert err.value.scope == "shared" and err.value.retry_after > 1336
    assert clock.sleeps == []
    # Another bucket is not held back by it (once the global pacer's next slot is due).
    clock.advance(1.0)
    other = await limiter.acquire("GET", "/channels/{channel_id}", "2")
    limiter.release(other, None)
    # A pause within the bound is waited out, once.
    clock.advance(1336.0)
    limiter.pause_bucket(ticket, 30.0, "user")
    waiter = asyncio.ensure_future(limiter.acquire("GET", "/channels/{channel_id}", "1"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done() and clock.sleeps == [pytest.approx(30.005)]
    clock.advance(30.005)
    limiter.release(await waiter, None)
    # The global pause is capped the same way, and says whose limit it was.
    limiter.pause_global(600.0, "global")
    with pytest.raises(DiscordRateLimited) as err:
        await limiter.acquire("GET", "/users/@me", "")
    assert err.value.is_global and err.value.scope == "global"
    assert isinstance(err.value, DiscordError)
