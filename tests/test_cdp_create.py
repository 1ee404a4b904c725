"""Channel creation as CDP v4.6.5 does it (CDP-FACTS.md section 1): discordgo's bucket
queue, 20 s client timeout, 502 and 429 handling, CreateChannelWithRetry's attempts and
log lines byte for byte, and MAX_CHANNEL_DEL_TYPE."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monitor.clock import FakeClock
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.cdp.discordgo import DiscordgoClient, GoError
from monitor.sim.cdp.settings import Stats
from monitor.sim.discord import DiscordSimulator
from tests.helpers.upstream import serve_all
from tests.test_cdp_emulator import (
    CREATE_ROUTE,
    MakeEmu,
    cdp_state,
    chat,
    eventually,
    lines,
    make_emu,
    put_faults,
    sim_channels,
)

__all__ = ["make_emu"]
TS = r"\d{4}/\d\d/\d\d - \d\d:\d\d:\d\d"
FULL_BODY = '{"message": "Maximum number of server channels reached (500)", "code": 30013}'
CONFIG_ERROR = (
    b'{"error":{"message":"config error,check logs","type":"request_error","param":"",'
    b'"code":"500"}}'
)


class FakeDiscord:
    """A scripted Discord: each call waits for `gate` (if set) and answers `script`."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.gate: asyncio.Event | None = None
        self.script: list[tuple[int, str, str]] = []  # status, content type, body
        self.channels = [{"id": str(i), "name": f"cdp-chat-{i}"} for i in range(1, 4)]
        self.deleted: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append(f"{request.method} {request.path}")
        if self.gate is not None:
            await self.gate.wait()
        if request.method == "DELETE":
            self.deleted.append(request.path.rsplit("/", 1)[1])
            return web.json_response({"id": self.deleted[-1]})
        if self.script:
            status, ctype, body = self.script.pop(0)
            return web.Response(status=status, text=body, content_type=ctype)
        if request.method == "GET" and request.path.startswith("/guilds/"):
            return web.json_response(self.channels)
        if request.method == "GET":
            return web.json_response({"id": "99", "name": "cdp-chat-x"})
        return web.json_response({"id": "99", "name": "x"}, status=201)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeDiscord, str]]:
    discord = FakeDiscord()
    async with serve_all(discord.handle) as url:
        yield discord, url


def client(base: str, clock: Any = None, **kw: Any) -> DiscordgoClient:
    settings = CdpSettings(discord_api_base=base, guild_id=7, **kw)
    stats = Stats()
    return DiscordgoClient(settings, clock or FakeClock(), lambda: stats)


async def test_creates_and_listings_of_a_guild_wait_for_each_other(
    fake: tuple[FakeDiscord, str],
) -> None:
    discord, base = fake
    discord.gate = asyncio.Event()
    go = client(base)
    await go.open()
    try:
        calls = [
            asyncio.create_task(go.request("POST", "/guilds/7/channels", {"name": "a"})),
            asyncio.create_task(go.request("GET", "/guilds/7/channels")),
            asyncio.create_task(go.request("POST", "/guilds/7/channels", {"name": "b"})),
            asyncio.create_task(go.request("GET", "/channels/5")),  # another bucket
        ]
        await eventually(lambda: len(discord.arrived) == 2)
        # One call of the guild bucket is at Discord; the others queue behind its lock.
        assert sorted(discord.arrived) == ["GET /channels/5", "POST /guilds/7/channels"]
        discord.gate.set()
        await asyncio.gather(*calls)
        assert discord.arrived[2:] == ["GET /guilds/7/channels", "POST /guilds/7/channels"]
    finally:
        await go.close()


async def test_every_429_is_slept_out_as_long_as_discord_says(
    fake: tuple[FakeDiscord, str],
) -> None:
    discord, base = fake
    limited = json.dumps({"message": "You are being rate limited.", "retry_after": 3600.5})
    discord.script = [(429, "application/json", limited)] * 3
    clock = FakeClock()
    go = client(base, clock)
    await go.open()
    try:
        assert (await go.request("POST", "/guilds/7/channels", {"name": "a"}))["id"] == "99"
    finally:
        await go.close()
    assert clock.monotonic() >= 3 * 3600.5  # no cap: three hours of sleeping
    assert len(discord.arrived) == 4


async def test_a_cloudflare_429_is_an_unmarshal_error(fake: tuple[FakeDiscord, str]) -> None:
    discord, base = fake
    discord.script = [(429, "text/plain", "error code: 1015")]
    go = client(base)
    await go.open()
    try:
        with pytest.raises(GoError) as err:
            await go.request("POST", "/guilds/7/channels", {"name": "a"})
    finally:
        await go.close()
    assert str(err.value) == "json unmarshal: invalid character 'e' looking for beginning of value"


@pytest.mark.parametrize(("kind", "deleted"), [("OLDEST", ["1"]), ("ALL", ["1", "2", "3"])])
async def test_full_guild_with_max_channel_del_type_purges_then_creates_once(
    fake: tuple[FakeDiscord, str], http: aiohttp.ClientSession, kind: str, deleted: list[str]
) -> None:
    discord, base = fake
    discord.script = [(400, "application/json", FULL_BODY)]
    emu = CdpEmulator(
        CdpSettings(
            discord_api_base=base, guild_id=7, reply_delay=0, stay_active_enable="0"
        ).with_env({"MAX_CHANNEL_DEL_TYPE": kind})
    )
    await emu.start()
    try:
        status, rid, _ = await chat(http, emu)
    finally:
        await emu.stop()
    assert status == 200
    assert discord.deleted == deleted
    warns = lines(emu, "[WARN]")
    assert warns == [
        f"[WARN] {w[7:28]} | {rid} | 频道数量已满-自动删除频道Id {d} "
        for w, d in zip(warns, deleted, strict=True)
    ]
    assert [a for a in discord.arrived if a.startswith("POST /guilds")] == [
        "POST /guilds/7/channels"
    ] * 2


@pytest.mark.parametrize(
    ("kind", "channels", "error"),
    [
        ("", True, "HTTP 400 Bad Request, " + FULL_BODY),
        ("ALL", False, "当前Discord服务器频道已满，且无CDP临时频道可删除"),
    ],
)
async def test_full_guild_without_a_purge_is_the_raw_error(
    fake: tuple[FakeDiscord, str],
    http: aiohttp.ClientSession,
    kind: str,
    channels: bool,
    error: str,
) -> None:
    discord, base = fake
    discord.script = [(400, "application/json", FULL_BODY)]
    if not channels:
        discord.channels = [{"id": "1", "name": "general"}]
    emu = CdpEmulator(
        CdpSettings(discord_api_base=base, guild_id=7, stay_active_enable="0").with_env(
            {"MAX_CHANNEL_DEL_TYPE": kind}
        )
    )
    await emu.start()
    try:
        await http.put(emu.admin_url + "/faults", json={"bot": {"models": ["gpt-4o"]}})
        status, _, raw = await chat(http, emu)
    finally:
        await emu.stop()
    assert (status, raw) == (500, CONFIG_ERROR)
    # With a bot_config.json CDP logs a creation error twice (chat.go:686 and :179).
    assert [e.split(" | ", 2)[2] for e in lines(emu, "[ERR]")] == [error + " "] * 2
    assert discord.deleted == []


async def test_a_slow_discord_is_one_20s_error_and_a_late_channel(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()  # scale 20: the 20 s client timeout is 1 s
    await put_faults(http, discord_sim, latency_ms=1500, routes=[CREATE_ROUTE])
    status, rid, raw = await chat(http, emu)
    assert (status, raw) == (500, CONFIG_ERROR) and rid is not None
    gid = discord_sim.settings.guild_id
    [err] = lines(emu, "[ERR]")
    assert re.fullmatch(
        rf"\[ERR\] {TS} \| {rid} \| Post \"https://discord.com/api/v9/guilds/{gid}/channels\": "
        r"context deadline exceeded \(Client.Timeout exceeded while awaiting headers\) ",
        err,
    )
    assert lines(emu, "[WARN]") == []  # no retry
    # Discord creates it anyway, after CDP gave up: a leak with no delete timer.
    await eventually(lambda: sim_channels(discord_sim, f"cdp-chat-{rid.lower()}"))
    state = await cdp_state(http, emu)
    assert (state["create_attempts"], state["pending_delete_timers"]) == (1, 0)
    assert state["late_channels"] == 1


async def test_three_timed_out_attempts_log_every_retry_and_leave_three_twins(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    # A Discord that hangs without a client timeout: each attempt's create waits
    # behind the one before it on the bucket lock, so all three pass 60 s (1 s here).
    emu = await make_emu(time_scale=60.0, http_timeout=3600.0)
    await put_faults(http, discord_sim, latency_ms=1500, routes=[CREATE_ROUTE])
    status, rid, raw = await chat(http, emu)
    assert (status, raw) == (500, CONFIG_ERROR)
    warns, errs = lines(emu, "[WARN]"), lines(emu, "[ERR]")
    assert [re.sub(TS, "T", w) for w in warns] == [
        f"[WARN] T | {rid} | Create channel timed out, retrying...{n} " for n in (1, 2, 3)
    ]
    assert [re.sub(TS, "T", e) for e in errs] == [
        f"[ERR] T | {rid} | failed after 3 attempts due to timeout, please reset BOT_TOKEN "
    ]
    assert rid is not None
    twins = await eventually(
        lambda: len(sim_channels(discord_sim, f"cdp-chat-{rid.lower()}")) == 3, within=15
    )
    assert twins
    await eventually(lambda: emu.stats.late_channels == 3)  # their answers came back
    state = await cdp_state(http, emu)
    assert state["max_concurrent_creates"] == 1 and state["late_channels"] == 3


async def test_the_kth_queued_create_waits_about_k_creates(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu(time_scale=60.0, http_timeout=3600.0)  # 60 s attempts: 1 s
    await put_faults(http, discord_sim, latency_ms=400, routes=[CREATE_ROUTE])
    results = await asyncio.gather(*(chat(http, emu) for _ in range(6)))
    state = await cdp_state(http, emu)
    assert state["max_concurrent_creates"] == 1  # one at a time: a queue
    # The head of the queue gets through; the tail waits past the attempt timeout.
    assert results[0][0] == 200 or any(r[0] == 200 for r in results)
    assert state["create_timeouts"] >= 1
    assert any("retrying...1 " in w for w in lines(emu, "[WARN]"))


async def test_non_timeout_errors_are_returned_at_once(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await put_faults(http, discord_sim, error_rate=1.0, error_status=403, routes=[CREATE_ROUTE])
    status, rid, raw = await chat(http, emu)
    assert (status, raw) == (500, CONFIG_ERROR)
    [err] = lines(emu, "[ERR]")
    assert re.fullmatch(
        rf"\[ERR\] {TS} \| {rid} \| HTTP 403 Forbidden, "
        r'\{"message": "403: Internal Server Error", "code": 0\} ',
        err,
    )
    assert (await cdp_state(http, emu))["create_attempts"] == 1


async def test_502_is_retried_three_times_then_an_error(
    make_emu: MakeEmu, discord_sim: DiscordSimulator, http: aiohttp.ClientSession
) -> None:
    emu = await make_emu()
    await put_faults(http, discord_sim, error_rate=1.0, error_status=502, routes=[CREATE_ROUTE])
    status, _, _ = await chat(http, emu)
    assert status == 500
    assert discord_sim.state.requests[(CREATE_ROUTE, 502)] == 4
    assert " | Exceeded Max retries HTTP 502 Bad Gateway, <html>" in lines(emu, "[ERR]")[0]
