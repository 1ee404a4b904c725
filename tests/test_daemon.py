"""The daemon end to end against the running simulator (compressed time, no sleeps as logic)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK
from monitor.metrics import Metrics
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.supervise import Supervisor
from tests.helpers.daemon import (
    MONITOR,
    daemon_process,
    fast_config,
    fast_config_dict,
    running_daemon,
    wait_process_ready,
)
from tests.helpers.metrics import metric_value
from tests.helpers.prom import free_port
from tests.helpers.sim import clear_faults, put_faults
from tests.helpers.wait import wait_for

AUTH = {"Authorization": "Bearer control-secret"}


async def test_gateway_outage_opens_recovers_and_backs_off(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state")
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="first probe round")
        await wait_for(
            lambda: daemon.verdict is not None and daemon.verdict.conclusive, what="verdict"
        )
        assert daemon.breaker.state == "closed"

        await put_faults(http, discord_sim, gateway={"refuse": True})
        await wait_for(lambda: daemon.breaker.state == "open", what="breaker open")
        assert "failure ratio" in daemon.breaker.snapshot()["last_transition"]["reason"]
        first_open = daemon.breaker.snapshot()["open_duration"]

        await clear_faults(http, discord_sim)
        await wait_for(lambda: daemon.breaker.state == "half_open", what="half-open")
        await wait_for(lambda: daemon.breaker.state == "closed", what="closed again")

        # A second outage soon after keeps it open longer (exponential backoff).
        await put_faults(http, discord_sim, gateway={"refuse": True})
        await wait_for(lambda: daemon.breaker.state == "open", what="second open")
        assert daemon.breaker.snapshot()["open_duration"] == 2 * first_open
        await clear_faults(http, discord_sim)

    transitions = daemon.metrics.breaker_transitions
    assert metric_value(transitions, to="open") == 2
    assert metric_value(transitions, to="closed") >= 1


async def test_cdp_log_burst_opens_the_breaker(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    log = tmp_path / "cdp.log"
    log.write_text("")
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        signals={"cdp_log": {"enabled": True, "file": str(log)}},
    )
    async with running_daemon(config) as daemon:
        await wait_for(
            lambda: daemon.verdict is not None and daemon.verdict.conclusive, what="verdict"
        )
        assert daemon.breaker.state == "closed"
        lines = []
        for i in range(12):
            rid = f"73{i:017d}"
            lines.append(
                f"[WARN] 2026/11/23 - 19:00:0{i % 10} | {rid} | "
                "Create channel timed out, retrying...1"
            )
            lines.append(
                f"[ERR] 2026/11/23 - 19:00:0{i % 10} | {rid} | failed after 3 attempts due to "
                "timeout, please reset BOT_TOKEN"
            )
        with log.open("a") as f:
            f.write("\n".join(lines) + "\n")
        await wait_for(lambda: daemon.breaker.state == "open", what="breaker open from CDP log")
        assert metric_value(daemon.metrics.cdp_create_retries) == 12
        failures = metric_value(daemon.metrics.cdp_create_failures, reason="timeout")
        assert failures == 12


async def test_pause_survives_restart_and_resume_clears_it(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state")
    async with running_daemon(config) as daemon:
        async with http.post(
            f"{daemon.control_url}/pause", json={"reason": "maintenance"}, headers=AUTH
        ) as resp:
            status = await resp.json()
        assert resp.status == 200
        assert status["breaker"]["state"] == "forced_open"
        assert status["paused"]["reason"] == "maintenance" and status["paused"]["until"] is None

    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready")
        assert daemon.breaker.state == "forced_open"
        assert metric_value(daemon.metrics.paused) == 1
        async with http.get(f"{daemon.control_url}/status", headers=AUTH) as resp:
            assert (await resp.json())["paused"]["reason"] == "maintenance"
        async with http.post(f"{daemon.control_url}/resume", headers=AUTH) as resp:
            status = await resp.json()
        assert status["paused"] is None and status["breaker"]["state"] == "closed"


async def test_expired_pause_lifts_itself(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state")
    async with running_daemon(config) as daemon:
        async with http.post(
            f"{daemon.control_url}/pause", json={"for": "300ms"}, headers=AUTH
        ) as resp:
            assert (await resp.json())["breaker"]["state"] == "forced_open"
        await wait_for(lambda: daemon.breaker.state == "closed", what="pause expiry")
        assert metric_value(daemon.metrics.paused) == 0


async def test_discord_401_stops_all_rest_calls(tmp_path: Path) -> None:
    sim = DiscordSimulator(SimSettings(token="the-right-token"))
    await sim.start()
    try:
        config = fast_config(sim, tmp_path / "state", discord={"token": "a-wrong-token"})
        async with running_daemon(config) as daemon:
            await wait_for(lambda: daemon.rest.token_invalid, what="401 noticed")
            before = sim.state.invalid_requests
            # Several more REST probe intervals pass: nothing more reaches Discord.
            await wait_for(lambda: len(daemon.probe_results) == 2, what="probes")
            seen = daemon.probe_results["rest"].at
            await wait_for(lambda: daemon.probe_results["rest"].at > seen + 0.3, what="more probes")
            assert sim.state.invalid_requests == before == 1
            assert metric_value(daemon.metrics.discord_token_invalid) == 1
            # A dead token is not Discord instability: the breaker stays closed.
            assert daemon.breaker.state == "closed"
            assert "a-wrong-token" not in json.dumps(daemon.status())
    finally:
        await sim.stop()


async def test_sd_notify_ready_and_watchdog(discord_sim: DiscordSimulator, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    received: list[str] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), lambda: received.append(sock.recv(4096).decode()))
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    try:
        config = fast_config(discord_sim, tmp_path / "state")
        async with running_daemon(config, environ=env):
            await wait_for(lambda: any(m.startswith("READY=1") for m in received), what="READY")
            await wait_for(lambda: "WATCHDOG=1" in received, what="WATCHDOG")
        assert "STOPPING=1" in received
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def test_supervisor_restarts_a_crashing_loop_with_backoff() -> None:
    metrics = Metrics(CollectorRegistry())
    import logging

    sup = Supervisor(
        metrics=metrics, logger=logging.getLogger("t"), clock=SYSTEM_CLOCK, backoff_base=0.01
    )
    calls = 0
    forever = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"boom {calls}")
        await forever.wait()

    sup.start("flaky", flaky)
    await wait_for(lambda: calls == 4 and sup.alive(), what="restarted loop")
    state = sup.status()["flaky"]
    assert state == {"up": True, "restarts": 3, "last_error": "RuntimeError: boom 3"}
    assert metric_value(metrics.loop_restarts, loop="flaky") == 3
    await sup.stop(timeout=1)


async def test_healthz_turns_503_while_a_loop_is_down(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state")
    async with running_daemon(config) as daemon:
        async with http.get(f"{daemon.control_url}/healthz") as resp:
            assert resp.status == 200
        daemon.supervisor._base = 30.0  # keep it down long enough to look at
        dead = asyncio.Event()

        async def crash() -> None:
            dead.set()
            raise RuntimeError("broken loop")

        daemon.supervisor.start("broken", crash)
        await dead.wait()
        await wait_for(lambda: not daemon.supervisor.alive(), what="loop down")
        async with http.get(f"{daemon.control_url}/healthz") as resp:
            body = await resp.json()
            assert resp.status == 503
        assert body["loops"]["broken"]["last_error"] == "RuntimeError: broken loop"


# -- the real process: signals, reload, promtool ----------------------------------------


async def test_sighup_with_broken_file_keeps_old_config_and_sigterm_exits_0(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    data = fast_config_dict(
        discord_sim,
        tmp_path / "state",
        control={"listen": f"127.0.0.1:{port}", "token": "control-secret"},
    )
    config_path = tmp_path / "monitor.yaml"
    config_path.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{port}"
    async with daemon_process(config_path) as proc:
        await wait_process_ready(http, url, proc)
        config_path.write_text("discord: [this is: not valid")
        proc.send_signal(signal.SIGHUP)

        async def reload_reported(value: str) -> bool:
            async with http.get(url + "/metrics") as resp:
                return f"cdpmon_config_last_reload_successful {value}" in await resp.text()

        await wait_for(lambda: reload_reported("0.0"), what="the failed reload reported")
        async with http.get(url + "/status", headers=AUTH) as resp:
            assert resp.status == 200  # still serving, on the old config

        # A good file reloads and the metric goes back to 1.
        config_path.write_text(yaml.safe_dump(data))
        proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: reload_reported("1.0"), what="the good reload reported")

        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 5)
        assert rc == 0
        output = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert "reload failed" in output
        assert "Traceback" not in output
        assert discord_sim.settings.token not in output


async def test_metrics_pass_promtool_check(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool is missing: install Debian's `prometheus` package"
        " (`make test` does when run as root)"
    )
    config = fast_config(discord_sim, tmp_path / "state")
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready")
        async with http.get(f"{daemon.control_url}/metrics") as resp:
            text = await resp.text()
    assert "cdpmon_breaker_state" in text and "cdpmon_probe_success" in text
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(text.encode())
    assert proc.returncode == 0, out.decode()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "config file not found"),
        ("discord: [unclosed", "not valid YAML"),
        ("- a\n- list\n", "top level must be a mapping"),
        ("discord: {token: x1234, guild_id: 1}\nbogus: 1\n", "bogus: unknown key"),
    ],
)
def test_bad_config_exits_2_without_traceback(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "monitor.yaml"
    if content is not None:
        path.write_text(content)
    for command in ("run", "check-config"):
        result = subprocess.run(
            [*MONITOR, command, "-c", str(path)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr


async def test_resume_during_an_outage_reopens_at_once(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state")
    async with running_daemon(config) as daemon:
        await daemon.pause(None, "maintenance")
        await put_faults(http, discord_sim, gateway={"refuse": True}, rest={"error_rate": 1.0})
        failing = lambda: bool(daemon.verdict and daemon.verdict.unstable)  # noqa: E731
        await wait_for(failing, what="an unstable window while paused")
        await daemon.resume()
        # No evaluation interval passes with creates admitted: it is open straight away.
        assert daemon.breaker.state == "open"
        await clear_faults(http, discord_sim)
