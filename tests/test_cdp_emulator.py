"""The CDP emulator against the Discord simulator, both on free loopback ports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.health.cdplog import CreateFailure, CreateRetry, RequestOutcome, parse_line
from monitor.sim.cdp import CdpEmulator, CdpSettings, format_go_duration
from monitor.sim.discord import DEFAULT_ROUTE_LIMITS, DiscordSimulator, RouteLimit, SimSettings
from tests.helpers.sim import clear_faults, put_faults, seed
from tests.helpers.wait import wait_for

CREATE_ROUTE = "POST /guilds/{guild_id}/channels"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}

MakeEmu = Callable[..., Awaitable[CdpEmulator]]


@pytest.fixture
async def make_emu(discord_sim: DiscordSimulator) -> AsyncIterator[MakeEmu]:
    started: list[CdpEmulator] = []

    async def make(**overrides: Any) -> CdpEmulator:
        values: dict[str, Any] = {
            "discord_api_base": discord_sim.api_base,
            "guild_id": discord_sim.settings.guild_id,
            "token": "sim-token",
            "attempt_timeout": 5.0,
            "reply_delay": 0.01,
            "auto_delete": 0.2,
            "stream_chunk_delay": 0.01,
        }
        values.update(overrides)
        emu = CdpEmulator(CdpSettings(**values))
        await emu.start("127.0.0.1", 0)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        await emu.stop()


def sim_channels(sim: DiscordSimulator, name: str | None = None) -> list[Any]:
    return [c for c in sim.state.channels.values() if name is None or c.name == name]


async def cdp_state(http: aiohttp.ClientSession, emu: CdpEmulator) -> dict[str, Any]:
    async with http.get(emu.admin_url + "/state") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def test_chat_creates_posts_and_deletes_the_channel(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log_path = tmp_path / "cdp.log"
    emu = await make_emu(auto_delete=0.5, log_path=log_path)
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
        body = await resp.json()
    # Checked at once, before the 0.5 s delete timer can fire.
    [channel] = sim_channels(discord_sim, f"cdp-chat-{rid.lower()}")
    assert [m.content for m in channel.messages] == [
        "hello there",
        body["choices"][0]["message"]["content"],
    ]
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] > 0
    assert (await cdp_state(http, emu))["pending_delete_timers"] == 1

    await wait_for(lambda: channel.id not in discord_sim.state.channels, what="channel deleted")
    state = await cdp_state(http, emu)
    assert state["channels_created"] == 1
    assert state["channels_deleted"] == 1
    assert state["pending_delete_timers"] == 0
    assert state["requests"] == {"/v1/chat/completions": {"200": 1}}
    assert discord_sim.state.requests[("DELETE /channels/{channel_id}", 200)] == 1

    gin = [line for line in log_path.read_text().splitlines() if line.startswith("[GIN]")]
    assert len(gin) == 1
    event = parse_line(gin[0])
    assert isinstance(event, RequestOutcome)
    assert (event.request_id, event.status, event.path) == (rid, 200, "/v1/chat/completions")


async def test_stream_arrives_incrementally_and_ends_with_done(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(stream_chunks=4, stream_chunk_delay=0.3)
    chunks: list[dict[str, Any]] = []
    in_flight_at_first_chunk = None
    async with http.post(
        emu.base_url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Request-Id"]
        lines = []
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line:
                continue
            lines.append(line)
            if line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
            if in_flight_at_first_chunk is None:
                # The first chunk is here while the emulator still writes the rest.
                in_flight_at_first_chunk = (await cdp_state(http, emu))["requests_in_flight"]
    assert in_flight_at_first_chunk == 1
    assert lines[-1] == "data: [DONE]"
    assert len(chunks) == 4
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert text.endswith("hello there")
    assert (await cdp_state(http, emu))["requests_in_flight"] == 0


async def test_channel_id_creates_nothing(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    [own] = await seed(http, discord_sim, count=1, names=["my-channel"])
    async with http.post(
        emu.base_url + "/v1/chat/completions", json={**CHAT, "channelId": own}
    ) as resp:
        assert resp.status == 200
    state = await cdp_state(http, emu)
    assert state["channels_created"] == 0
    assert state["pending_delete_timers"] == 0
    assert not any(route == CREATE_ROUTE for route, _ in discord_sim.state.requests)
    assert len(discord_sim.state.channels[int(own)].messages) == 2


async def test_timed_out_creates_leak_channels_without_timers(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(attempt_timeout=0.3, auto_delete=0.2)
    await put_faults(http, discord_sim, rest={"latency_ms": 1000, "routes": [CREATE_ROUTE]})
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 500
        rid = resp.headers["X-Request-Id"]
        body = await resp.json()
    assert (
        "failed after 3 attempts due to timeout, please reset BOT_TOKEN"
        in (body["error"]["message"])
    )

    events = [parse_line(line) for line in emu.log_lines]
    retries = [e for e in events if isinstance(e, CreateRetry)]
    assert [(e.request_id, e.attempt) for e in retries] == [(rid, 1), (rid, 2)]
    failures = [e for e in events if isinstance(e, CreateFailure)]
    assert [(e.request_id, e.reason) for e in failures] == [(rid, "timeout")]
    outcomes = [e for e in events if isinstance(e, RequestOutcome)]
    assert [(o.request_id, o.status) for o in outcomes] == [(rid, 500)]

    # The three abandoned attempts land later, all with the request's name.
    name = f"cdp-chat-{rid.lower()}"
    await wait_for(lambda: len(sim_channels(discord_sim, name)) == 3, what="3 late channels")
    state = await cdp_state(http, emu)
    assert state["late_channels"] == 3
    assert state["create_timeouts"] == 3
    assert state["max_concurrent_creates"] == 3  # abandoned attempts count
    assert state["pending_delete_timers"] == 0

    # A healthy request afterwards gets its timer and is deleted; the leak stays.
    await clear_faults(http, discord_sim)
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        ok_name = f"cdp-chat-{resp.headers['X-Request-Id'].lower()}"
    await wait_for(lambda: not sim_channels(discord_sim, ok_name), what="healthy channel deleted")
    assert len(sim_channels(discord_sim, name)) == 3


async def test_restart_forgets_delete_timers(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(auto_delete=60.0)
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        name = f"cdp-chat-{resp.headers['X-Request-Id'].lower()}"
    assert (await cdp_state(http, emu))["pending_delete_timers"] == 1
    async with http.post(emu.admin_url + "/restart") as resp:
        assert (await resp.json()) == {"forgotten_delete_timers": 1}
    assert (await cdp_state(http, emu))["pending_delete_timers"] == 0
    assert len(sim_channels(discord_sim, name)) == 1
    assert not any(route.startswith("DELETE") for route, _ in discord_sim.state.requests)


@pytest.mark.parametrize("sim_settings", [SimSettings(channel_limit=3)])
async def test_full_guild_answers_30013(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await seed(http, discord_sim, count=3, prefix="general-")
    async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 500
        rid = resp.headers["X-Request-Id"]
        message = (await resp.json())["error"]["message"]
    assert "Maximum number of server channels reached" in message
    assert "30013" in message
    [line] = [line for line in emu.log_lines if line.startswith("[ERR]")]
    assert "Maximum number of server channels reached" in line and "30013" in line
    event = parse_line(line)
    assert isinstance(event, CreateFailure)
    assert (event.request_id, event.reason) == (rid, "limit_30013")
    # No retries against a full guild.
    assert discord_sim.state.requests[(CREATE_ROUTE, 400)] == 1
    assert (await cdp_state(http, emu))["channels_created"] == 0


async def test_max_concurrent_creates_under_concurrent_requests(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await put_faults(http, discord_sim, rest={"latency_ms": 800, "routes": [CREATE_ROUTE]})

    async def chat() -> int:
        async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
            return resp.status

    assert await asyncio.gather(*(chat() for _ in range(4))) == [200] * 4
    state = await cdp_state(http, emu)
    assert state["max_concurrent_creates"] == 4
    assert state["creates_in_flight"] == 0
    assert state["channels_created"] == 4

    async with http.post(emu.admin_url + "/reset-stats") as resp:
        reset = await resp.json()
    assert reset["max_concurrent_creates"] == 0
    assert reset["requests"] == {}


async def test_bucket_lock_serializes_creates_like_discordgo(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(bucket_lock=True)
    await put_faults(http, discord_sim, rest={"latency_ms": 200, "routes": [CREATE_ROUTE]})

    async def chat() -> int:
        async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
            return resp.status

    assert await asyncio.gather(*(chat() for _ in range(3))) == [200] * 3
    state = await cdp_state(http, emu)
    assert state["channels_created"] == 3
    assert state["max_concurrent_creates"] == 1


@pytest.mark.parametrize(
    "sim_settings",
    [
        SimSettings(
            route_limits={
                **DEFAULT_ROUTE_LIMITS,
                CREATE_ROUTE: RouteLimit("tiny", 1, 0.2),
            }
        )
    ],
)
async def test_discord_429s_are_waited_out(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()

    async def chat() -> int:
        async with http.post(emu.base_url + "/v1/chat/completions", json=CHAT) as resp:
            return resp.status

    assert await asyncio.gather(*(chat() for _ in range(3))) == [200] * 3
    assert (await cdp_state(http, emu))["channels_created"] == 3
    # Three concurrent creates against a one-per-bucket limit: some were refused.
    assert discord_sim.state.requests[(CREATE_ROUTE, 429)] >= 1


async def test_del_all_cdp_deletes_only_temporary_channels(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    keep = await seed(http, discord_sim, count=2, prefix="general-")
    await seed(http, discord_sim, count=3, prefix="cdp-chat-")
    async with http.get(emu.base_url + "/api/channel/del/all/cdp") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["success"] is True
    assert body["deleted"] == 3
    assert sorted(str(c) for c in discord_sim.state.channels) == sorted(keep)


async def test_api_channel_create_has_no_delete_timer(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(proxy_secret="s3cret")
    url = emu.base_url + "/api/channel/create"
    async with http.post(url, json={"name": "explicit"}) as resp:
        assert resp.status == 401
    async with http.post(
        url, json={"name": "explicit"}, headers={"proxy-secret": "s3cret"}
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["success"] is True
    assert discord_sim.state.channels[int(body["data"]["id"])].name == "explicit"
    assert (await cdp_state(http, emu))["pending_delete_timers"] == 0
    async with http.get(emu.base_url + "/v1/models") as resp:
        assert resp.status == 401  # /v1 wants `Authorization: Bearer <secret>`
    async with http.get(
        emu.base_url + "/v1/models", headers={"Authorization": "Bearer s3cret"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["object"] == "list"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b"not json"),
        ("/v1/chat/completions", b"[1, 2]"),
        ("/v1/chat/completions", b"{}"),
        ("/v1/chat/completions", b'{"messages": "hi"}'),
        ("/v1/chat/completions", b'{"messages": [1]}'),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": ""}]}'),
        ("/v1/chat/completions", json.dumps({**CHAT, "stream": "yes"}).encode()),
        ("/v1/chat/completions", json.dumps({**CHAT, "channelId": 12}).encode()),
        ("/v1/chat/completions", json.dumps({**CHAT, "model": 4}).encode()),
        ("/v1/images/generations", b'{"prompt": 3}'),
        ("/v1/images/generations", b"\xff\xfe"),
        ("/api/channel/create", b'{"name": ""}'),
        ("/api/channel/create", b"null"),
    ],
)
async def test_malformed_bodies_get_400(
    make_emu: MakeEmu,
    discord_sim: DiscordSimulator,
    http: aiohttp.ClientSession,
    path: str,
    body: bytes,
) -> None:
    emu = await make_emu()
    async with http.post(
        emu.base_url + path, data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        error = await resp.json()
    assert error["error"]["message"]
    assert error["error"]["type"] == "invalid_request_error"
    assert not discord_sim.state.channels
    async with http.get(emu.base_url + "/v1/models") as resp:
        assert resp.status == 200


async def test_images_and_unknown_paths(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    async with http.post(emu.base_url + "/v1/images/generations", json={"prompt": "a cat"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["data"] == [{"url": "https://example.invalid/img.png"}]
    async with http.get(emu.base_url + "/v1/nothing") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
    state = await cdp_state(http, emu)
    assert state["requests"]["/v1/images/generations"] == {"200": 1}
    assert state["requests"]["/v1/nothing"] == {"404": 1}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0000125, "12.5µs"),
        (0.25, "250ms"),
        (1.234, "1.234s"),
        (180, "3m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text
