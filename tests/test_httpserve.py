"""The shared listener's limits (monitor.httpserve) on a bare app, over raw sockets."""

from __future__ import annotations

import asyncio

from aiohttp import web

from monitor.httpserve import LIMITS, Limits, LogLimiter, start_site
from tests.helpers.raw_http import parse_response, request_bytes


async def test_full_listener_of_busy_connections_refuses_with_json() -> None:
    release, both_started = asyncio.Event(), asyncio.Event()
    started = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app[LIMITS] = Limits(max_connections=2)
    app.router.add_get("/", slow)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        busy = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _reader, writer in busy:
            writer.write(request_bytes("GET", "/"))
        await asyncio.wait_for(both_started.wait(), 30)  # nothing idle to evict
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = parse_response(await asyncio.wait_for(reader.read(), 30))
        writer.close()
        assert refused.status == 503 and refused.json()["code"] == "overloaded"
        release.set()
        for reader, writer in busy:
            answer = parse_response(await asyncio.wait_for(reader.read(), 30))
            assert answer.status == 200
            writer.close()
    finally:
        await runner.cleanup()


async def test_idle_connection_makes_room_for_a_new_one() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app[LIMITS] = Limits(max_connections=1)
    app.router.add_get("/", ok)
    runner, port = await start_site(app, "127.0.0.1", 0)
    try:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("GET", "/"))
        assert parse_response(await asyncio.wait_for(reader.read(), 30)).status == 200
        assert await asyncio.wait_for(idle_reader.read(), 30) == b""  # evicted
        idle_writer.close()
        writer.close()
    finally:
        await runner.cleanup()


def test_log_limiter_lets_a_burst_through_then_counts() -> None:
    limiter = LogLimiter(per_minute=6, burst=3)
    assert [limiter.allow(0.0) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.suppressed == 2
    assert limiter.allow(10.0)  # one token back after 10 s at 6/min
    assert not limiter.allow(10.0)
