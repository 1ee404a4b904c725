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
from tests.helpers.gate import FakeLive
from tests.helpers.metrics import metric_value
from tests.helpers.upstream import serve_all
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
    async with serve_all(fake.handle) as url:
        try:
            yield url
        finally:
            fake.finish.set()


@contextlib.asynccontextmanager
async def gate_on(
    sim: DiscordSimulator,
    upstream: str,
    tmp_path: Path,
    cdp: dict[str, Any],
    session: bool = True,
    **gate: Any,
) -> AsyncIterator[Daemon]:
    gate = {"enabled": True, "listen": "127.0.0.1:0", "upstream": upstream, **gate}
    discord = {"gateway_session": {"enabled": session}}
    config = fast_config(sim, tmp_path / "state", gate=gate, cdp=cdp, discord=discord)
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
            discord_sim,
            upstream,
            tmp_path,
            {},
            session=False,  # the fallback: no gateway session of the daemon's own
            max_concurrent_creates=3,
            queue_wait="10s",
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
            assert status["release_on"].startswith("no gateway session")


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


class ChattyCdp(SlowCdp):
    """Non-stream chat: creates the channel (an event on the session), then answers only
    when the conversation ends, so only the channel event can free the slot early."""

    def __init__(self, live: FakeLive) -> None:
        super().__init__(header_delay=0.0)
        self.live = live

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.started += 1
        self.creating += 1
        self.most_creating = max(self.most_creating, self.creating)
        await asyncio.sleep(0.01)  # CDP's POST /guilds/{id}/channels
        self.creating -= 1
        self.live.created(f"cdp-chat-{self.started}")
        await self.finish.wait()  # Coze answers; CDP sends everything at the end
        return web.json_response({"choices": []})


async def test_with_a_session_the_channel_event_frees_the_slot(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    live = FakeLive()
    fake = ChattyCdp(live)
    async with serving(fake) as upstream:
        async with gate_on(
            discord_sim, upstream, tmp_path, {}, max_concurrent_creates=3, queue_wait="10s"
        ) as daemon:
            assert daemon.gate is not None and daemon.gate_url is not None
            daemon.gate.attach_channel_events(live)
            async with aiohttp.ClientSession() as http:
                body = {**BODY, "stream": False}

                async def conversation() -> int:
                    assert daemon.gate_url is not None
                    async with http.post(daemon.gate_url + CHAT, json=body) as resp:
                        await resp.read()
                        return resp.status

                convs = [asyncio.ensure_future(conversation()) for _ in range(30)]
                await wait_for(lambda: fake.started == 30, what="30 conversations at CDP")
                fake.finish.set()
                assert await asyncio.gather(*convs) == [200] * 30
            assert fake.most_creating <= 3
            slots = daemon.status()["gate"]["slots"]
            assert slots["released"] == {"channel": 30}
            assert slots["release_on"].startswith("gateway session")
            # A healthy Discord: the adaptive limit measured every create, refused none.
            limit = daemon.status()["gate"]["limit"]
            assert limit["active"] and limit["admitted"] == limit["completed"] == 30
            assert "limited" not in daemon.status()["gate"]["decisions"]


async def test_no_channel_while_events_flow_is_a_discord_failure(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    live = FakeLive()
    fake = SlowCdp(header_delay=30.0)  # CDP stuck creating; no channel ever appears
    async with serving(fake) as upstream:
        cdp = {"create_attempt_timeout": "50ms"}
        async with gate_on(discord_sim, upstream, tmp_path, cdp) as daemon:
            assert daemon.gate is not None and daemon.gate_url is not None
            daemon.gate.attach_channel_events(live)
            async with aiohttp.ClientSession() as http:
                conv = asyncio.ensure_future(_open_stream(http, daemon.gate_url))
                await wait_for(
                    lambda: daemon.status()["gate"]["slots"]["released"].get("window"),
                    what="the creation window passed",
                )
                conv.cancel()
                await asyncio.gather(conv, return_exceptions=True)
            assert daemon.status()["gate"]["attribution"]["discord_failed_no_channel"] == 1
            gate_samples = [s for s in daemon.health.window if s.source == "gate"]
            assert [s.ok for s in gate_samples] == [False]
