"""Shared fixtures: real local servers on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from monitor.sim.discord import DiscordSimulator, SimSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
OPENAPI_PATH = REPO_ROOT.parent / "shared" / "discord-api-spec" / "openapi.json"


@pytest.fixture
def sim_settings() -> SimSettings:
    """Override in a test module to change the simulator's settings."""
    return SimSettings()


@pytest.fixture
async def discord_sim(sim_settings: SimSettings) -> AsyncIterator[DiscordSimulator]:
    sim = DiscordSimulator(sim_settings)
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
