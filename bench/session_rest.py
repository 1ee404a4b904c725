"""Benchmark: the daemon's REST requests per hour with vs without its gateway session.

Two daemons at default settings, side by side in one run, each against its own Discord
simulator on loopback: one with `discord.gateway_session.enabled: true` (the census is
taken from the session's live state; a REST listing only at start, after a gap and every
`resync_interval`), one with it off (a listing every `reconcile.census_interval`, as
before the session existed). Time is compressed by `--scale`: every interval of the
default config (probes, census, reconcile, list spacing, re-sync, the health window,
the simulator's heartbeat interval) is divided by it, so `--hours` simulated hours take
hours * 3600 / scale seconds. "Someone else" (CDP) creates a channel every simulated
`--create-every` seconds in both guilds.

Counts come from the simulators (requests by route), not from the daemons. The
simulators have no per-route buckets here: Discord's reset per real second, and time is
compressed (the daemons' own pacing still applies).

    .venv/bin/python bench/session_rest.py [--scale 30] [--hours 1] [--create-every 60]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from monitor import USER_AGENT
from monitor.config import Config, parse_config
from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.units import format_duration

LISTING = "GET /guilds/{guild_id}/channels"


def config(sim: DiscordSimulator, state_dir: Path, *, session: bool, scale: float) -> Config:
    """Default settings (monitor/config/schema.py) with every interval divided by `scale`."""

    def d(seconds: float) -> str:
        return format_duration(seconds / scale)

    raw: dict[str, Any] = {
        "discord": {
            "token": sim.settings.token,
            "guild_id": str(sim.settings.guild_id),
            "api_base": sim.api_base,
            "gateway_session": {"enabled": session, "resync_interval": d(1800)},
        },
        "probes": {
            "gateway": {"interval": d(15)},
            "rest": {"interval": d(30)},
            "cdp": {"enabled": False},
        },
        "health": {"window": d(120), "evaluate_interval": d(5)},
        "gate": {"enabled": False},
        "reconcile": {
            "interval": d(300),
            "census_interval": d(60),
            "list_spacing": d(30),
            "settle_delay": d(30),
        },
        "control": {"listen": "127.0.0.1:0"},
        "state_dir": str(state_dir),
        "log": {"level": "warning"},
    }
    return parse_config(yaml.safe_dump(raw))


async def run_one(
    sim: DiscordSimulator, cfg: Config, seconds: float, create_every: float
) -> Counter[str]:
    daemon = Daemon(
        cfg,
        registry=CollectorRegistry(),
        logger=logging.getLogger("bench"),
        process_metrics=False,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    n = 0
    while loop.time() < end:
        await asyncio.sleep(min(create_every, max(0.0, end - loop.time())))
        sim.add_channel(f"cdp-chat-bench{n}")
        n += 1
    by_route: Counter[str] = Counter()
    for (route, _status), count in sim.state.requests.items():
        by_route[route] += count
    # After the count: the bench's own create is not the daemon's traffic.
    if cfg.discord.gateway_session.enabled:
        seen = await create_seen_after(sim, daemon)
        shown = "not within 5 s" if seen is None else f"after {seen * 1000:.1f} ms (real time)"
        print(f"a channel created over REST by someone else: in cdpmon_guild_channels {shown}")
    stop.set()
    await task
    return by_route


async def create_seen_after(sim: DiscordSimulator, daemon: Daemon) -> float | None:
    """Seconds from a REST channel create (with the bot token, as CDP does) until the
    daemon's `cdpmon_guild_channels` counts it; None if not within 5 s."""
    guild = str(sim.settings.guild_id)

    def channels() -> float:
        return daemon.registry.get_sample_value("cdpmon_guild_channels", {"guild": guild}) or 0.0

    before = channels()
    loop = asyncio.get_running_loop()
    url = f"{sim.api_base}/guilds/{guild}/channels"
    headers = {"Authorization": f"Bot {sim.settings.token}", "User-Agent": USER_AGENT}
    async with aiohttp.ClientSession(headers=headers) as http:
        started = loop.time()
        async with http.post(url, json={"name": "cdp-chat-someone-else", "type": 0}) as resp:
            resp.raise_for_status()
        while channels() < before + 1:
            if loop.time() - started > 5.0:
                return None
            await asyncio.sleep(0.001)
    return loop.time() - started


async def main(args: argparse.Namespace) -> None:
    seconds = args.hours * 3600 / args.scale
    sims = [
        # No per-route buckets: Discord's are per real second, and time here is compressed.
        DiscordSimulator(
            SimSettings(heartbeat_interval_ms=max(100, int(41_250 / args.scale)), route_limits={})
        )
        for _ in range(2)
    ]
    for sim in sims:
        await sim.start("127.0.0.1", 0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfgs = [
                config(sim, Path(tmp) / name, session=on, scale=args.scale)
                for sim, name, on in zip(sims, ("with", "without"), (True, False), strict=True)
            ]
            create_every = args.create_every / args.scale
            with_, without = await asyncio.gather(
                *(run_one(s, c, seconds, create_every) for s, c in zip(sims, cfgs, strict=True))
            )
    finally:
        for sim in sims:
            await sim.stop()
    report(with_, without, args.hours)


def report(with_: Counter[str], without: Counter[str], hours: float) -> None:
    routes = sorted(set(with_) | set(without))
    print(f"REST requests per hour ({hours:g} h simulated, default settings):")
    print(f"{'route':45} {'with session':>14} {'without':>10}")
    for route in routes:
        print(f"{route:45} {with_[route] / hours:14.0f} {without[route] / hours:10.0f}")
    total_with, total_without = sum(with_.values()) / hours, sum(without.values()) / hours
    print(f"{'total':45} {total_with:14.0f} {total_without:10.0f}")
    listed_with, listed_without = with_[LISTING] / hours, without[LISTING] / hours
    if listed_with:
        print(f"listings with/without: {listed_with / listed_without:.3f}")
    if total_without:
        print(f"ratio with/without: {total_with / total_without:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale",
        type=float,
        default=30.0,
        help="time compression (the reconcile loop ticks every real second)",
    )
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours")
    parser.add_argument(
        "--create-every", type=float, default=60.0, help="simulated seconds between creations"
    )
    asyncio.run(main(parser.parse_args()))
