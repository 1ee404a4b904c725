"""The simulated gateway runs sessions the way Discord does: each rule here answers with
the close code or opcode Discord uses (discord-api-docs docs/topics/Gateway.md and
docs/topics/Opcodes_and_Status_Codes.md), spoken over aiohttp's raw websocket client."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from monitor.clock import FakeClock
from monitor.sim.discord import DiscordSimulator, SimSettings
from tests.helpers.sim import put_faults, seed

GUILDS = 1 << 0
GUILD_MESSAGES = 1 << 9
QUERY = "/?v=10&encoding=json"


@pytest.fixture
async def sim() -> AsyncIterator[DiscordSimulator]:
    """A simulator whose clock only moves when told (IDENTIFY spacing is 5 s)."""
    clock = FakeClock()
    simulator = DiscordSimulator(SimSettings(), clock=clock)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def next_identify_allowed(sim: DiscordSimulator) -> None:
    clock = sim.clock
    assert isinstance(clock, FakeClock)
    clock.advance(5.0)


async def hello(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive_json()
    assert msg["op"] == 10
    return dict(msg["d"])


async def identify(
    ws: aiohttp.ClientWebSocketResponse, intents: int = GUILDS | GUILD_MESSAGES, **extra: Any
) -> None:
    d = {"token": "sim-token", "intents": intents, "properties": {}, **extra}
    await ws.send_json({"op": 2, "d": d})


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int:
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE, msg
    return int(msg.data)


async def test_hello_carries_trace_and_heartbeats_are_acked(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        d = await hello(ws)
        assert d["heartbeat_interval"] == 41_250 and isinstance(d["_trace"], list)
        await ws.send_json({"op": 1, "d": None})
        assert (await ws.receive_json())["op"] == 11


async def test_silent_client_is_closed_4009(http: aiohttp.ClientSession) -> None:
    simulator = DiscordSimulator(SimSettings(heartbeat_interval_ms=40))
    await simulator.start()
    try:
        async with http.ws_connect(simulator.gateway_url + QUERY) as ws:
            assert (await hello(ws))["heartbeat_interval"] == 40
            assert await closed_with(ws) == 4009  # no heartbeat: the session timed out
    finally:
        await simulator.stop()


async def test_ready_then_guild_create(http: aiohttp.ClientSession, sim: DiscordSimulator) -> None:
    await seed(http, sim, count=2)
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws)
        ready = await ws.receive_json()
        assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
        d = ready["d"]
        assert d["application"]["id"] == str(sim.settings.bot_user_id)
        assert d["session_id"] and d["resume_gateway_url"] == sim.gateway_url
        assert "shard" not in d  # only echoed when sent
        guild = await ws.receive_json()
        assert (guild["t"], guild["s"]) == ("GUILD_CREATE", 2)
        assert guild["d"]["id"] == str(sim.settings.guild_id)
        assert len(guild["d"]["channels"]) == 2


@pytest.mark.parametrize(
    ("query", "code"),
    [("/?v=99&encoding=json", 4012), ("/?v=10&encoding=etf", 4002)],
)
async def test_query_checks(
    http: aiohttp.ClientSession, sim: DiscordSimulator, query: str, code: int
) -> None:
    async with http.ws_connect(sim.gateway_url + query) as ws:
        assert await closed_with(ws) == code
    assert sim.state.gateway_close_codes[code] == 1


async def test_bad_token_4004(http: aiohttp.ClientSession, sim: DiscordSimulator) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 1, "properties": {}}})
        assert await closed_with(ws) == 4004


async def test_second_identify_4005(http: aiohttp.ClientSession, sim: DiscordSimulator) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=0)
        assert (await ws.receive_json())["t"] == "READY"
        await identify(ws, intents=0)
        assert await closed_with(ws) == 4005


async def test_payload_before_identify_4003(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await ws.send_json({"op": 3, "d": {"status": "online", "since": 0, "afk": False}})
        assert await closed_with(ws) == 4003


async def test_undecodable_and_unknown_payloads(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await ws.send_bytes(b'{"op": 1, "d": null}')  # client payloads are text in JSON mode
        assert await closed_with(ws) == 4002
    next_identify_allowed(sim)
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=0)
        await ws.receive_json()
        await ws.send_json({"op": 42, "d": None})
        assert await closed_with(ws) == 4001


async def test_shard_is_validated_and_echoed(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=0, shard=[0, 1])
        assert (await ws.receive_json())["d"]["shard"] == [0, 1]
    next_identify_allowed(sim)
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=0, shard=[1, 1])
        assert await closed_with(ws) == 4010


async def test_zlib_stream_transport_compression(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    inflate = zlib.decompressobj()

    async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.BINARY
        assert msg.data[-4:] == b"\x00\x00\xff\xff"  # Z_SYNC_FLUSH ends every payload
        return json.loads(inflate.decompress(msg.data))

    async with http.ws_connect(sim.gateway_url + QUERY + "&compress=zlib-stream") as ws:
        assert (await receive(ws))["op"] == 10
        await identify(ws)
        assert (await receive(ws))["t"] == "READY"
        assert (await receive(ws))["t"] == "GUILD_CREATE"  # one zlib context across frames


async def test_resume_replays_missed_events_then_resumed(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws)
        session_id = (await ws.receive_json())["d"]["session_id"]
        seq = (await ws.receive_json())["s"]
    [cid] = await seed(http, sim, count=1)  # happens while the session is away
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        resume = {"token": "sim-token", "session_id": session_id, "seq": seq}
        await ws.send_json({"op": 6, "d": resume})
        missed = await ws.receive_json()
        assert (missed["t"], missed["s"], missed["d"]["id"]) == ("CHANNEL_CREATE", seq + 1, cid)
        resumed = await ws.receive_json()
        assert (resumed["t"], resumed["s"]) == ("RESUMED", seq + 2)
    assert sim.state.snapshot()["gateway"]["resumes"] == 1


async def test_resume_of_unknown_session_is_op9_false(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await ws.send_json({"op": 6, "d": {"token": "sim-token", "session_id": "x", "seq": 3}})
        assert await ws.receive_json() == {"op": 9, "d": False, "s": None, "t": None}


async def test_identify_faster_than_max_concurrency_is_op9(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as first:
        await hello(first)
        await identify(first, intents=0)
        assert (await first.receive_json())["t"] == "READY"
        async with http.ws_connect(sim.gateway_url + QUERY) as second:
            await hello(second)
            await identify(second, intents=0)
            assert (await second.receive_json())["op"] == 9  # within 5 s of the first
            next_identify_allowed(sim)
            await identify(second, intents=0)
            assert (await second.receive_json())["t"] == "READY"
    _status, body = await bot_get(http, sim, "/gateway/bot")
    assert body["session_start_limit"]["remaining"] == 998  # two IDENTIFYs counted
    assert body["session_start_limit"]["max_concurrency"] == 1


async def bot_get(http: aiohttp.ClientSession, sim: DiscordSimulator, path: str) -> tuple[int, Any]:
    headers = {"Authorization": "Bot sim-token", "User-Agent": "DiscordBot (x, 1)"}
    async with http.get(sim.api_base + path, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(("fault", "op"), [("reconnect", 7), ("invalid_session", 9)])
async def test_op7_and_op9_faults(
    http: aiohttp.ClientSession, sim: DiscordSimulator, fault: str, op: int
) -> None:
    await put_faults(http, sim, gateway={fault: True})
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=0)
        first = await ws.receive_json()
        if op == 7:
            assert first["t"] == "READY"
            assert (await ws.receive_json())["op"] == 7
        else:
            assert first == {"op": 9, "d": False, "s": None, "t": None}


async def test_dispatch_follows_intents(http: aiohttp.ClientSession, sim: DiscordSimulator) -> None:
    url = sim.gateway_url + QUERY
    async with http.ws_connect(url) as guilds_only, http.ws_connect(url) as messages_only:
        await hello(guilds_only)
        await identify(guilds_only, intents=GUILDS)
        assert [(await guilds_only.receive_json())["t"] for _ in range(2)] == [
            "READY",
            "GUILD_CREATE",
        ]
        next_identify_allowed(sim)
        await hello(messages_only)
        await identify(messages_only, intents=GUILD_MESSAGES)
        assert (await messages_only.receive_json())["t"] == "READY"  # no GUILD_CREATE

        [cid] = await seed(http, sim, count=1)
        async with http.post(f"{sim.admin_url}/channels/{cid}/messages", json={}) as resp:
            assert resp.status == 200
        headers = {"Authorization": "Bot sim-token", "User-Agent": "DiscordBot (x, 1)"}
        async with http.patch(
            f"{sim.api_base}/channels/{cid}", json={"name": "renamed"}, headers=headers
        ) as resp:
            assert resp.status == 200
        async with http.delete(f"{sim.api_base}/channels/{cid}", headers=headers) as resp:
            assert resp.status == 200

        seen = [(await guilds_only.receive_json())["t"] for _ in range(3)]
        assert seen == ["CHANNEL_CREATE", "CHANNEL_UPDATE", "CHANNEL_DELETE"]
        created = await messages_only.receive_json()
        assert created["t"] == "MESSAGE_CREATE" and created["d"]["channel_id"] == cid


async def test_privileged_intents_not_allowed_4014(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=GUILDS | (1 << 1))  # GUILD_MEMBERS, not switched on
        assert await closed_with(ws) == 4014


async def test_too_many_payloads_4008(http: aiohttp.ClientSession) -> None:
    simulator = DiscordSimulator(SimSettings(gateway_send_limit=3))
    await simulator.start()
    try:
        async with http.ws_connect(simulator.gateway_url + QUERY) as ws:
            await hello(ws)
            for _ in range(4):
                await ws.send_json({"op": 1, "d": None})
            codes = [(await ws.receive()) for _ in range(4)]
            assert codes[-1].type == aiohttp.WSMsgType.CLOSE and codes[-1].data == 4008
    finally:
        await simulator.stop()


async def test_resume_with_a_seq_never_sent_4007(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=0)
        session_id = (await ws.receive_json())["d"]["session_id"]
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        resume = {"token": "sim-token", "session_id": session_id, "seq": 99}
        await ws.send_json({"op": 6, "d": resume})
        assert await closed_with(ws) == 4007


async def test_rest_message_create_and_edit_are_dispatched(
    http: aiohttp.ClientSession, sim: DiscordSimulator
) -> None:
    [cid] = await seed(http, sim, count=1)
    headers = {"Authorization": "Bot sim-token", "User-Agent": "DiscordBot (x, 1)"}
    async with http.ws_connect(sim.gateway_url + QUERY) as ws:
        await hello(ws)
        await identify(ws, intents=GUILD_MESSAGES)
        assert (await ws.receive_json())["t"] == "READY"
        url = f"{sim.api_base}/channels/{cid}/messages"
        async with http.post(url, json={"content": "v1"}, headers=headers) as resp:
            mid = (await resp.json())["id"]
        async with http.patch(f"{url}/{mid}", json={"content": "v2"}, headers=headers) as resp:
            assert resp.status == 200
        created, updated = await ws.receive_json(), await ws.receive_json()
    assert (created["t"], created["d"]["content"]) == ("MESSAGE_CREATE", "v1")
    assert (updated["t"], updated["d"]["id"], updated["d"]["content"]) == (
        "MESSAGE_UPDATE",
        mid,
        "v2",
    )
