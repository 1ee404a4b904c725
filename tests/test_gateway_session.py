"""The gateway session client against a tiny Discord gateway of the test's own on
loopback: IDENTIFY once, RESUME on op 7 and drops (at resume_gateway_url, with the last
seq), re-IDENTIFY after op 9 d:false, the budget, 4004, heartbeats and zombie
detection, zlib-stream, dispatch into the live guild."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, Clock, ManualClock
from monitor.config import GatewaySessionConfig
from monitor.discord.session import GatewaySession
from monitor.discord.session_creations import CreationWindow
from monitor.discord.session_live import LiveGuild
from monitor.discord.snowflake import make_snowflake
from monitor.health.window import Sample
from monitor.metrics import Metrics
from monitor.state import StateDir

GUILD = 111122223333444455
TOKEN = "Bot.token.x"
WAIT = 10.0  # bound on waiting for an event; never a timing assertion


class FakeGateway:
    """Just enough of Discord's gateway: HELLO, IDENTIFY → READY + GUILD_CREATE, RESUME →
    replay + RESUMED (unknown session → op 9 false), heartbeat ACKs (switchable)."""

    def __init__(self) -> None:
        self.url = ""
        self.paths: list[str] = []
        self.queries: list[dict[str, str]] = []
        self.received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ops: list[int] = []
        self.conns: list[web.WebSocketResponse] = []
        self.ack = True
        self.seq = 0
        self.sessions: set[str] = set()
        self.channels: list[dict[str, Any]] = []
        self.missed: list[dict[str, Any]] = []  # replayed on RESUME
        self.deflate: Any = None
        self.close_resumes = False  # answer RESUME with a close instead of op 9
        self.refuse = 0  # refuse this many upgrades (HTTP 503)

    async def handler(self, request: web.Request) -> web.StreamResponse:
        if self.refuse:
            self.refuse -= 1
            return web.Response(status=503, text="upstream connect error")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.paths.append(request.path)
        self.queries.append(dict(request.query))
        self.deflate = zlib.compressobj() if request.query.get("compress") else None
        self.conns.append(ws)
        await self.send({"op": 10, "d": {"heartbeat_interval": 45_000}})
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._on(json.loads(msg.data))
        return ws

    async def _on(self, p: dict[str, Any]) -> None:
        await self.received.put(p)
        self.ops.append(p["op"])
        op, d = p["op"], p.get("d")
        if op == 1 and self.ack:
            await self.send({"op": 11})
        elif op == 2:
            sid = f"session-{len(self.sessions) + 1}"
            self.sessions.add(sid)
            ready = {"session_id": sid, "resume_gateway_url": self.url + "/resume"}
            await self.dispatch("READY", ready)
            await self.dispatch("GUILD_CREATE", {"id": str(GUILD), "channels": self.channels})
        elif op == 6 and self.close_resumes:
            await self.conns[-1].close(code=4000)
        elif op == 6 and d["session_id"] in self.sessions:
            for event in self.missed:
                await self.dispatch("CHANNEL_CREATE", event)
            self.missed.clear()
            await self.dispatch("RESUMED", None)
        elif op == 6:
            await self.send({"op": 9, "d": False})

    async def send(self, payload: dict[str, Any]) -> None:
        ws = self.conns[-1]
        text = json.dumps(payload)
        if self.deflate is None:
            await ws.send_str(text)
            return
        data = self.deflate.compress(text.encode()) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        await ws.send_bytes(data[:3])  # a message split over two frames
        await ws.send_bytes(data[3:])

    async def dispatch(self, event: str, data: Any) -> None:
        self.seq += 1
        await self.send({"op": 0, "s": self.seq, "t": event, "d": data})

    async def next_op(self, op: int) -> dict[str, Any]:
        while True:
            p = await asyncio.wait_for(self.received.get(), WAIT)
            if p["op"] == op:
                return p


class FakeRest:
    def __init__(self, url: str, remaining: int = 1000) -> None:
        self.url, self.remaining = url, remaining
        self.token_invalid = False
        self.calls = 0
        self.max_concurrency = 1

    async def get_gateway_bot(self) -> Any:
        self.calls += 1
        limit = {
            "total": 1000,
            "remaining": self.remaining,
            "reset_after": 1000,
            "max_concurrency": self.max_concurrency,
        }
        return {"url": self.url, "shards": 1, "session_start_limit": limit}


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    app = web.Application()
    app.router.add_get("/", fake.handler)
    app.router.add_get("/resume/", fake.handler)
    app.router.add_get("/resume", fake.handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"ws://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


class Harness:
    def __init__(self, gw: FakeGateway, tmp: str, clock: Clock, **settings: Any) -> None:
        self.gw = gw
        self.metrics = Metrics(CollectorRegistry())
        self.samples: list[Sample] = []
        self.state = StateDir(tmp)
        self.rest = FakeRest(gw.url)
        self.live = LiveGuild(
            GUILD,
            creations=CreationWindow(self.state.load_creations(), save=self.state.save_creations),
            metrics=self.metrics,
            daily_create_limit=500,
            resync_interval=1800.0,
        )
        self.settings = GatewaySessionConfig(**settings)
        self.clock = clock
        self.task: asyncio.Task[None] | None = None
        self.session: GatewaySession | None = None

    async def start(self, http: aiohttp.ClientSession) -> GatewaySession:
        self.session = GatewaySession(
            self.settings,
            token=TOKEN,
            gateway_url=None,
            rest=self.rest,
            http=http,
            live=self.live,
            metrics=self.metrics,
            clock=self.clock,
            sink=self.samples.append,
            state_dir=self.state,
            rand=lambda: 0.0,
        )
        self.task = asyncio.ensure_future(self.session.run())
        return self.session

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def running(self, http: aiohttp.ClientSession) -> AsyncIterator[GatewaySession]:
        """The session running for the block, stopped after it whatever happens."""
        session = await self.start(http)
        try:
            yield session
        finally:
            await self.stop()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})


async def until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT)


Run = Callable[..., Awaitable[None]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_identifies_once_then_resumes_after_op7_and_drops(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    h = Harness(gateway, str(tmp_path), SYSTEM_CLOCK)
    async with h.running(http) as session:
        identify = await gateway.next_op(2)
        assert identify["d"]["intents"] == 513 and identify["d"]["token"] == TOKEN
        await until(lambda: session.state == "up")
        assert gateway.queries[0] == {"v": "10", "encoding": "json"}
        await gateway.dispatch(
            "CHANNEL_CREATE",
            {"id": str(make_snowflake(1.8e9)), "guild_id": str(GUILD), "name": "cdp-chat-1"},
        )
        await gateway.send({"op": 7, "d": None})
        resume = await gateway.next_op(6)
        assert resume["d"] == {"token": TOKEN, "session_id": "session-1", "seq": 3}
        assert gateway.paths[-1].startswith("/resume")  # resume_gateway_url
        await until(lambda: session.counts["resumes"] == 1)
        # A dropped connection (no close frame we asked for): RESUME again, with replay.
        gateway.missed.append(
            {
                "id": str(make_snowflake(1.8e9, increment=1)),
                "guild_id": str(GUILD),
                "name": "cdp-chat-2",
            }
        )
        await gateway.conns[-1].close(code=4000)
        await gateway.next_op(6)
        await until(lambda: session.counts["resumes"] == 2)
        assert h.value("cdpmon_gateway_identifies_total") == 1
        assert h.value("cdpmon_gateway_resumes_total") == 2
        assert h.value("cdpmon_gateway_session_up") == 1
        assert h.value("cdpmon_guild_channels", {"guild": str(GUILD)}) == 2
        assert h.value("cdpmon_gateway_reconnects_total", {"reason": "reconnect"}) == 1
        assert h.state.load_identifies() and len(h.state.load_identifies()) == 1


async def test_reidentifies_only_when_the_session_is_gone(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    h = Harness(gateway, str(tmp_path), SYSTEM_CLOCK)
    h.rest.max_concurrency = 2  # no 5 s spacing between the two IDENTIFYs
    async with h.running(http) as session:
        await gateway.next_op(2)
        await until(lambda: session.state == "up")
        await gateway.send({"op": 9, "d": True})  # resumable
        await gateway.next_op(6)
        await until(lambda: session.counts["resumes"] == 1)
        # op 9 is session housekeeping (also Discord's answer to an IDENTIFY inside the
        # max_concurrency window CDP shares with us), not a failed health sample.
        assert all(s.ok for s in h.samples)
        gateway.sessions.clear()  # Discord forgot it: RESUME gets op 9 d:false
        await gateway.conns[-1].close(code=1001)
        await gateway.next_op(6)
        await gateway.next_op(2)
        await until(lambda: session.counts["identifies"] == 2 and session.state == "up")
        assert gateway.paths[-1] == "/"  # a new session starts at the cached URL
        assert h.value("cdpmon_gateway_reconnects_total", {"reason": "invalid_session"}) == 2


async def test_close_codes_that_forbid_resume(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    clock = ManualClock()
    h = Harness(gateway, str(tmp_path), clock)
    async with h.running(http) as session:
        await gateway.next_op(2)
        await until(lambda: session.state == "up")
        await gateway.conns[-1].close(code=4009)  # session timed out: a new one

        def spacing_wait() -> bool:
            clock.advance(0)  # the reconnect's zero backoff
            return 5.0 in clock.sleeps

        await until(spacing_wait)  # max_concurrency 1: one IDENTIFY per 5 s
        assert gateway.ops.count(2) == 1
        clock.advance(5.0)
        await gateway.next_op(2)
        await until(lambda: session.counts["identifies"] == 2)
        assert session.last_close_code == 4009
        assert 6 not in gateway.ops


async def test_4004_stops_the_session_like_a_rest_401(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    h = Harness(gateway, str(tmp_path), SYSTEM_CLOCK)
    async with h.running(http) as session:
        await gateway.next_op(2)
        await gateway.conns[-1].close(code=4004)
        await until(lambda: session.state == "stopped")
        assert h.value("cdpmon_discord_token_invalid") == 1
        assert session.status(0.0)["fallback"]["reason"] == "stopped"
        assert len(gateway.conns) == 1


async def test_below_the_reserve_it_never_identifies_and_says_so(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    clock = ManualClock()
    h = Harness(gateway, str(tmp_path), clock)
    h.rest.remaining = 99
    async with h.running(http) as session:
        await until(lambda: session.state == "fallback")
        assert h.value("cdpmon_gateway_identify_blocked") == 1
        status = session.status(clock.time())
        assert status["fallback"]["reason"] == "reserve"
        assert status["session_starts_remaining"] == 99
        await until(lambda: bool(clock._sleepers))
        clock.advance(3600)  # asks Discord again later; still below the reserve
        await until(lambda: h.rest.calls == 2)
        assert gateway.conns == []
        h.rest.remaining = 500
        await until(lambda: bool(clock._sleepers))
        clock.advance(3600)
        await gateway.next_op(2)
        assert h.value("cdpmon_gateway_identify_blocked") == 0


async def test_the_daily_maximum_survives_a_restart(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    clock = ManualClock()
    StateDir(str(tmp_path)).save_identifies([clock.time() - 60.0 * i for i in range(3)])
    h = Harness(gateway, str(tmp_path), clock, max_identifies_per_day=3)
    async with h.running(http) as session:
        await until(lambda: session.state == "fallback")
        assert session.status(clock.time())["fallback"]["reason"] == "daily_max"
        assert session.status(clock.time())["identifies_24h"] == 3
        assert gateway.conns == []


async def test_heartbeats_feed_latency_samples_and_a_missed_ack_resumes(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    clock = ManualClock()
    h = Harness(gateway, str(tmp_path), clock)
    async with h.running(http) as session:
        await gateway.next_op(2)
        await until(lambda: 0.0 in clock.sleeps)
        clock.advance(0)  # the jittered first beat (rand 0: at once)
        await gateway.next_op(1)
        await until(lambda: any(s.ok for s in h.samples))
        ok = [s for s in h.samples if s.ok]
        assert ok[0].source == "gateway" and ok[0].duration == 0.0
        assert h.value("cdpmon_gateway_heartbeat_latency_seconds") == 0.0
        gateway.ack = False
        await until(lambda: clock.sleeps.count(45.0) == 1)
        clock.advance(45)
        beat = await gateway.next_op(1)
        assert beat["d"] == 2  # the last seq (READY, GUILD_CREATE)
        await until(lambda: clock.sleeps.count(45.0) == 2)
        clock.advance(45)  # unanswered: a zombie connection, closed 4000 and resumed

        def resumed() -> bool:
            clock.advance(0)  # the reconnect's zero backoff
            return 6 in gateway.ops

        await until(resumed)
        assert h.value("cdpmon_gateway_reconnects_total", {"reason": "heartbeat_timeout"}) == 1
        assert [s.ok for s in h.samples].count(False) == 1
        assert session.counts["identifies"] == 1


async def test_zlib_stream_transport(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    h = Harness(gateway, str(tmp_path), SYSTEM_CLOCK, compress=True)
    async with h.running(http) as session:
        await gateway.next_op(2)
        await until(lambda: session.state == "up")
        assert gateway.queries[0]["compress"] == "zlib-stream"
        assert h.live.synced_from == "gateway"


async def test_resumes_that_keep_being_closed_end_in_a_new_session(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    clock = ManualClock()
    h = Harness(gateway, str(tmp_path), clock)
    async with h.running(http) as session:
        await gateway.next_op(2)
        await until(lambda: session.state == "up")
        gateway.close_resumes = True
        await gateway.send({"op": 7, "d": None})

        def identified_again() -> bool:
            clock.advance(1.0)  # through the growing backoff and the IDENTIFY spacing
            return gateway.ops.count(2) == 2

        await until(identified_again)
        assert gateway.ops.count(6) == 3


async def test_a_refused_connect_backs_off_and_is_a_failure_sample(
    gateway: FakeGateway, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    clock = ManualClock()
    gateway.refuse = 2
    h = Harness(gateway, str(tmp_path), clock)
    async with h.running(http) as session:

        def identified() -> bool:
            clock.advance(0.25)
            return 2 in gateway.ops

        await until(identified)
        assert [s.ok for s in h.samples][:2] == [False, False]
        assert 0.5 in clock.sleeps and 1.0 in clock.sleeps  # 1 s base, doubling (jitter 0)
        assert h.value("cdpmon_gateway_reconnects_total", {"reason": "connect_failed"}) == 2
        assert session.counts["identifies"] == 1
