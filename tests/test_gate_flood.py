"""Descriptor exhaustion: thousands of idle and half-sent connections against the gate,
and a probe that fails for want of descriptors (not Discord's fault)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK
from monitor.discord.rest import DiscordRestClient
from monitor.health.probes import ProbeContext, record_probe, run_probe
from monitor.metrics import Metrics
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.raw_http import host_port, raw_request
from tests.helpers.wait import wait_for

IDLE = 5000
MAX_CONNECTIONS = 1024
LOG = logging.getLogger("cdp-monitor.test")


def _ensure_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed for this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_5000_idle_connections_do_not_take_the_gate_down(
    discord_sim: DiscordSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Client ends plus at most MAX_CONNECTIONS server ends, plus the daemon's own.
    _ensure_descriptors(IDLE + MAX_CONNECTIONS + 1024)
    cdp = CdpEmulator(
        CdpSettings(
            discord_api_base=discord_sim.api_base,
            guild_id=discord_sim.settings.guild_id,
            token=discord_sim.settings.token,
        )
    )
    await cdp.start("127.0.0.1", 0)
    gate = {
        "enabled": True,
        "listen": "127.0.0.1:0",
        "upstream": cdp.base_url,
        "header_timeout": "1s",
        "idle_timeout": "2s",
        "max_connections": MAX_CONNECTIONS,
    }
    config = fast_config(discord_sim, tmp_path / "state", gate=gate)
    writers: list[asyncio.StreamWriter] = []
    try:
        async with running_daemon(config) as daemon:
            await wait_for(daemon.ready, what="ready")
            assert daemon.gate_url is not None
            host, port = host_port(daemon.gate_url)
            with caplog.at_level(logging.INFO):
                readers = []
                for i in range(IDLE):
                    reader, writer = await asyncio.open_connection(host, port)
                    if i % 2:  # half of them send half a request and stall
                        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
                    readers.append(reader)
                    writers.append(writer)
                    if i % 500 == 0:  # real clients are served throughout
                        resp = await raw_request(daemon.gate_url, "GET", "/v1/models")
                        assert resp.status == 200
                # Every idle connection is closed by the gate (timeout or eviction).
                closed = await asyncio.wait_for(asyncio.gather(*(r.read() for r in readers)), 120)
                assert all(data in (b"",) or data.startswith(b"HTTP/1.1 503") for data in closed)
                resp = await raw_request(daemon.gate_url, "GET", "/v1/models")
                assert resp.status == 200
            assert daemon.breaker.state == "closed"
            lines = [r for r in caplog.records if r.levelno >= logging.INFO]
            assert len(lines) < 1000, len(lines)
            assert not any(r.exc_info for r in lines)
    finally:
        for writer in writers:
            writer.close()
        await cdp.stop()


@contextlib.contextmanager
def no_new_descriptors() -> Iterator[None]:
    """Lower this process's descriptor limit so that no new descriptor can be opened (the
    limit bounds descriptor numbers: set it to the lowest free one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = {int(fd) for fd in os.listdir("/proc/self/fd")}
    lowest_free = next(n for n in range(len(in_use) + 2) if n not in in_use)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_probe_out_of_descriptors_is_no_discord_sample(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    config = fast_config(discord_sim, tmp_path / "state")
    metrics = Metrics(CollectorRegistry())
    async with aiohttp.ClientSession() as http:
        rest = DiscordRestClient(
            session=http,
            metrics=metrics,
            token=discord_sim.settings.token,
            api_base=discord_sim.api_base,
            global_rate=25.0,
            max_retries=0,
            timeout=1.0,
        )
        ctx = ProbeContext(config=config, session=http, rest=rest, clock=SYSTEM_CLOCK, logger=LOG)
        with no_new_descriptors():
            result = await run_probe("rest", ctx)
        # Whether the connect fails (EMFILE) or the in-process simulator cannot accept
        # (a timeout), the failure is ours.
        assert not result.ok and result.data.get("local") is True, result
        assert record_probe(result, metrics) is None
        healthy = await run_probe("rest", ctx)  # and with descriptors, a real sample
        assert healthy.ok and record_probe(healthy, metrics) is not None
