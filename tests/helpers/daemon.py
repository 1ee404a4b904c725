"""The daemon in tests: configs with compressed time, the daemon in-process
(`running_daemon`), and the one way to run `python -m monitor` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import CollectorRegistry

from monitor.config import Config, parse_config
from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator
from tests.helpers.wait import wait_for


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


def live_metrics_text(state_dir: Path) -> str:
    """`/metrics` of a real daemon run against a fresh simulator (for sync fixtures)."""

    async def main() -> str:
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


# --- the daemon as a process ------------------------------------------------------------

MONITOR = (sys.executable, "-m", "monitor")  # argv of the CLI, for sync runs too


async def run_monitor(*args: str, merge_stderr: bool = False) -> tuple[int, str, str]:
    """Run `python -m monitor ARGS` to the end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *MONITOR,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), (err or b"").decode()


@contextlib.asynccontextmanager
async def daemon_process(
    config_path: Path, *, env: dict[str, str] | None = None, wrap: Sequence[str] = ()
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`monitor run -c CONFIG` as a process (argv prefixed by `wrap`), output on stdout;
    killed on the way out if the test did not stop it."""
    proc = await asyncio.create_subprocess_exec(
        *wrap,
        *MONITOR,
        "run",
        "-c",
        str(config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_process_ready(
    http: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process
) -> None:
    """Until the process's control API at `url` answers /readyz 200; fails with the
    process's output if it exits first."""

    async def ready() -> bool:
        if proc.returncode is not None:
            out = await proc.stdout.read() if proc.stdout else b""
            raise AssertionError(f"daemon exited {proc.returncode}: {out.decode()}")
        try:
            async with http.get(url + "/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ready, what=f"the daemon at {url} to be ready", bound=25.0, interval=0.05)
