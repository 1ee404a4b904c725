"""The gate and CDP agree (CDP-FACTS.md M6): each row of the table, sent through the gate
to the CDP emulator (which behaves as CDP v4.6.5), is a channel create for the gate
exactly when CDP makes a channel, and only Discord's failures become health samples."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.daemon import Daemon
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import metric_value
from tests.helpers.wait import wait_for

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello"}]


async def start_emulator(sim: DiscordSimulator, **overrides: Any) -> CdpEmulator:
    values: dict[str, Any] = {
        "time_scale": 20.0,
        "reply_delay": 0.01,
        "stream_chunk_delay": 0.01,
        "stay_active_enable": "0",
        **overrides,
    }
    sim.state.coze_faults.delay_ms = 300
    emu = CdpEmulator(CdpSettings.for_simulator(sim, **values))
    await emu.start("127.0.0.1", 0)
    return emu


@pytest.fixture
async def emu(discord_sim: DiscordSimulator) -> AsyncIterator[CdpEmulator]:
    emulator = await start_emulator(discord_sim)
    try:
        yield emulator
    finally:
        await emulator.stop()


async def gated(sim: DiscordSimulator, emu: CdpEmulator, tmp_path: Path) -> Any:
    gate = {"enabled": True, "listen": "127.0.0.1:0", "upstream": emu.base_url}
    # The emulator keeps its own gateway session on the bot token; the daemon's would
    # compete with it, and this compares classification, not sessions.
    discord = {"gateway_session": {"enabled": False}}
    return running_daemon(fast_config(sim, tmp_path / "state", gate=gate, discord=discord))


def channels_made(emu: CdpEmulator) -> int:
    return int(emu.snapshot()["channels_created"])


def creates_seen(daemon: Daemon) -> float:
    return metric_value(daemon.metrics.gate_requests, kind="create", decision="forwarded")


async def send(daemon: Daemon, path: str, body: bytes | dict[str, Any]) -> tuple[int, bytes]:
    assert daemon.gate_url is not None
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(daemon.gate_url + path, data=data, headers=headers) as resp:
            return resp.status, await resp.read()


async def seeded_channel(sim: DiscordSimulator) -> str:
    async with aiohttp.ClientSession() as http:
        url = f"{sim.admin_url}/guilds/{sim.settings.guild_id}/channels"
        async with http.post(url, json={"count": 1, "prefix": "talk-"}) as resp:
            return str((await resp.json())["channels"][0])


@pytest.mark.parametrize(
    ("row", "body", "creates"),
    [
        ("invalid JSON", b'{"model": "gpt-4o", "messages": [', False),
        ("non-object body", b'["channelId"]', False),
        ("channelId as bool", {"model": "gpt-4o", "messages": MESSAGES, "channelId": True}, False),
        ("channelId as object", {"model": "gpt-4o", "messages": MESSAGES, "channelId": {}}, False),
        ("channelId blank", {"model": "gpt-4o", "messages": MESSAGES, "channelId": "  "}, False),
        ("no channelId", {"model": "gpt-4o", "messages": MESSAGES}, True),
        ("channelId empty", {"model": "gpt-4o", "messages": MESSAGES, "channelId": ""}, True),
        ("channelId null", {"model": "gpt-4o", "messages": MESSAGES, "channelId": None}, True),
    ],
)
async def test_each_body_row_gate_and_cdp_agree(
    discord_sim: DiscordSimulator,
    emu: CdpEmulator,
    tmp_path: Path,
    row: str,
    body: bytes | dict[str, Any],
    creates: bool,
) -> None:
    async with await gated(discord_sim, emu, tmp_path) as daemon:
        await send(daemon, CHAT, body)
        await wait_for(lambda: emu.snapshot()["requests_in_flight"] == 0, what="CDP done")
        assert (channels_made(emu) == 1) is creates, row
        assert (creates_seen(daemon) == 1) is creates, row


@pytest.mark.parametrize("key", ["channelid", "ChannelID", "CHANNELID"])
async def test_channel_id_in_any_key_case_creates_nothing_for_both(
    discord_sim: DiscordSimulator, emu: CdpEmulator, tmp_path: Path, key: str
) -> None:
    channel = await seeded_channel(discord_sim)
    async with await gated(discord_sim, emu, tmp_path) as daemon:
        await send(daemon, CHAT, {"model": "gpt-4o", "messages": MESSAGES, key: channel})
        assert channels_made(emu) == 0 and creates_seen(daemon) == 0


async def test_the_last_duplicate_key_wins_for_both(
    discord_sim: DiscordSimulator, emu: CdpEmulator, tmp_path: Path
) -> None:
    channel = await seeded_channel(discord_sim)
    body = (
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], '
        f'"channelId": "{channel}", "ChannelID": ""}}'
    ).encode()
    async with await gated(discord_sim, emu, tmp_path) as daemon:
        status, _ = await send(daemon, CHAT, body)
        await wait_for(lambda: emu.snapshot()["requests_in_flight"] == 0, what="CDP done")
        assert channels_made(emu) == 1 and creates_seen(daemon) == 1, status


async def test_no_user_token_is_cdps_trouble_not_discords(
    discord_sim: DiscordSimulator, emu: CdpEmulator, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(emu.admin_url + "/faults", json={"user_tokens": []}) as resp:
            assert resp.status == 200, await resp.text()
    async with await gated(discord_sim, emu, tmp_path) as daemon:
        for _ in range(30):
            status, _ = await send(daemon, CHAT, {"model": "gpt-4o", "messages": MESSAGES})
            assert status == 500
        assert channels_made(emu) == 0
        assert metric_value(daemon.metrics.cdp_errors, kind="no_available_user_auth") == 30
        assert daemon.health.window.latest("gate") is None
        daemon.evaluate_once()
        assert daemon.breaker.state == "closed"


async def test_default_channel_true_is_not_1_so_both_create(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    emulator = await start_emulator(discord_sim, default_channel_enable="true")
    try:
        async with await gated(discord_sim, emulator, tmp_path) as daemon:
            await send(daemon, CHAT, {"model": "gpt-4o", "messages": MESSAGES})
            await wait_for(lambda: emulator.snapshot()["requests_in_flight"] == 0, what="done")
            assert channels_made(emulator) == 1 and creates_seen(daemon) == 1
    finally:
        await emulator.stop()


async def test_thread_create_is_a_thread_for_both(
    discord_sim: DiscordSimulator, emu: CdpEmulator, tmp_path: Path
) -> None:
    channel = await seeded_channel(discord_sim)
    async with await gated(discord_sim, emu, tmp_path) as daemon:
        status, body = await send(daemon, "/api/thread/create", {"channelId": channel, "name": "t"})
        assert status == 200, body
        assert channels_made(emu) == 0 and creates_seen(daemon) == 0
        assert metric_value(daemon.metrics.gate_requests, kind="thread", decision="forwarded") == 1
