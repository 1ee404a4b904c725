"""The gate end to end: real openai client -> gate (in the daemon) -> CDP emulator -> simulator."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import ManualClock
from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.gate import is_create_request
from monitor.gate.admission import CreateAdmission
from monitor.health.owner import Health
from monitor.health.window import Sample
from monitor.metrics import Metrics
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import metric_value
from tests.helpers.sim import put_faults, seed
from tests.helpers.wait import wait_for

MESSAGES: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def cdp_settings(discord_sim: DiscordSimulator) -> CdpSettings:
    return CdpSettings(
        discord_api_base=discord_sim.api_base,
        guild_id=discord_sim.settings.guild_id,
        token=discord_sim.settings.token,
        reply_delay=0.05,
        auto_delete=0.2,
        stream_chunks=5,
        stream_chunk_delay=0.05,
    )


@pytest.fixture
async def cdp(cdp_settings: CdpSettings) -> AsyncIterator[CdpEmulator]:
    emulator = CdpEmulator(cdp_settings)
    await emulator.start("127.0.0.1", 0)
    try:
        yield emulator
    finally:
        await emulator.stop()


def gate_config_extra(cdp: CdpEmulator, **gate: Any) -> dict[str, Any]:
    return {
        "gate": {
            "enabled": True,
            "listen": "127.0.0.1:0",
            "upstream": cdp.base_url,
            "max_concurrent_creates": 4,
            "queue_wait": "2s",
            **gate,
        }
    }


@pytest.fixture
async def daemon(
    discord_sim: DiscordSimulator, cdp: CdpEmulator, tmp_path: Path
) -> AsyncIterator[Daemon]:
    config = fast_config(discord_sim, tmp_path / "state", **gate_config_extra(cdp))
    async with running_daemon(config) as d:
        await wait_for(d.ready, what="ready")
        yield d


def client(daemon: Daemon, **kwargs: Any) -> openai.AsyncOpenAI:
    assert daemon.gate_url is not None
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=daemon.gate_url + "/v1", api_key="sk-test", **kwargs)


async def cdp_state(http: aiohttp.ClientSession, cdp: CdpEmulator) -> dict[str, Any]:
    async with http.get(cdp.admin_url + "/state") as resp:
        state: dict[str, Any] = await resp.json()
        return state


async def seeded_channel(http: aiohttp.ClientSession, sim: DiscordSimulator) -> str:
    (channel_id,) = await seed(http, sim, count=1, prefix="general-")
    return channel_id


@pytest.mark.parametrize(
    ("method", "path", "body", "default_channel", "expected"),
    [
        ("POST", "/v1/chat/completions", b'{"model": "m"}', False, True),
        ("POST", "/v1/chat/completions", b'{"channelId": ""}', False, True),
        ("POST", "/v1/chat/completions", b'{"channelId": "  "}', False, False),  # CDP uses it as is
        ("POST", "/v1/chat/completions", b'{"channelId": "123"}', False, False),
        ("POST", "/v1/chat/completions", b'{"model": "m"}', True, False),
        ("POST", "/v1/images/generations", b'{"prompt": "p"}', False, True),
        ("POST", "/v1/chat/completions", b"not json", False, False),  # CDP fails: no channel
        ("POST", "/api/channel/create", b"{}", True, True),
        ("POST", "/api/thread/create", b"{}", False, True),
        ("GET", "/v1/models", b"", False, False),
        ("GET", "/v1/chat/completions", b"", False, False),
        ("POST", "/v1/embeddings", b"{}", False, False),
    ],
)
def test_is_create_request(
    method: str, path: str, body: bytes, default_channel: bool, expected: bool
) -> None:
    assert is_create_request(method, path, body, cdp_default_channel=default_channel) is expected


async def test_openai_chat_stream_and_images_through_the_gate(
    daemon: Daemon, cdp: CdpEmulator, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    ai = client(daemon)
    raw = await ai.chat.completions.with_raw_response.create(model="coze", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content
    request_id = raw.headers["X-Request-Id"]
    # CDP created (and will delete) the channel named after the request.
    names = {c.name for c in discord_sim.state.channels.values()}
    deleted = f"cdp-chat-{request_id.lower()}" not in names
    assert deleted or f"cdp-chat-{request_id.lower()}" in names

    stream = await ai.chat.completions.create(model="coze", messages=MESSAGES, stream=True)
    chunks = 0
    async for chunk in stream:
        if chunks == 0:
            # The first chunk is here while the emulator is still streaming the rest.
            assert (await cdp_state(http, cdp))["requests_in_flight"] >= 1
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
    assert chunks >= 5

    image = await ai.images.generate(prompt="a cat", model="coze")
    assert image.data and image.data[0].url

    decisions = daemon.metrics.gate_requests
    assert metric_value(decisions, kind="create", decision="forwarded") == 3


async def test_open_breaker_refuses_creates_but_passes_the_rest(
    daemon: Daemon, cdp: CdpEmulator, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    channel_id = await seeded_channel(http, discord_sim)
    before = (await cdp_state(http, cdp))["channels_created"]
    now = daemon.clock.time()
    for _ in range(3):
        daemon.breaker.record(True, now, reason="test outage")
    assert daemon.breaker.state == "open"
    ai = client(daemon)
    with pytest.raises(openai.APIStatusError) as caught:
        await ai.chat.completions.create(model="coze", messages=MESSAGES)
    err = caught.value
    assert err.status_code == 503
    assert 1 <= int(err.response.headers["Retry-After"]) <= 120
    assert err.body is not None and err.body["code"] == "discord_unstable"  # type: ignore[index]
    assert err.response.json()["error"]["type"] == "server_error"

    # channelId requests and /v1/models pass while open.
    reply = await ai.chat.completions.create(
        model="coze", messages=MESSAGES, extra_body={"channelId": channel_id}
    )
    assert reply.choices[0].message.content
    models = await ai.models.list()
    assert models.data is not None
    assert (await cdp_state(http, cdp))["channels_created"] == before


async def test_paused_gate_says_paused_and_passes_the_rest(
    daemon: Daemon, cdp: CdpEmulator, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    channel_id = await seeded_channel(http, discord_sim)
    await daemon.pause(600, "maintenance window")
    ai = client(daemon)
    with pytest.raises(openai.APIStatusError) as caught:
        await ai.images.generate(prompt="x", model="coze")
    assert caught.value.status_code == 503
    body = caught.value.response.json()["error"]
    assert (
        body["code"] == "paused"
        and "paused by the operator (maintenance window)" in body["message"]
    )
    assert int(caught.value.response.headers["Retry-After"]) == 120  # capped
    stream = await ai.chat.completions.create(
        model="coze", messages=MESSAGES, stream=True, extra_body={"channelId": channel_id}
    )
    assert [c async for c in stream]
    assert (await ai.models.list()).data is not None


async def test_client_with_retries_waits_as_told_and_succeeds_after_close(
    daemon: Daemon,
) -> None:
    await daemon.pause(1.2, "short pause")  # Retry-After: 2
    ai = client(daemon, max_retries=2)
    completion = await ai.chat.completions.create(model="coze", messages=MESSAGES)
    assert completion.choices[0].message.content
    refused = metric_value(daemon.metrics.gate_requests, kind="create", decision="refused_paused")
    assert refused >= 1
    assert daemon.breaker.state == "closed"


async def test_concurrency_cap_holds_and_nobody_hangs(
    discord_sim: DiscordSimulator,
    cdp_settings: CdpSettings,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    emulator = CdpEmulator(
        CdpSettings(**{**cdp_settings.__dict__, "reply_delay": 0.2, "auto_delete": 0.1})
    )
    await emulator.start("127.0.0.1", 0)
    try:
        config = fast_config(
            discord_sim, tmp_path / "state", **gate_config_extra(emulator, queue_wait="1s")
        )
        async with running_daemon(config) as daemon:
            await wait_for(daemon.ready, what="ready")
            ai = client(daemon)

            async def one() -> str:
                try:
                    await ai.chat.completions.create(model="coze", messages=MESSAGES)
                    return "ok"
                except openai.APIStatusError as exc:
                    assert exc.status_code == 503
                    return str(exc.response.json()["error"]["code"])

            results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(50))), 60)
            state = await cdp_state(http, emulator)
    finally:
        await emulator.stop()
    assert len(results) == 50
    assert set(results) <= {"ok", "create_queue_full"}
    assert results.count("ok") >= 4
    assert 1 <= state["max_concurrent_creates"] <= 4


async def test_upstream_down_is_502_and_oversized_body_413(
    discord_sim: DiscordSimulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        gate={
            "enabled": True,
            "listen": "127.0.0.1:0",
            "upstream": "http://127.0.0.1:9",  # nothing listens on the discard port
            "max_body": "1KiB",
        },
    )
    async with running_daemon(config) as daemon:
        async with http.get(f"{daemon.gate_url}/v1/models") as resp:
            body = await resp.json()
        assert resp.status == 502 and body["error"]["code"] == "upstream_unavailable"
        async with http.post(f"{daemon.gate_url}/v1/chat/completions", data=b"x" * 2048) as resp:
            body = await resp.json()
        assert resp.status == 413 and body["error"]["code"] == "body_too_large"


async def test_client_disconnect_mid_stream_releases_its_slot(
    discord_sim: DiscordSimulator, cdp_settings: CdpSettings, tmp_path: Path
) -> None:
    emulator = CdpEmulator(
        CdpSettings(**{**cdp_settings.__dict__, "stream_chunks": 50, "stream_chunk_delay": 0.1})
    )
    await emulator.start("127.0.0.1", 0)
    try:
        config = fast_config(
            discord_sim,
            tmp_path / "state",
            **gate_config_extra(emulator, max_concurrent_creates=1, queue_wait="0s"),
        )
        async with running_daemon(config) as daemon:
            assert daemon.gate is not None
            body = {"model": "coze", "messages": MESSAGES, "stream": True}
            async with aiohttp.ClientSession() as s:
                resp = await s.post(f"{daemon.gate_url}/v1/chat/completions", json=body)
                assert resp.status == 200, await resp.text()
                await resp.content.readline()  # the first chunk arrived
                assert daemon.gate.status()["inflight"]["create"] == 1
                resp.close()  # the client walks away mid-stream
            await wait_for(
                lambda: daemon.gate is not None and daemon.gate.status()["inflight"]["create"] == 0,
                what="slot released",
            )
            # The one slot is free again: the next create is admitted at once.
            ai = client(daemon)
            reply = await ai.chat.completions.create(model="coze", messages=MESSAGES, stream=False)
            assert reply.choices[0].message.content
            decided = daemon.metrics.gate_requests
            assert metric_value(decided, kind="create", decision="client_disconnected") == 1
    finally:
        await emulator.stop()


async def test_failing_creates_are_health_samples_that_open_the_breaker(
    discord_sim: DiscordSimulator, cdp: CdpEmulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # No probes: the gate's own samples are the only input, so they alone must trip it.
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        probes={"gateway": {"enabled": False}, "rest": {"enabled": False}},
        **gate_config_extra(cdp),
    )
    async with running_daemon(config) as daemon:
        await _creates_fail_until_open(daemon, discord_sim, http)


async def _creates_fail_until_open(
    daemon: Daemon, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    fault = {"rest": {"error_rate": 1.0, "routes": ["POST /guilds/{guild_id}/channels"]}}
    await put_faults(http, discord_sim, **fault)
    ai = client(daemon)
    statuses = []

    async def one() -> None:
        try:
            await ai.chat.completions.create(model="coze", messages=MESSAGES)
            statuses.append(200)
        except openai.APIStatusError as exc:
            statuses.append(exc.status_code)

    for _ in range(40):
        await asyncio.gather(*(one() for _ in range(4)))
        if daemon.breaker.state == "open":
            break
    assert daemon.breaker.state == "open", statuses
    assert 500 in statuses
    reason = daemon.breaker.snapshot()["last_transition"]["reason"]
    assert reason.startswith("failure ratio 1.00"), reason


async def test_hold_mode_waits_for_the_breaker(
    discord_sim: DiscordSimulator, cdp: CdpEmulator, tmp_path: Path
) -> None:
    config = fast_config(
        discord_sim, tmp_path / "state", **gate_config_extra(cdp, when_open="hold", hold_max="10s")
    )
    async with running_daemon(config) as daemon:
        await daemon.pause(0.5, "brief")
        completion = await client(daemon).chat.completions.create(model="coze", messages=MESSAGES)
        assert completion.choices[0].message.content
        assert metric_value(daemon.metrics.gate_requests, kind="create", decision="forwarded") == 1


async def test_gate_fails_open_when_health_evaluation_stops(
    daemon: Daemon, http: aiohttp.ClientSession
) -> None:
    now = daemon.clock.time()
    for _ in range(3):
        daemon.breaker.record(True, now, reason="test outage")
    assert daemon.breaker.state == "open"
    # The evaluation loop dies and stays down: the gate must not keep CDP closed.
    daemon.supervisor._base = 60.0
    await daemon.supervisor.stop(timeout=1)
    completion = await client(daemon).chat.completions.create(model="coze", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert daemon.gate is not None and daemon.gate.status()["fail_open"] is True
    assert metric_value(daemon.metrics.gate_fail_open) == 1
    assert metric_value(daemon.metrics.gate_requests, kind="create", decision="fail_open") == 1
    async with http.get(
        f"{daemon.control_url}/status", headers={"Authorization": "Bearer control-secret"}
    ) as resp:
        status = await resp.json()
    assert status["gate"]["fail_open"] is True
    assert json.dumps(status)  # JSON-ready
    # A deliberate pause still refuses: it needs no health verdict.
    await daemon.pause(600, "operator")
    with pytest.raises(openai.APIStatusError) as caught:
        await client(daemon).chat.completions.create(model="coze", messages=MESSAGES)
    assert "paused by the operator" in caught.value.response.json()["error"]["message"]


async def test_ledger_records_completed_and_failed_requests_across_restarts(
    discord_sim: DiscordSimulator, cdp: CdpEmulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state", **gate_config_extra(cdp))
    async with running_daemon(config) as daemon:
        ai = client(daemon)
        raw = await ai.chat.completions.with_raw_response.create(model="coze", messages=MESSAGES)
        done_id = raw.headers["X-Request-Id"]
        fault = {"rest": {"error_rate": 1.0, "routes": ["POST /guilds/{guild_id}/channels"]}}
        await put_faults(http, discord_sim, **fault)
        with pytest.raises(openai.APIStatusError) as caught:
            await ai.chat.completions.create(model="coze", messages=MESSAGES)
        failed_id = caught.value.response.headers["X-Request-Id"]
        done = daemon.ledger.lookup_channel_name(f"cdp-chat-{done_id}")
        failed = daemon.ledger.lookup_channel_name(f"cdp-chat-{failed_id}")
        assert done is not None and done.state == "completed"
        assert failed is not None and failed.state == "failed"

    # A restart (new daemon, same state dir) still knows both.
    async with running_daemon(config) as daemon:
        failed = daemon.ledger.lookup_channel_name(f"cdp-chat-{failed_id.lower()}")
        assert failed is not None and failed.state == "failed"
        assert daemon.ledger.get(done_id) is not None


async def test_large_and_chunked_bodies_arrive_whole_and_cdp_down_is_not_discord(
    discord_sim: DiscordSimulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    async def echo_length(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"received": len(body), "tail": body[-8:].decode()})

    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # CDP crashing mid-request
        return web.Response()

    upstream = web.Application(client_max_size=4 * 1024 * 1024)
    upstream.router.add_post("/v1/chat/completions", echo_length)
    upstream.router.add_get("/v1/models", reset)
    from monitor.httpserve import start_site

    runner, port = await start_site(upstream, "127.0.0.1", 0)
    try:
        config = fast_config(
            discord_sim,
            tmp_path / "state",
            probes={"gateway": {"enabled": False}, "rest": {"enabled": False}},
            gate={"enabled": True, "listen": "127.0.0.1:0", "upstream": f"http://127.0.0.1:{port}"},
        )
        async with running_daemon(config) as daemon:
            url = f"{daemon.gate_url}/v1/chat/completions"
            big = json.dumps({"channelId": "1", "messages": "x" * 900_000, "end": "THE-END"})
            async with http.post(url, data=big.encode()) as resp:
                assert (await resp.json()) == {"received": len(big), "tail": big[-8:]}

            async def chunked() -> AsyncIterator[bytes]:
                for i in range(0, len(big), 8192):
                    yield big[i : i + 8192].encode()

            async with http.post(url, data=chunked()) as resp:
                assert (await resp.json())["received"] == len(big)
            # It named its channel: not a create, even though it arrived in pieces.
            other = metric_value(daemon.metrics.gate_requests, kind="other", decision="forwarded")
            assert other == 2

            async with http.get(f"{daemon.gate_url}/v1/models") as resp:
                assert resp.status == 502
                assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    finally:
        await runner.cleanup()

    # CDP stopped: creates get 502, and that is not Discord instability.
    config = fast_config(
        discord_sim,
        tmp_path / "state2",
        probes={"gateway": {"enabled": False}, "rest": {"enabled": False}},
        gate={"enabled": True, "listen": "127.0.0.1:0", "upstream": f"http://127.0.0.1:{port}"},
    )
    async with running_daemon(config) as daemon:
        for _ in range(10):
            async with http.post(
                f"{daemon.gate_url}/v1/chat/completions", json={"messages": []}
            ) as resp:
                assert resp.status == 502
        assert [s for s in daemon.health.window if s.source == "gate"] == []
        assert daemon.breaker.state == "closed"


# -- hold mode, on an injected clock -------------------------------------------------


def hold_admission(clock: ManualClock, hold_max: str) -> tuple[Health, CreateAdmission]:
    config = parse_config(
        "discord: {token: t0ken, guild_id: 1}\n"
        f"gate: {{when_open: hold, hold_max: {hold_max}}}\n"
        "breaker: {reset_timeout: 60s}\n"
    )
    health = Health.from_config(config, clock=clock)
    health.add_sample(Sample("rest", clock.time(), True))  # Discord reached: judged, not unknown
    admission = CreateAdmission(
        config.gate,
        health=health,
        metrics=Metrics(CollectorRegistry()),
        clock=clock,
        logger=logging.getLogger("test.gate"),
    )
    return health, admission


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_hold_admits_on_a_state_change_without_polling() -> None:
    clock = ManualClock()
    health, admission = hold_admission(clock, "30s")
    health.pause(clock.time(), None, "operator")
    held = asyncio.create_task(admission.admit())
    await settle()
    assert not held.done()
    assert clock.sleeps == [30.0]  # one wait for the whole hold, not a poll
    health.resume(clock.time())  # the breaker closes: the held request goes ahead
    assert await held is None
    assert clock.sleeps == [30.0] and clock.monotonic() == 0.0


async def test_hold_wakes_when_the_open_period_ends() -> None:
    clock = ManualClock()
    health, admission = hold_admission(clock, "2m")
    health.breaker.record(True, clock.time(), reason="outage")
    held = asyncio.create_task(admission.admit())
    await settle()
    assert clock.sleeps == [60.0]  # until retry_at, not until hold_max
    clock.advance(60)
    assert await held is None
    assert health.breaker.state == "half_open"  # admitted as the period's trial


async def test_hold_refuses_after_hold_max() -> None:
    clock = ManualClock()
    health, admission = hold_admission(clock, "10s")
    health.pause(clock.time(), None, "operator")
    held = asyncio.create_task(admission.admit())
    await settle()
    clock.advance(10)
    refusal = await held
    assert refusal is not None and refusal.decision == "refused_paused"
    assert "operator" in refusal.message
