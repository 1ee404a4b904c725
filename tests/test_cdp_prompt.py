"""The prompt as CDP v4.6.5 sends it (CDP-FACTS.md section 6): a user token over raw
HTTP, no 429 handling, 401 drops the token, long prompts in 1990-rune parts counted
from the end, images through the same channel logic."""

from __future__ import annotations

import json
import re

import aiohttp

from monitor.sim.cdp.conversation import reverse_segment
from monitor.sim.discord import DiscordSimulator
from tests.test_cdp_emulator import (
    CREATE_ROUTE,
    MakeEmu,
    cdp_state,
    chat,
    lines,
    make_emu,
    put_faults,
    sim_channels,
)

__all__ = ["make_emu"]
MESSAGES_ROUTE = "POST /channels/{channel_id}/messages"


def test_reverse_segment_counts_parts_from_the_end() -> None:
    assert reverse_segment("abcdefg", 3) == ["a", "bcd", "efg"]
    assert reverse_segment("", 3) == []
    assert "".join(reverse_segment("x" * 5000)) == "x" * 5000
    assert [len(p) for p in reverse_segment("x" * 5000)] == [1020, 1990, 1990]


async def test_a_long_prompt_goes_in_1990_rune_parts(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "é" * 2500}]}
    status, rid, _ = await chat(http, emu, body)
    assert status == 200 and rid is not None
    [channel] = sim_channels(discord_sim, f"cdp-chat-{rid.lower()}")
    parts = [m.content for m in channel.messages[:2]]  # then Coze's messages
    assert [len(p) for p in parts][1:] == [1990]
    assert "".join(parts).endswith(" \n <@1100000000000000400>")
    assert (await cdp_state(http, emu))["prompts_sent"] == 2


async def test_a_dead_user_token_is_dropped(make_emu: MakeEmu, http: aiohttp.ClientSession) -> None:
    emu = await make_emu(user_tokens=("dead-token",))
    status, _, raw = await chat(http, emu)
    assert status == 500
    assert json.loads(raw)["error"]["message"] == "no_available_user_auth"
    assert lines(emu, "[WARN]")[-1].endswith(" | USER_AUTHORIZATION:dead-token EXPIRED ")
    assert (await cdp_state(http, emu))["user_tokens_left"] == 0


async def test_a_429_on_the_prompt_is_a_500_error_sending_message(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await put_faults(http, discord_sim, shared_429_rate=1.0, routes=[MESSAGES_ROUTE])
    status, rid, raw = await chat(http, emu)
    assert status == 500
    assert json.loads(raw)["error"]["message"] == "error sending message"
    errs = lines(emu, "[ERR]")
    assert re.search(r"\| user_auth:sim-user-token result:\{.*rate limited.*\} $", errs[0])
    assert re.search(
        rf"\| {rid} \| error sending message: /api/v9/channels/\d+/messages response myerr $",
        errs[1],
    )
    assert discord_sim.state.requests[(MESSAGES_ROUTE, 429)] == 1  # no retry


async def test_images_use_the_same_channel_logic(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(gateway=False)  # the emulator's Coze draws (the simulator's does not)
    url = emu.base_url + "/v1/images/generations"
    async with http.post(url, json={"model": "dall-e-3", "prompt": "a cat"}) as resp:
        body = await resp.json()
        assert resp.status == 200
    assert list(body) == ["created", "dailyLimit", "data", "suggestions"]
    assert body["data"][0]["url"].startswith("https://")
    await put_faults(http, discord_sim, error_rate=1.0, error_status=403, routes=[CREATE_ROUTE])
    async with http.post(url, json={"prompt": "a dog"}) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["message"] == "config error"


async def test_del_one_channel_answers_200_either_way(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    channel = discord_sim.add_channel("cdp-chat-x")
    async with http.get(f"{emu.base_url}/api/channel/del/{channel.id}") as resp:
        assert (resp.status, await resp.json()) == (
            200,
            {"message": "discord删除频道成功", "success": True},
        )
    async with http.get(f"{emu.base_url}/api/channel/del/{channel.id}") as resp:
        assert (await resp.json())["success"] is False
    assert lines(emu, "[ERR]")[-1].startswith("[ERR] ")
    assert " | UNKNOWN | 删除频道时异常 HTTP 404 Not Found, " in lines(emu, "[ERR]")[-1]
