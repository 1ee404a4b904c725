"""Driving the Discord simulator's admin API from tests."""

from __future__ import annotations

from typing import Any

import aiohttp

from monitor.sim.discord import DiscordSimulator


async def seed(http: aiohttp.ClientSession, sim: DiscordSimulator, **body: Any) -> list[str]:
    """Seed channels (`count`, `prefix`, `messages`, `age_seconds`, `type`, `names`)."""
    async with http.post(
        f"{sim.admin_url}/guilds/{sim.settings.guild_id}/channels", json=body
    ) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        return list(data["channels"])


async def put_faults(
    http: aiohttp.ClientSession, sim: DiscordSimulator, **faults: Any
) -> dict[str, Any]:
    """`PUT /_sim/faults` with {"rest": {...}, "gateway": {...}}; the faults now in force."""
    async with http.put(f"{sim.admin_url}/faults", json=faults) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def clear_faults(http: aiohttp.ClientSession, sim: DiscordSimulator) -> None:
    """`DELETE /_sim/faults`: back to a healthy simulator."""
    async with http.delete(f"{sim.admin_url}/faults") as resp:
        assert resp.status == 200, await resp.text()
