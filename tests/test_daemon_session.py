"""The daemon with its gateway session against the simulator: one IDENTIFY, the
fallback below the reserve, the switch, and daily creations kept across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator, SimSettings
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.wait import wait_for


@pytest.fixture
async def sim() -> AsyncIterator[DiscordSimulator]:
    s = DiscordSimulator(SimSettings())
    await s.start("127.0.0.1", 0)
    yield s
    await s.stop()


def value(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.registry.get_sample_value(name, labels)


async def test_the_daemon_identifies_once_and_reports_its_session(
    sim: DiscordSimulator, tmp_path: Path
) -> None:
    async with running_daemon(fast_config(sim, tmp_path / "state")) as daemon:
        await wait_for(lambda: value(daemon, "cdpmon_gateway_session_up") == 1, what="session")
        status = daemon.status()["gateway_session"]
        assert status["state"] == "up" and status["identifies"] == 1
        assert status["session_starts_remaining"] == 1000
        assert value(daemon, "cdpmon_gateway_identifies_total") == 1
        assert value(daemon, "cdpmon_gateway_session_enabled") == 1
    assert sim.state.gateway["identifies"] == 1
    assert daemon.state_dir.load_identifies()  # counted where a restart finds it


async def test_below_the_reserve_the_daemon_never_identifies_and_falls_back(
    tmp_path: Path,
) -> None:
    sim = DiscordSimulator(SimSettings(session_start_total=99))
    await sim.start("127.0.0.1", 0)
    try:
        config = fast_config(sim, tmp_path / "state", reconcile={"census_interval": "1s"})
        async with running_daemon(config) as daemon:
            await wait_for(
                lambda: daemon.status()["gateway_session"]["state"] == "fallback", what="fallback"
            )
            status = daemon.status()["gateway_session"]
            assert status["fallback"]["reason"] == "reserve"
            assert value(daemon, "cdpmon_gateway_identify_blocked") == 1
            # The census goes on over REST listings.
            guild = str(sim.settings.guild_id)
            await wait_for(
                lambda: value(daemon, "cdpmon_guild_channels", guild=guild) is not None,
                what="census",
            )
            assert daemon.status()["channels"]["source"] == "rest"
        assert sim.state.gateway["identifies"] == 0
    finally:
        await sim.stop()


async def test_gateway_session_enabled_false_turns_it_off(
    sim: DiscordSimulator, tmp_path: Path
) -> None:
    config = fast_config(sim, tmp_path / "state", discord={"gateway_session": {"enabled": False}})
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready")
        assert daemon.status()["gateway_session"] == {"enabled": False, "state": "disabled"}
        assert value(daemon, "cdpmon_gateway_session_enabled") == 0
    assert sim.state.gateway["identifies"] == 0


async def test_daily_creations_survive_a_restart(sim: DiscordSimulator, tmp_path: Path) -> None:
    guild = str(sim.settings.guild_id)
    for i in range(4):
        sim.add_channel(f"cdp-chat-{i}", age_seconds=3600 + i)
    sim.add_channel("general", age_seconds=3 * 86_400)  # not created today
    config = fast_config(sim, tmp_path / "state", reconcile={"census_interval": "1s"})
    async with running_daemon(config) as daemon:
        await wait_for(
            lambda: value(daemon, "cdpmon_guild_channel_creates_24h", guild=guild) == 4,
            what="creations from the listing",
        )
        assert value(daemon, "cdpmon_guild_channel_create_limit_daily", guild=guild) == 500
    sim.state.channels.clear()  # deleted while the daemon was down: still created today
    async with running_daemon(config) as daemon:
        assert value(daemon, "cdpmon_guild_channel_creates_24h", guild=guild) == 4
        await wait_for(
            lambda: value(daemon, "cdpmon_guild_channels", guild=guild) == 0, what="census"
        )
        assert value(daemon, "cdpmon_guild_channel_creates_24h", guild=guild) == 4
