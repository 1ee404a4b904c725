"""Helpers to build configs and run the daemon against the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from monitor.config import Config, parse_config
from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def fast_config_dict(sim: DiscordSimulator, state_dir: Path, **extra: Any) -> dict[str, Any]:
    """A config with compressed time: probes every 100 ms, a 1 s window."""
    base: dict[str, Any] = {
        "discord": {
            "token": sim.settings.token,
            "guild_id": str(sim.settings.guild_id),
            "api_base": sim.api_base,
            "request_timeout": "2s",
            "max_retries": 0,
        },
        "probes": {
            # Generous timeouts: a loaded 2-core CI machine must not look like an outage.
            "gateway": {"interval": "100ms", "timeout": "3s", "slow": "2s"},
            "rest": {"interval": "100ms", "timeout": "3s", "slow": "2s"},
            "cdp": {"enabled": False},
        },
        "health": {
            "window": "1s",
            "min_samples": 3,
            "source_min_samples": 6,
            "evaluate_interval": "50ms",
        },
        "breaker": {"reset_timeout": "1s", "success_threshold": 2, "max_reset_timeout": "1m"},
        "gate": {"enabled": False},
        "reconcile": {"enabled": False},
        "control": {"listen": "127.0.0.1:0", "token": "control-secret"},
        "state_dir": str(state_dir),
    }
    return merge(base, extra)


def fast_config(sim: DiscordSimulator, state_dir: Path, **extra: Any) -> Config:
    return parse_config(yaml.safe_dump(fast_config_dict(sim, state_dir, **extra)))


@contextlib.asynccontextmanager
async def running_daemon(config: Config, **kwargs: Any) -> AsyncIterator[Daemon]:
    daemon = Daemon(
        config,
        registry=CollectorRegistry(),
        logger=logging.getLogger("cdp-monitor.test"),
        process_metrics=False,
        **kwargs,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await wait_for(lambda: daemon.control_url is not None or task.done(), what="start")
        if task.done():
            task.result()
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_for(predicate: Callable[[], bool], *, what: str, bound: float = 15.0) -> None:
    """Poll until `predicate` holds; the bound only keeps a broken test from hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {bound}s")
        await asyncio.sleep(0.02)


def live_metrics_text(state_dir: Path) -> str:
    """`/metrics` of a real daemon run against a fresh simulator (for sync fixtures)."""

    async def main() -> str:
        import aiohttp

        sim = DiscordSimulator()
        await sim.start()
        try:
            config = fast_config(sim, state_dir, reconcile={"enabled": True})
            async with running_daemon(config) as daemon:
                await wait_for(daemon.ready, what="ready")
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{daemon.control_url}/metrics") as resp,
                ):
                    return await resp.text()
        finally:
            await sim.stop()

    return asyncio.run(main())
