"""The daemon's gateway session against the simulator's gateway (sessions that outlive
their sockets, RESUME replay, op 7 and zombie faults, dispatch of CHANNEL_* events):
one IDENTIFY and RESUMEs for the rest, channels seen without listing, and the day's
creations equal to what the simulator created, across a session gap and a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from monitor import USER_AGENT
from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator, SimSettings
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.sim import put_faults
from tests.helpers.wait import wait_for

LISTING = "GET /guilds/{guild_id}/channels"
# The REST probe shares GET /gateway/bot's bucket with the session's IDENTIFY budget check.
SLOWER_REST_PROBE = {"rest": {"interval": "1s"}}


@pytest.fixture
async def sim() -> AsyncIterator[DiscordSimulator]:
    s = DiscordSimulator(SimSettings(heartbeat_interval_ms=300))
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as s:
        yield s


def value(daemon: Daemon, name: str, **labels: str) -> float:
    got = daemon.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def listings(sim: DiscordSimulator) -> int:
    return sum(n for (route, _s), n in sim.state.requests.items() if route == LISTING)


async def create(http: aiohttp.ClientSession, sim: DiscordSimulator, name: str) -> str:
    """Someone else (CDP) creates a channel over REST with the bot token."""
    url = f"{sim.api_base}/guilds/{sim.settings.guild_id}/channels"
    headers = {"Authorization": f"Bot {sim.settings.token}"}
    async with http.post(url, json={"name": name, "type": 0}, headers=headers) as resp:
        assert resp.status in (200, 201), await resp.text()
        return str((await resp.json())["id"])


async def delete(http: aiohttp.ClientSession, sim: DiscordSimulator, channel_id: str) -> None:
    headers = {"Authorization": f"Bot {sim.settings.token}"}
    async with http.delete(f"{sim.api_base}/channels/{channel_id}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()


def synced(daemon: Daemon) -> bool:
    """Live and past the listing at start (later listings: only after a gap or the
    slow re-sync)."""
    live = daemon.watch.live
    return live.current and live.rest_synced_at is not None


def session_up(daemon: Daemon) -> bool:
    return value(daemon, "cdpmon_gateway_session_up") == 1


@pytest.mark.parametrize("compress", [False, True])
async def test_op7_and_dropped_connections_identify_once_and_resume_the_rest(
    sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path, compress: bool
) -> None:
    config = fast_config(
        sim,
        tmp_path / "state",
        discord={"gateway_session": {"compress": compress}},
        probes=SLOWER_REST_PROBE,
    )
    async with running_daemon(config) as daemon:
        await wait_for(lambda: session_up(daemon), what="session")
        # Ten "minutes", each with a dropped connection (ACKs dropped: the daemon finds
        # the connection dead and closes it itself); every other one Discord also asks
        # for a reconnect (op 7 after RESUMED: the simulator sends it after READY or
        # RESUMED only).
        for minute in range(10):
            before = sim.state.gateway["resumes"]
            fault = {"drop_ack": True, "reconnect": minute % 2 == 0}
            await put_faults(http, sim, gateway=fault)
            await wait_for(
                lambda n=before: sim.state.gateway["resumes"] > n, what=f"resume {minute}"
            )
            await put_faults(http, sim, gateway={"reconnect": False, "drop_ack": False})
            await wait_for(lambda: session_up(daemon), what="session back")
        assert sim.state.gateway["identifies"] == 1
        resumes = sim.state.gateway["resumes"]
        assert resumes >= 10
        await wait_for(
            lambda: value(daemon, "cdpmon_gateway_resumes_total") == resumes, what="resumes"
        )
        assert value(daemon, "cdpmon_gateway_identifies_total") == 1
        assert value(daemon, "cdpmon_gateway_reconnects_total", reason="reconnect") >= 1
        assert value(daemon, "cdpmon_gateway_reconnects_total", reason="heartbeat_timeout") >= 5


async def test_a_channel_created_by_someone_else_is_counted_without_listing(
    sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    guild = str(sim.settings.guild_id)
    async with running_daemon(
        fast_config(sim, tmp_path / "state", probes=SLOWER_REST_PROBE)
    ) as daemon:
        await wait_for(lambda: session_up(daemon), what="session")
        await wait_for(lambda: synced(daemon), what="live census")
        before = value(daemon, "cdpmon_guild_channels", guild=guild)
        listed = listings(sim)
        await create(http, sim, "cdp-chat-someone-else")
        await wait_for(
            lambda: value(daemon, "cdpmon_guild_channels", guild=guild) == before + 1,
            what="the channel in cdpmon_guild_channels",
        )
        assert listings(sim) == listed  # from the CHANNEL_CREATE event, no listing
        assert value(daemon, "cdpmon_guild_channel_creates_24h", guild=guild) == 1


async def test_creations_24h_equal_the_simulators_across_a_gap_and_a_restart(
    sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    guild = str(sim.settings.guild_id)
    config = fast_config(sim, tmp_path / "state", probes=SLOWER_REST_PROBE)

    def creates(daemon: Daemon) -> float:
        return value(daemon, "cdpmon_guild_channel_creates_24h", guild=guild)

    async with running_daemon(config) as daemon:
        await wait_for(lambda: synced(daemon), what="live census")
        ids = [await create(http, sim, f"cdp-chat-a{i}") for i in range(3)]
        await wait_for(lambda: creates(daemon) == 3, what="3 from events")
        await delete(http, sim, ids[0])  # deleted: still created today
        # A gap: the session is invalidated (op 9 d:false), channels come and go meanwhile.
        await put_faults(http, sim, gateway={"invalid_session": True, "drop_ack": True})
        await wait_for(lambda: not session_up(daemon), what="session down")
        ids += [await create(http, sim, f"cdp-chat-b{i}") for i in range(2)]
        await put_faults(http, sim, gateway={"invalid_session": False, "drop_ack": False})
        await wait_for(lambda: session_up(daemon), what="a new session")
        await wait_for(lambda: creates(daemon) == 5, what="5 after the gap")
    # Restart: created while the daemon was down, and the count kept across it.
    ids += [await create(http, sim, f"cdp-chat-c{i}") for i in range(2)]
    await delete(http, sim, ids[1])
    async with running_daemon(config) as daemon:
        await wait_for(lambda: synced(daemon), what="live census again")
        await wait_for(lambda: creates(daemon) == 7, what="7 after the restart")
    created = sum(
        n
        for (route, status), n in sim.state.requests.items()
        if route == "POST /guilds/{guild_id}/channels" and status < 300
    )
    assert created == 7 == len(ids)
