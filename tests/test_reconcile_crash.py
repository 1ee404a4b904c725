"""A real daemon process SIGKILLed in the middle of a reconcile run: every channel the
simulator deleted has its audit intent line (the line is fsynced before the DELETE)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from monitor.sim.discord import DiscordSimulator
from monitor.state import StateDir
from tests.helpers.daemon import fast_config_dict
from tests.helpers.prom import free_port
from tests.helpers.sim import put_faults, seed
from tests.helpers.wait import wait_for

AUTH = {"Authorization": "Bearer control-secret"}
SEEDED = 40


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_sigkill_mid_run_leaves_an_intent_line_for_every_deletion(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    leaked = set(await seed(http, discord_sim, count=SEEDED, age_seconds=3600))
    # Slow DELETEs: the kill lands while several are in flight, and the simulator carries
    # those out after the daemon is gone (as Discord would).
    await put_faults(
        http, discord_sim, rest={"latency_ms": 100, "routes": ["DELETE /channels/{channel_id}"]}
    )
    port = free_port()
    state = tmp_path / "state"
    data = fast_config_dict(
        discord_sim,
        state,
        control={"listen": f"127.0.0.1:{port}", "token": "control-secret"},
        reconcile={"enabled": True, "interval": "1h", "min_age": "10m", "max_deletes_per_run": 100},
    )
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{port}"
    idle = len(asyncio.all_tasks())  # the simulator's tasks before any connection
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "run", "-c", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(600):
            if proc.returncode is not None or await _ready(http, url):
                break
            await asyncio.sleep(0.05)
        assert proc.returncode is None, "the daemon exited"

        async def post() -> None:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(url + "/reconcile", json={}, headers=AUTH) as resp:
                    await resp.read()

        run = asyncio.create_task(post())

        def deleted() -> set[str]:
            return leaked - {str(c) for c in discord_sim.state.channels}

        await wait_for(lambda: len(deleted()) >= 5, what="deletions", bound=30.0)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await run
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # The simulator finishes the DELETEs it had read before the kill.
    await wait_for(lambda: len(asyncio.all_tasks()) <= idle, what="in-flight requests")
    gone = deleted()
    assert 5 <= len(gone) < SEEDED, "the kill did not land mid-run"
    intents = {r["channel_id"] for r in StateDir(state).read_audit() if r["event"] == "intent"}
    assert gone <= intents, f"{len(gone - intents)} deletions without an audit line"
