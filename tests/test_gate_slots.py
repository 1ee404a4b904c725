"""Creation-only slots (DESIGN section 7): a create slot covers CDP's creation, not the
conversation. Without a gateway session it is freed when CDP's answer starts or when
CDP's creation window (3 x cdp.create_attempt_timeout) has passed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import metric_value
from tests.helpers.wait import wait_for

CHAT = "/v1/chat/completions"
BODY = {"model": "coze", "messages": [{"role": "user", "content": "hi"}], "stream": True}


class SlowCdp:
    """Streams an answer: headers after `header_delay`, the end when `finish` is set."""

    def __init__(self, header_delay: float) -> None:
        self.header_delay = header_delay
        self.finish = asyncio.Event()
        self.started = 0
        self.creating = 0  # creations pending at CDP now, and the most ever
        self.most_creating = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.started += 1
        self.creating += 1
        self.most_creating = max(self.most_creating, self.creating)
        with contextlib.suppress(TimeoutError):  # CDP creating the channel
            await asyncio.wait_for(self.finish.wait(), self.header_delay)
        self.creating -= 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: {}\n\n")
        await self.finish.wait()  # the conversation goes on
        await response.write(b"data: [DONE]\n\n")
        return response


@contextlib.asynccontextmanager
async def serving(fake: SlowCdp) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        fake.finish.set()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def gate_on(
    sim: DiscordSimulator, upstream: str, tmp_path: Path, cdp: dict[str, Any], **gate: Any
) -> AsyncIterator[Daemon]:
    gate = {"enabled": True, "listen": "127.0.0.1:0", "upstream": upstream, **gate}
    config = fast_config(sim, tmp_path / "state", gate=gate, cdp=cdp)
    async with running_daemon(config) as daemon:
        await wait_for(lambda: daemon.health.discord_reached, what="Discord reached")
        yield daemon


async def _open_stream(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.post(url + CHAT, json=BODY) as resp:
        body = await resp.text()
        return resp.status, body


async def test_a_slot_is_freed_when_cdps_answer_starts(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    fake = SlowCdp(header_delay=0.05)
    async with serving(fake) as upstream:
        async with gate_on(
            discord_sim, upstream, tmp_path, {}, max_concurrent_creates=3, queue_wait="10s"
        ) as daemon:
            assert daemon.gate_url is not None
            async with aiohttp.ClientSession() as http:
                convs = [
                    asyncio.ensure_future(_open_stream(http, daemon.gate_url)) for _ in range(30)
                ]
                # All 30 conversations are under way at once with 3 slots: each freed its
                # slot as soon as CDP's answer started; the conversations go on.
                await wait_for(
                    lambda: fake.started == 30 and fake.creating == 0, what="30 conversations"
                )
                fake.finish.set()
                results = await asyncio.gather(*convs)
            assert [status for status, _ in results] == [200] * 30
            assert fake.most_creating <= 3  # CDP never had more than 3 creations pending
            refused = metric_value(
                daemon.metrics.gate_requests, kind="create", decision="queue_full"
            )
            assert refused == 0
            status = daemon.status()["gate"]["slots"]
            assert status["released"] == {"answer": 30}
            assert status["fallback"].startswith("no gateway session")


async def test_a_slot_is_freed_when_cdps_creation_window_has_passed(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    fake = SlowCdp(header_delay=30.0)  # CDP never answers within the test
    cdp = {"create_attempt_timeout": "100ms"}  # a creation window of 300 ms
    async with serving(fake) as upstream:
        async with gate_on(
            discord_sim, upstream, tmp_path, cdp, max_concurrent_creates=1, queue_wait="5s"
        ) as daemon:
            assert daemon.gate_url is not None
            async with aiohttp.ClientSession() as http:
                convs = [
                    asyncio.ensure_future(_open_stream(http, daemon.gate_url)) for _ in range(3)
                ]
                await wait_for(lambda: fake.started == 3, what="3 creates at CDP")
                for conv in convs:
                    conv.cancel()
                await asyncio.gather(*convs, return_exceptions=True)
            assert daemon.status()["gate"]["slots"]["released"].get("window", 0) >= 2
