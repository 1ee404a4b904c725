"""Probes from the table, and breaker actions, against real local servers."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.actions import ActionRunner
from monitor.clock import SYSTEM_CLOCK
from monitor.config import ActionConfig
from monitor.discord.rest import DiscordRestClient
from monitor.health.probes import PROBES, ProbeContext, record_probe, run_probe
from monitor.metrics import Metrics
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config
from tests.helpers.metrics import metric_value
from tests.helpers.sim import put_faults
from tests.helpers.wait import wait_for

LOG = logging.getLogger("cdp-monitor.test")


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def context(
    sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path, **extra: Any
) -> tuple[ProbeContext, Metrics]:
    config = fast_config(sim, tmp_path / "state", **extra)
    metrics = Metrics(CollectorRegistry())
    rest = DiscordRestClient(
        session=http,
        metrics=metrics,
        token=sim.settings.token,
        api_base=sim.api_base,
        global_rate=25.0,
        max_retries=3,
        timeout=10.0,
    )
    ctx = ProbeContext(config=config, session=http, rest=rest, clock=SYSTEM_CLOCK, logger=LOG)
    return ctx, metrics


def test_probe_table_has_every_kind() -> None:
    assert set(PROBES) == {"gateway", "rest", "cdp", "statuspage"}


async def test_gateway_and_rest_probes_record_metrics_and_samples(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ctx, metrics = context(discord_sim, http, tmp_path)
    gateway = await run_probe("gateway", ctx)
    rest = await run_probe("rest", ctx)
    assert gateway.ok and rest.ok
    assert ctx.gateway_url == discord_sim.gateway_url  # learned from GET /gateway
    assert rest.data["session_starts_remaining"] == 1000
    for result in (gateway, rest):
        sample = record_probe(result, metrics)
        assert sample is not None and sample.ok and sample.source == result.probe
    assert metric_value(metrics.session_starts_remaining) == 1000
    assert metric_value(metrics.probe_success, probe="gateway") == 1
    assert metric_value(metrics.gateway_latency, phase="heartbeat_ack") > 0


async def test_rest_probe_does_not_retry(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ctx, _ = context(discord_sim, http, tmp_path, discord={"max_retries": 3})
    await put_faults(http, discord_sim, rest={"error_rate": 1.0})
    result = await run_probe("rest", ctx)
    assert not result.ok and result.data["status"] == 500
    assert discord_sim.state.requests[("GET /gateway/bot", 500)] == 1


async def test_cdp_probe_is_reported_but_not_a_health_sample(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner, url = await serve(app)
    try:
        ctx, metrics = context(discord_sim, http, tmp_path, probes={"cdp": {"url": url}})
        result = await run_probe("cdp", ctx)
        assert result.ok and result.data["status"] == 200
        assert record_probe(result, metrics) is None
        assert metric_value(metrics.probe_success, probe="cdp") == 1
    finally:
        await runner.cleanup()
    result = await run_probe("cdp", ctx)  # CDP gone: reported as down
    assert not result.ok and result.data["status"] is None


@pytest.mark.parametrize(
    ("api", "gateway", "ok"),
    [
        ("operational", "operational", True),
        ("degraded_performance", "operational", False),
        ("operational", "major_outage", False),
    ],
)
async def test_statuspage_probe(
    discord_sim: DiscordSimulator,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    api: str,
    gateway: str,
    ok: bool,
) -> None:
    # A local stand-in for discordstatus.com's summary.json (there is no internet here).
    summary = {
        "components": [
            {"name": "API", "status": api},
            {"name": "Gateway", "status": gateway},
            {"name": "CloudFlare", "status": "major_outage"},  # not ours to judge
        ]
    }

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(summary)

    app = web.Application()
    app.router.add_get("/api/v2/summary.json", handler)
    runner, url = await serve(app)
    try:
        ctx, metrics = context(
            discord_sim,
            http,
            tmp_path,
            probes={"statuspage": {"enabled": True, "url": url + "/api/v2/summary.json"}},
        )
        result = await run_probe("statuspage", ctx)
        assert result.ok is ok
        assert result.data["components"] == {"API": api, "Gateway": gateway}
        sample = record_probe(result, metrics)
        assert sample is not None and sample.ok is ok
    finally:
        await runner.cleanup()


async def test_exec_action_gets_state_in_environment(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
        f"if k.startswith('CDPMON_')}}, open({str(out)!r}, 'w'))"
    )
    metrics = Metrics(CollectorRegistry())
    runner = ActionRunner(session=http, metrics=metrics, logger=LOG)
    action = ActionConfig(exec=(sys.executable, "-c", script))
    runner.fire(
        [action], {"state": "open", "previous": "closed", "reason": "gateway down", "at": 1.5}, 10
    )
    await runner.drain(10)
    env = json.loads(out.read_text())
    assert env == {
        "CDPMON_STATE": "open",
        "CDPMON_PREVIOUS_STATE": "closed",
        "CDPMON_REASON": "gateway down",
        "CDPMON_TIME": "1.5",
    }
    assert metric_value(metrics.action_failures, kind="exec") == 0


async def test_webhook_action_posts_json_and_failures_are_counted(
    http: aiohttp.ClientSession,
) -> None:
    got: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204 if len(got) == 1 else 500)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server, url = await serve(app)
    try:
        metrics = Metrics(CollectorRegistry())
        runner = ActionRunner(session=http, metrics=metrics, logger=LOG)
        event = {"state": "closed", "previous": "half_open", "reason": "healthy", "at": 2.0}
        actions = [ActionConfig(webhook=url + "/hook")]
        runner.fire(actions, event, 5)
        await runner.drain(5)
        runner.fire(actions, event, 5)  # the hook now answers 500
        runner.fire([ActionConfig(exec=("/nonexistent/cmd",))], event, 5)
        slow = ActionConfig(exec=(sys.executable, "-c", "import time; time.sleep(30)"))
        runner.fire([slow], event, 0.3)
        await wait_for(
            lambda: (
                metric_value(metrics.action_failures, kind="exec") == 2
                and metric_value(metrics.action_failures, kind="webhook") == 1
            ),
            what="failed actions counted",
        )
        assert got == [event, event]
    finally:
        await server.cleanup()
    await asyncio.sleep(0)
