"""The Discord REST client against the simulator (and, for transport faults, a tiny server)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor import USER_AGENT
from monitor.clock import SYSTEM_CLOCK, Clock, FakeClock
from monitor.discord.rest import (
    DiscordRestClient,
    backoff_delay,
    format_route,
    major_parameter,
)
from monitor.errors import (
    DiscordConnectionError,
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
from monitor.sim.discord import DiscordSimulator, RouteLimit, SimSettings
from tests.helpers import sim as sim_helpers
from tests.helpers.metrics import sample_or_zero
from tests.helpers.openapi import spec_request, validate_request
from tests.helpers.upstream import serve_all

GET_CHANNEL = "GET /channels/{channel_id}"


# -- helpers ---------------------------------------------------------------------------


def new_client(
    session: aiohttp.ClientSession,
    api_base: str,
    *,
    token: str = "sim-token",
    clock: Clock = SYSTEM_CLOCK,
    **kw: Any,
) -> DiscordRestClient:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("backoff_cap", 0.01)
    return DiscordRestClient(
        session=session,
        metrics=Metrics(CollectorRegistry()),
        token=token,
        api_base=api_base,
        clock=clock,
        rng=random.Random(0),
        **{"global_rate": 25.0, "max_retries": 3, "timeout": 10.0, **kw},
    )


@asynccontextmanager
async def running_sim(
    settings: SimSettings, clock: Clock = SYSTEM_CLOCK
) -> AsyncIterator[DiscordSimulator]:
    sim = DiscordSimulator(settings, clock=clock)
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


async def seed(http: aiohttp.ClientSession, sim: DiscordSimulator, count: int) -> list[str]:
    return await sim_helpers.seed(http, sim, count=count)


async def set_faults(http: aiohttp.ClientSession, sim: DiscordSimulator, **rest: Any) -> None:
    await sim_helpers.put_faults(http, sim, rest=rest)


def sim_count(sim: DiscordSimulator, route: str, status: int | None = None) -> int:
    return sum(n for (r, s), n in sim.state.requests.items() if r == route and status in (None, s))


# -- pure helpers ----------------------------------------------------------------------


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, base=0.5, cap=4.0, rng=rng) for a in range(6)]
    for attempt, d in enumerate(delays):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= d <= ceiling
    assert delays[-1] <= 4.0
    # Same seed, same jitter: retries are reproducible in tests.
    again = random.Random(1)
    assert delays == [backoff_delay(a, base=0.5, cap=4.0, rng=again) for a in range(6)]


def test_route_formatting_and_major_parameter() -> None:
    assert format_route("/channels/{channel_id}", {"channel_id": 12}) == "/channels/12"
    assert format_route("/x/{name}", {"name": "a/b c"}) == "/x/a%2Fb%20c"
    with pytest.raises(ValueError, match="channel_id"):
        format_route("/channels/{channel_id}", {})
    assert major_parameter({"guild_id": 1}) == "1"
    assert major_parameter({"channel_id": 2, "message_id": 3}) == "2"
    assert major_parameter({"webhook_id": 4}) == "4"
    assert major_parameter({}) == ""


# -- against the simulator -------------------------------------------------------------


async def test_helpers_send_requests_discords_openapi_accepts(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    """Every helper's request (method, path, query, body, auth) is valid per Discord's spec."""
    sent: list[dict[str, Any]] = []

    async def on_start(
        session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        ctx.record = {
            "method": params.method,
            "url": params.url,
            "headers": dict(params.headers),
            "body": b"",
        }
        sent.append(ctx.record)

    async def on_chunk(
        session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        ctx.record["body"] += params.chunk

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_chunk_sent.append(on_chunk)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = new_client(session, discord_sim.api_base)
        g = discord_sim.settings.guild_id
        assert (await client.get_gateway())["url"] == discord_sim.gateway_url
        assert "session_start_limit" in await client.get_gateway_bot()
        assert (await client.get_current_user())["bot"] is True
        created = await client.create_guild_channel(g, "cdp-chat-abc")
        cid = created["id"]
        assert [c["id"] for c in await client.list_guild_channels(g)] == [cid]
        assert (await client.get_channel(cid))["name"] == "cdp-chat-abc"
        msg = await client.create_message(cid, "hello")
        assert [m["id"] for m in await client.list_messages(cid, 10)] == [msg["id"]]
        assert (await client.delete_channel(cid))["id"] == cid
        with pytest.raises(DiscordNotFound) as err:
            await client.get_channel(cid)
        assert err.value.code == 10003 and err.value.status == 404

    assert len(sent) == 10
    prefix = discord_sim.api_base
    for req in sent:
        url = str(req["url"])
        assert url.startswith(prefix)
        path = url[len(prefix) :].split("?")[0]
        query = {k: v for k, v in req["url"].query.items()}
        headers = req["headers"]
        # Discord requires both on every request; the spec only models Authorization.
        assert headers["Authorization"] == "Bot sim-token"
        assert headers["User-Agent"] == USER_AGENT
        assert re.fullmatch(r"DiscordBot \(https?://\S+, [\w.\-+]+\)", USER_AGENT)
        body = json.loads(req["body"]) if req["body"] else None
        validate_request(spec_request(req["method"], path, query=query, body=body, headers=headers))


async def test_metrics_label_route_templates_never_ids(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    ids = await seed(http, discord_sim, 3)
    client = new_client(http, discord_sim.api_base)
    for cid in ids:
        await client.get_channel(cid)
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_requests_total",
            route="/channels/{channel_id}",
            method="GET",
            code="200",
        )
        == 3
    )
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_request_duration_seconds_count",
            route="/channels/{channel_id}",
            method="GET",
        )
        == 3
    )
    for metric in client.metrics.registry.collect():
        for s in metric.samples:
            assert not any(i in str(s.labels.get("route", "")) for i in ids)


async def test_burst_over_buckets_gets_no_429(http: aiohttp.ClientSession) -> None:
    """200 concurrent requests over 20 buckets: probes learn each bucket, then no 429."""
    settings = SimSettings(global_limit=10_000)  # isolate the per-route buckets (5 per 1 s)
    async with running_sim(settings) as sim:
        ids = await seed(http, sim, 10)
        client = new_client(http, sim.api_base, global_rate=500)

        async def one(i: int) -> Any:
            cid = ids[i % 10]
            if (i // 10) % 2:  # 20 buckets (10 channels x 2 routes), 10 requests each
                return await client.get_channel(cid)
            return await client.list_messages(cid, 5)

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert len(results) == 200
        assert sim_count(sim, GET_CHANNEL, 200) == 100
        assert sim_count(sim, "GET /channels/{channel_id}/messages", 200) == 100
        # At most one 429 per bucket was allowed before learning; the limiter needs none.
        assert dict(sim.state.ratelimited) == {}
        assert client.stats.ratelimited == 0
        assert sim.state.invalid_requests == 0


async def test_global_budget_holds_under_concurrency(http: aiohttp.ClientSession) -> None:
    budget = 25
    async with running_sim(SimSettings(global_limit=30)) as sim:
        ids = await seed(http, sim, 30)
        client = new_client(http, sim.api_base, global_rate=budget)
        start = len(sim.state.request_log)

        async def worker(w: int) -> None:
            for k in range(3):
                await client.get_channel(ids[(w * 3 + k) % 30])

        await asyncio.gather(*(worker(w) for w in range(20)))
        assert len(sim.state.request_log) - start == 60
        # Requests the simulator saw in any 1 s window (its own (t-1, t] definition).
        busiest = sim.state.busiest_second(start)
        assert busiest >= 2  # the window count sees concurrency at all
        # Sends are spaced 1/budget apart; loopback jitter can pull one extra in.
        assert busiest <= budget + 1
        assert dict(sim.state.ratelimited) == {}


async def test_401_stops_every_call(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    ids = await seed(http, discord_sim, 2)
    client = new_client(http, discord_sim.api_base, token="revoked-token")
    before = discord_sim.state.snapshot()["total_requests"]
    # Five concurrent calls on one (unknown) bucket: one goes, four wait for its answer.
    results = await asyncio.gather(
        *(client.get_current_user() for _ in range(5)), return_exceptions=True
    )
    assert sum(type(r) is DiscordUnauthorized for r in results) == 1
    assert sum(type(r) is TokenInvalidError for r in results) == 4
    for call in (
        client.get_gateway_bot(),
        client.get_channel(ids[0]),
        client.delete_channel(ids[1]),
    ):
        with pytest.raises(TokenInvalidError):
            await call
    assert discord_sim.state.snapshot()["total_requests"] == before + 1
    assert len(discord_sim.state.channels) == 2
    assert client.token_invalid
    assert sample_or_zero(client.metrics.registry, "cdpmon_discord_token_invalid") == 1
    assert sample_or_zero(client.metrics.registry, "cdpmon_discord_invalid_requests_total") == 1


async def test_5xx_is_retried_then_raised(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    (cid,) = await seed(http, discord_sim, 1)
    await set_faults(http, discord_sim, error_rate=1.0, error_status=503)
    client = new_client(http, discord_sim.api_base, max_retries=3)
    with pytest.raises(DiscordServerError) as err:
        await client.get_channel(cid)
    assert err.value.status == 503
    assert sim_count(discord_sim, GET_CHANNEL, 503) == 4
    route = "/channels/{channel_id}"
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_retries_total",
            route=route,
            reason="server_error",
        )
        == 3
    )
    # Cloudflare's HTML 502 is an error body, not a malformed answer.
    await set_faults(http, discord_sim, error_rate=1.0, error_status=502)
    with pytest.raises(DiscordServerError) as err:
        await client.get_channel(cid)
    assert err.value.status == 502
    assert (
        sample_or_zero(
            client.metrics.registry, "cdpmon_discord_malformed_responses_total", route=route
        )
        == 0
    )
    # Once the fault clears, the same client succeeds.
    await set_faults(http, discord_sim, error_rate=0.0)
    assert (await client.get_channel(cid))["id"] == cid


async def test_post_is_not_retried_when_it_may_have_taken_effect(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    """A retried create is how CDP leaks channels: POST fails fast on 5xx and resets."""
    g = discord_sim.settings.guild_id
    client = new_client(http, discord_sim.api_base)
    route = "POST /guilds/{guild_id}/channels"
    await set_faults(http, discord_sim, error_rate=1.0, error_status=500)
    with pytest.raises(DiscordServerError):
        await client.create_guild_channel(g, "cdp-chat-x")
    await set_faults(http, discord_sim, error_rate=0.0, reset_rate=1.0)
    with pytest.raises(DiscordConnectionError):
        await client.create_guild_channel(g, "cdp-chat-y")
    assert sim_count(discord_sim, route) == 2
    # A GET under the same reset fault is retried (aiohttp itself also resends an
    # idempotent request once on a dropped connection, so the simulator sees more).
    with pytest.raises(DiscordConnectionError):
        await client.get_current_user()
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_retries_total",
            route="/users/@me",
            reason="connection",
        )
        == 3
    )
    assert sim_count(discord_sim, "GET /users/@me") >= 4


async def test_timeouts_are_retried_then_raised(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await set_faults(http, discord_sim, timeout_rate=1.0, hang_ms=300)
    client = new_client(http, discord_sim.api_base, timeout=0.05, max_retries=2)
    with pytest.raises(DiscordTimeout):
        await client.get_gateway_bot()
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_retries_total",
            route="/gateway/bot",
            reason="timeout",
        )
        == 2
    )
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_requests_total",
            route="/gateway/bot",
            method="GET",
            code="timeout",
        )
        == 3
    )


async def test_malformed_json_is_a_typed_error(
    http: aiohttp.ClientSession, discord_sim: DiscordSimulator
) -> None:
    await set_faults(http, discord_sim, malformed_rate=1.0)
    client = new_client(http, discord_sim.api_base)
    with pytest.raises(DiscordMalformedResponse):
        await client.get_current_user()
    assert sim_count(discord_sim, "GET /users/@me") == 1  # not retried
    assert (
        sample_or_zero(
            client.metrics.registry, "cdpmon_discord_malformed_responses_total", route="/users/@me"
        )
        == 1
    )
    await set_faults(http, discord_sim, malformed_rate=0.0)
    assert (await client.get_current_user())["bot"] is True


async def test_user_429_from_someone_else_is_waited_out(http: aiohttp.ClientSession) -> None:
    """CDP shares the token: when it emptied a bucket, we get one 429, wait, and succeed."""
    clock = FakeClock()
    limits = {"GET /channels/{channel_id}": RouteLimit("chan", 2, 10.0)}
    async with running_sim(SimSettings(route_limits=limits), clock) as sim:
        (cid,) = await seed(http, sim, 1)
        for _ in range(2):  # "CDP" spends the bucket
            async with http.get(
                f"{sim.api_base}/channels/{cid}", headers={"Authorization": "Bot sim-token"}
            ) as r:
                assert r.status == 200
        client = new_client(http, sim.api_base, clock=clock)
        start = clock.monotonic()
        assert (await client.get_channel(cid))["id"] == cid
        log = list(sim.state.request_log)[-2:]
        assert [s for _, _, s in log] == [429, 200]
        assert log[1][0] >= start + 10.0  # the retry waited for the window to reset
        assert client.stats.ratelimited_by_scope == {"user": 1}
        assert (
            sample_or_zero(
                client.metrics.registry, "cdpmon_discord_ratelimited_total", scope="user"
            )
            == 1
        )
        assert sample_or_zero(client.metrics.registry, "cdpmon_discord_invalid_requests_total") == 1
        assert (
            sample_or_zero(
                client.metrics.registry,
                "cdpmon_discord_retries_total",
                route="/channels/{channel_id}",
                reason="ratelimited",
            )
            == 1
        )


async def test_shared_429_is_waited_on_and_not_counted_invalid(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with running_sim(SimSettings(), clock) as sim:
        await set_faults(http, sim, shared_429_rate=1.0)
        client = new_client(http, sim.api_base, clock=clock, max_retries=2)
        with pytest.raises(DiscordRateLimited) as err:
            await client.get_current_user()
        assert err.value.scope == "shared" and not err.value.is_global
        assert sim.state.ratelimited["shared"] == 3
        times = [t for t, _, _ in sim.state.request_log]
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
        assert (
            sample_or_zero(
                client.metrics.registry, "cdpmon_discord_ratelimited_total", scope="shared"
            )
            == 3
        )
        assert sample_or_zero(client.metrics.registry, "cdpmon_discord_invalid_requests_total") == 0


async def test_global_429_pauses_every_bucket(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with running_sim(SimSettings(global_limit=3), clock) as sim:
        ids = await seed(http, sim, 5)
        client = new_client(http, sim.api_base, clock=clock, global_rate=1000)
        for cid in ids[:3]:
            await client.get_channel(cid)
        # The 4th request this second is over the global limit; fail fast to see the pause.
        with pytest.raises(DiscordRateLimited) as err:
            await client.request(
                "GET", "/channels/{channel_id}", params={"channel_id": ids[3]}, max_retries=0
            )
        assert err.value.is_global and err.value.scope == "global"
        limited_at = sim.state.request_log[-1][0]
        # Every other bucket (other channels, other routes) now waits out the pause.
        await asyncio.gather(
            client.get_channel(ids[4]),
            client.get_current_user(),
            client.list_guild_channels(sim.settings.guild_id),
        )
        later = list(sim.state.request_log)[-3:]
        assert [s for _, _, s in later] == [200, 200, 200]
        assert all(t >= limited_at + err.value.retry_after for t, _, _ in later)
        assert sim.state.ratelimited == {"global": 1}
        assert (
            sample_or_zero(
                client.metrics.registry, "cdpmon_discord_ratelimited_total", scope="global"
            )
            == 1
        )


async def test_global_429s_under_real_concurrency_are_obeyed(http: aiohttp.ClientSession) -> None:
    """A client paced far above the simulator's global limit still ends with every call done.

    Real concurrency (12 requests in flight together) on a shared fake clock: time moves
    only when the client sleeps, so the count of 429s does not depend on machine load.
    """
    clock = FakeClock()
    async with running_sim(SimSettings(global_limit=5), clock) as sim:
        ids = await seed(http, sim, 12)
        client = new_client(http, sim.api_base, clock=clock, global_rate=1000, max_retries=5)
        results = await asyncio.gather(*(client.get_channel(c) for c in ids))
        assert [r["id"] for r in results] == ids
        # 12 calls over 12 buckets against 5/s: at most 7 global 429s in the first second,
        # then the paused retries go together (5 pass, at most 2 more 429s), then the rest.
        # A client that did not pause every bucket would burn its retries within the
        # second and fail.
        assert 1 <= sim.state.ratelimited["global"] <= 9
        assert sim.state.ratelimited["global"] == client.stats.ratelimited_by_scope["global"]


# -- transport faults the simulator does not make --------------------------------------


@asynccontextmanager
async def tiny_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    async with serve_all(handler) as url:
        yield url + "/api/v10"


async def test_truncated_answer_is_malformed(http: aiohttp.ClientSession) -> None:
    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 200
        await resp.prepare(request)
        await resp.write(b'{"url": "wss://gate')
        assert request.transport is not None
        request.transport.close()  # the connection dies mid-body
        return resp

    async with tiny_server(truncated) as api_base:
        client = new_client(http, api_base)
        with pytest.raises(DiscordMalformedResponse, match="truncated"):
            await client.get_gateway()
        assert (
            sample_or_zero(
                client.metrics.registry,
                "cdpmon_discord_malformed_responses_total",
                route="/gateway",
            )
            == 1
        )


async def test_error_bodies_that_are_not_json_still_give_typed_errors(
    http: aiohttp.ClientSession,
) -> None:
    async def teapot(request: web.Request) -> web.StreamResponse:
        return web.Response(status=418, text="<html>no</html>", content_type="text/html")

    async with tiny_server(teapot) as api_base:
        client = new_client(http, api_base)
        with pytest.raises(DiscordHTTPError) as err:
            await client.get_current_user()
        assert err.value.status == 418 and err.value.code is None


async def test_refused_connection_is_retried_then_raised(http: aiohttp.ClientSession) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens there now. Even a POST is retried: it never reached Discord.
    client = new_client(http, f"http://127.0.0.1:{port}/api/v10", max_retries=2)
    with pytest.raises(DiscordConnectionError):
        await client.create_message(1, "hi")
    assert (
        sample_or_zero(
            client.metrics.registry,
            "cdpmon_discord_retries_total",
            route="/channels/{channel_id}/messages",
            reason="connect",
        )
        == 2
    )
