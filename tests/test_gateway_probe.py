"""Gateway probe against the Discord simulator, plus a few hand-made servers for
protocol failures the simulator has no fault for."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from monitor.discord.gateway import GatewayProbeResult, gateway_connect_url, probe_gateway
from monitor.sim.discord import DiscordSimulator
from tests.helpers.sim import clear_faults, put_faults

HELLO = {"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def set_faults(http: aiohttp.ClientSession, sim: DiscordSimulator, **gateway: Any) -> None:
    await put_faults(http, sim, gateway=gateway)


async def sim_gateway_state(http: aiohttp.ClientSession, sim: DiscordSimulator) -> dict[str, int]:
    async with http.get(f"{sim.admin_url}/state") as resp:
        assert resp.status == 200
        state: dict[str, Any] = await resp.json()
    gateway: dict[str, int] = state["gateway"]
    return gateway


# --- against the simulator ---------------------------------------------------------


async def test_healthy_gateway_is_ok(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    result = await probe_gateway(discord_sim.gateway_url, session=http, timeout=5)
    assert result.outcome == "ok", result
    assert result.phase is None and result.error is None
    assert result.heartbeat_interval_ms is not None and result.heartbeat_interval_ms > 0
    assert set(result.latencies()) == {"connect", "hello", "heartbeat_ack"}
    assert all(v >= 0 for v in result.latencies().values())


async def test_refused_gateway(discord_sim: DiscordSimulator, http: aiohttp.ClientSession) -> None:
    await set_faults(http, discord_sim, refuse=True)
    result = await probe_gateway(discord_sim.gateway_url, session=http, timeout=5)
    assert result.outcome == "refused", result
    assert result.phase == "connect"
    assert result.http_status == 503  # the simulator refuses the upgrade like a proxy would
    assert result.connect is None and result.hello is None and result.heartbeat_ack is None
    assert result.error


async def test_hello_delay_beyond_timeout(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, discord_sim, hello_delay_ms=5000)
    result = await probe_gateway(discord_sim.gateway_url, session=http, timeout=0.5)
    assert result.outcome == "timeout", result
    assert result.phase == "hello"
    assert result.connect is not None
    assert result.hello is None and result.heartbeat_ack is None


async def test_dropped_ack_times_out_in_ack_phase(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, discord_sim, drop_ack=True)
    result = await probe_gateway(discord_sim.gateway_url, session=http, timeout=0.5)
    assert result.outcome == "timeout", result
    assert result.phase == "heartbeat_ack"
    assert result.connect is not None and result.hello is not None
    assert result.heartbeat_ack is None


async def test_ack_delay_within_timeout_is_ok_and_slower(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, discord_sim, ack_delay_ms=300)
    result = await probe_gateway(discord_sim.gateway_url, session=http, timeout=10)
    assert result.outcome == "ok", result
    assert result.heartbeat_ack is not None and result.heartbeat_ack >= 0.3


async def test_forced_close_code(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, discord_sim, close_code=4000)
    result = await probe_gateway(discord_sim.gateway_url, session=http, timeout=5)
    assert result.outcome == "closed", result
    assert result.close_code == 4000
    assert result.phase in ("hello", "heartbeat_ack")


async def test_faults_cleared_probe_recovers(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, discord_sim, refuse=True)
    assert (await probe_gateway(discord_sim.gateway_url, session=http, timeout=5)).outcome == (
        "refused"
    )
    await clear_faults(http, discord_sim)
    assert (await probe_gateway(discord_sim.gateway_url, session=http, timeout=5)).ok


async def test_probe_never_identifies(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    results = [
        await probe_gateway(discord_sim.gateway_url, session=http, timeout=5) for _ in range(3)
    ]
    await set_faults(http, discord_sim, drop_ack=True)
    results.append(await probe_gateway(discord_sim.gateway_url, session=http, timeout=0.3))
    assert [r.outcome for r in results] == ["ok", "ok", "ok", "timeout"]
    state = await sim_gateway_state(http, discord_sim)
    assert state["connections"] >= 4
    assert state["heartbeats"] >= 4
    assert state["identifies"] == 0


# --- hand-made servers for protocol failures ----------------------------------------


@pytest.fixture
async def fake_gateway(
    aiohttp_server: AiohttpServer,
) -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/gateway/", handler)
        server = await aiohttp_server(app)
        return f"ws://127.0.0.1:{server.port}/gateway"

    yield start


def test_connect_url_appends_query_once() -> None:
    assert gateway_connect_url("wss://gateway.discord.gg") == (
        "wss://gateway.discord.gg/?v=10&encoding=json"
    )
    assert gateway_connect_url("wss://gateway.discord.gg/") == (
        "wss://gateway.discord.gg/?v=10&encoding=json"
    )


async def test_full_exchange_seen_by_server(
    fake_gateway: Callable[[Handler], Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    seen: dict[str, Any] = {"frames": []}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["query"] = dict(request.query)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(HELLO)
        async for msg in ws:
            seen["frames"].append(json.loads(msg.data))
            # Server-requested heartbeat first: the probe must keep waiting for op 11.
            await ws.send_json({"op": 1, "d": None})
            await ws.send_json({"op": 11})
        seen["close_code"] = ws.close_code
        return ws

    url = await fake_gateway(handler)
    result = await probe_gateway(url + "/", session=http, timeout=5)
    assert result.outcome == "ok", result
    assert result.heartbeat_interval_ms == 41250
    assert seen["query"] == {"v": "10", "encoding": "json"}
    assert seen["frames"] == [{"op": 1, "d": None}]
    assert seen["close_code"] == 1000


@pytest.mark.parametrize(
    ("send", "phase", "fragment"),
    [
        (lambda ws: ws.send_str("not json"), "hello", "non-JSON"),
        (lambda ws: ws.send_bytes(b"\x78\x9c"), "hello", "binary"),
        (lambda ws: ws.send_json({"op": 0, "t": "READY"}), "hello", "op 10"),
        (lambda ws: ws.send_json({"op": 10, "d": {}}), "hello", "heartbeat_interval"),
        (lambda ws: ws.send_json([1, 2]), "hello", "non-object"),
    ],
)
async def test_unexpected_hello_payload_is_protocol_error(
    fake_gateway: Callable[[Handler], Awaitable[str]],
    http: aiohttp.ClientSession,
    send: Callable[[web.WebSocketResponse], Awaitable[None]],
    phase: str,
    fragment: str,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await send(ws)
        async for _ in ws:
            pass
        return ws

    result = await probe_gateway(await fake_gateway(handler), session=http, timeout=5)
    assert result.outcome == "protocol_error", result
    assert result.phase == phase
    assert result.error is not None and fragment in result.error


async def test_unexpected_op_instead_of_ack(
    fake_gateway: Callable[[Handler], Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(HELLO)
        async for _ in ws:
            await ws.send_json({"op": 7, "d": None})  # RECONNECT
        return ws

    result = await probe_gateway(await fake_gateway(handler), session=http, timeout=5)
    assert result.outcome == "protocol_error", result
    assert result.phase == "heartbeat_ack"
    assert result.hello is not None and result.heartbeat_ack is None


async def test_close_after_hello_carries_code(
    fake_gateway: Callable[[Handler], Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(HELLO)
        await ws.receive()
        await ws.close(code=4009, message=b"Session timed out")
        return ws

    result = await probe_gateway(await fake_gateway(handler), session=http, timeout=5)
    assert result.outcome == "closed", result
    assert result.phase == "heartbeat_ack"
    assert result.close_code == 4009


async def test_http_error_on_upgrade_is_refused(
    fake_gateway: Callable[[Handler], Awaitable[str]], http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="upstream down")

    result = await probe_gateway(await fake_gateway(handler), session=http, timeout=5)
    assert result.outcome == "refused", result
    assert result.phase == "connect"
    assert result.http_status == 503


async def test_closed_port_is_refused(http: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await probe_gateway(f"ws://127.0.0.1:{port}", session=http, timeout=5)
    assert result.outcome == "refused", result
    assert result.phase == "connect"


async def test_silent_server_times_out_in_connect(http: aiohttp.ClientSession) -> None:
    # Accepts TCP but never answers the upgrade request.
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await probe_gateway(f"ws://127.0.0.1:{port}", session=http, timeout=0.3)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert result == GatewayProbeResult(
        outcome="timeout", phase="connect", error="no answer within 0.3s (phase connect)"
    )
