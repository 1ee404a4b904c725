"""The CDP emulator end to end against the Discord simulator: a chat makes, uses and
deletes `cdp-chat-<requestId>` as CDP v4.6.5 does (CDP-FACTS.md sections 1-4). Shared
fixtures for the other tests/test_cdp_*.py live here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.health.cdplog import RequestOutcome, parse_line
from monitor.sim.cdp import CdpEmulator, CdpSettings, format_go_duration
from monitor.sim.discord import DiscordSimulator
from tests.helpers.sim import seed

CREATE_ROUTE = "POST /guilds/{guild_id}/channels"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}

MakeEmu = Callable[..., Awaitable[CdpEmulator]]


@pytest.fixture
async def make_emu(discord_sim: DiscordSimulator) -> AsyncIterator[MakeEmu]:
    started: list[CdpEmulator] = []

    async def make(env: dict[str, str] | None = None, **overrides: Any) -> CdpEmulator:
        values: dict[str, Any] = {
            "time_scale": 20.0,  # 60 s attempts: 3 s, the 20 s HTTP timeout: 1 s
            "reply_delay": 0.01,
            "stream_chunk_delay": 0.01,
            "restart_delay": 0.05,
            "stay_active_enable": "0",
        }
        values.update(overrides)
        # the simulator's user token, and Coze's replies over CDP's own gateway session
        settings = CdpSettings.for_simulator(discord_sim, **values)
        # Coze thinks for longer than CDP's 1 s sleep after the prompt (scaled here);
        # CDP starts listening for the reply only then (chat.go:291).
        discord_sim.state.coze_faults.delay_ms = 300
        emu = CdpEmulator(settings.with_env(env) if env is not None else settings)
        started.append(emu)
        await emu.start("127.0.0.1", 0)
        return emu

    yield make
    for emu in started:
        await emu.stop()


async def eventually(check: Callable[[], Any], *, within: float = 10.0) -> Any:
    """Poll until `check()` is truthy (a bounded wait, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result:
            return result
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


def sim_channels(sim: DiscordSimulator, name: str | None = None) -> list[Any]:
    return [c for c in sim.state.channels.values() if name is None or c.name == name]


async def put_faults(http: aiohttp.ClientSession, sim: DiscordSimulator, **rest: Any) -> None:
    async with http.put(sim.admin_url + "/faults", json={"rest": rest}) as resp:
        assert resp.status == 200, await resp.text()


async def cdp_state(http: aiohttp.ClientSession, emu: CdpEmulator) -> dict[str, Any]:
    async with http.get(emu.admin_url + "/state") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def chat(
    http: aiohttp.ClientSession, emu: CdpEmulator, body: Any = None, **kw: Any
) -> tuple[int, str | None, bytes]:
    data = json.dumps(CHAT if body is None else body).encode()
    async with http.post(emu.base_url + "/v1/chat/completions", data=data, **kw) as resp:
        return resp.status, resp.headers.get("X-Request-Id"), await resp.read()


def lines(emu: CdpEmulator, prefix: str) -> list[str]:
    return [line for line in emu.log_lines if line.startswith(prefix)]


async def test_chat_creates_posts_and_deletes_the_channel(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log_path = tmp_path / "cdp.log"
    emu = await make_emu(auto_delete=20.0, log_path=log_path)  # 1 s at scale 20
    status, rid, raw = await chat(http, emu)
    assert status == 200 and rid is not None
    body = json.loads(raw)
    [channel] = sim_channels(discord_sim, f"cdp-chat-{rid.lower()}")
    # The whole dialog as JSON, then the Coze bot's mention (discord.go:512), posted with
    # the user token; then Coze's reply and its message with components.
    prompt, reply, buttons = channel.messages
    assert prompt.content == '[{"role":"user","content":"hello there"}] \n <@1100000000000000400>'
    assert prompt.author_id != discord_sim.settings.bot_user_id
    # CDP answers with the message that carried the components (discord.go:390-399):
    # Discord's message id, and its text (the simulator's Coze leaves it empty).
    assert body["id"] == str(buttons.id)
    assert body["choices"][0]["message"]["content"] == buttons.content
    assert reply.content.startswith("Answer to ")
    assert body["object"] == "chat.completion" and body["model"] == "gpt-4o"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["suggestions"] and body["system_fingerprint"] is None
    assert (await cdp_state(http, emu))["pending_delete_timers"] == 1
    # SetChannelDeleteTimer GETs the channel before the timer (channel.go:23).
    assert discord_sim.state.requests[("GET /channels/{channel_id}", 200)] == 1

    await eventually(lambda: channel.id not in discord_sim.state.channels)
    state = await cdp_state(http, emu)
    assert (state["channels_created"], state["channels_deleted"]) == (1, 1)
    assert state["requests"] == {"/v1/chat/completions": {"200": 1}}
    gin = [line for line in log_path.read_text().splitlines() if line.startswith("[GIN]")]
    event = parse_line(gin[0])
    assert isinstance(event, RequestOutcome)
    assert (event.request_id, event.status, event.path) == (rid, 200, "/v1/chat/completions")


async def test_stream_chunks_carry_message_and_delta_and_end_with_done(
    make_emu: MakeEmu, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    async with http.post(
        emu.base_url + "/v1/chat/completions", json={**CHAT, "stream": True}
    ) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Request-Id"]
        text = (await resp.read()).decode()
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert len(chunks) >= 2  # Coze's reply, then its edits (MESSAGE_UPDATE)
    deltas = "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert deltas == chunks[-1]["choices"][0]["message"]["content"]
    first = chunks[0]
    assert list(first) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
        "suggestions",
    ]
    assert list(first["choices"][0]) == ["index", "message", "logprobs", "finish_reason", "delta"]
    assert first["object"] == "chat.completion.chunk" and first["id"].isdigit()
    assert first["choices"][0]["finish_reason"] is None and first["suggestions"] is None
    # The simulator's Coze sends its buttons in an empty message: CDP's prefix check
    # skips it (chat.go:319-325), so no chunk says "stop" (tests/test_cdp_gateway.py
    # has the buttons on the text).


@pytest.mark.parametrize("key", ["channelId", "channelid", "CHANNELID"])
async def test_a_channel_id_creates_nothing_whatever_its_key_case(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession, key: str
) -> None:
    emu = await make_emu()
    target = discord_sim.add_channel("general")
    status, _, _ = await chat(http, emu, {**CHAT, key: str(target.id)})
    assert status == 200
    assert (await cdp_state(http, emu))["channels_created"] == 0
    assert len(target.messages) == 3  # the prompt, Coze's reply, its buttons


@pytest.mark.parametrize(("value", "timers"), [("0", 0), ("-1", 0), ("60", 1)])
async def test_channel_auto_del_time_zero_or_negative_never_deletes(
    make_emu: MakeEmu,
    discord_sim: DiscordSimulator,
    http: aiohttp.ClientSession,
    value: str,
    timers: int,
) -> None:
    emu = await make_emu(env={"CHANNEL_AUTO_DEL_TIME": value})  # 60 s: 3 s here
    status, rid, _ = await chat(http, emu)
    assert status == 200 and rid is not None
    assert (await cdp_state(http, emu))["pending_delete_timers"] == timers
    assert sim_channels(discord_sim, f"cdp-chat-{rid.lower()}")


def test_channel_auto_del_time_unset_is_five_seconds_and_garbage_is_fatal() -> None:
    base = CdpSettings(discord_api_base="http://x", guild_id=1)
    assert base.with_env({}).auto_delete is None  # handlers: DEFAULT_AUTO_DELETE, 5 s
    assert base.with_env({"CHANNEL_AUTO_DEL_TIME": "abc"}).fatal == (
        "环境变量 CHANNEL_AUTO_DEL_TIME 设置有误"
    )


async def test_default_channel_counts_only_the_literal_1(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    target = discord_sim.add_channel("default")
    emu = await make_emu(env={"DEFAULT_CHANNEL_ENABLE": "true", "CHANNEL_ID": str(target.id)})
    await chat(http, emu)
    assert (await cdp_state(http, emu))["channels_created"] == 1
    emu = await make_emu(env={"DEFAULT_CHANNEL_ENABLE": "1", "CHANNEL_ID": str(target.id)})
    assert (await chat(http, emu))[0] == 200
    assert (await cdp_state(http, emu))["channels_created"] == 0
    assert len(target.messages) == 3  # the prompt, Coze's reply, its buttons


async def test_del_all_cdp_deletes_only_cdp_chat_channels_and_logs_each(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await seed(http, discord_sim, count=3, prefix="cdp-chat-")
    await seed(http, discord_sim, count=2, prefix="cdp-对话")
    discord_sim.add_channel("general")
    async with http.get(emu.base_url + "/api/channel/del/all/cdp") as resp:
        assert resp.status == 200
        assert await resp.read() == '{"message":"discord删除频道成功","success":true}'.encode()
    names = [c.name for c in sim_channels(discord_sim)]
    assert "general" in names and len(names) == 3
    assert all(n.startswith("cdp-对话") for n in names if n != "general")
    warns = lines(emu, "[WARN]")
    assert len(warns) == 3 and all("频道数量已满-自动删除频道Id " in w for w in warns)
    assert all(w.endswith(" ") for w in warns)


async def test_api_channel_create_has_no_timer_and_errors_are_200(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    url = emu.base_url + "/api/channel/create"
    async with http.post(url, json={"name": "cdp-chat-mine"}) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["success"] is True
        assert list(body) == ["data", "success"] and body["data"]["name"] == "cdp-chat-mine"
    assert (await cdp_state(http, emu))["pending_delete_timers"] == 0
    await put_faults(http, discord_sim, error_rate=1.0, error_status=403, routes=[CREATE_ROUTE])
    async with http.post(url, json={"name": "x"}) as resp:
        assert resp.status == 200
        assert await resp.read() == '{"message":"discord创建频道异常","success":false}'.encode()
    assert "创建频道时异常 HTTP 403 " in lines(emu, "[ERR]")[-1]


async def test_api_thread_create_starts_a_thread(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    parent = discord_sim.add_channel("general")
    url = emu.base_url + "/api/thread/create"
    body = {"channelId": str(parent.id), "name": "t1", "archiveDuration": 60}
    async with http.post(url, json=body) as resp:
        data = await resp.json()
    assert data["success"] is True
    thread = discord_sim.state.channels[int(data["data"]["id"])]
    assert (thread.type, thread.parent_id) == (11, parent.id)
    async with http.post(url, json={**body, "archiveDuration": 5}) as resp:
        assert (await resp.json())["message"] == "线程创建时间只可为[60,1440,4320,10080]"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.000_000_5, "500ns"),
        (0.0000125, "12.5µs"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (180, "3m0s"),
        (3725.5, "1h2m5.5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text
