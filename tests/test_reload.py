"""Every reloadable key takes effect in the running daemon after `reload()` (SIGHUP): one
case per key, each reading the value the running component uses (not `daemon.config`).
The reconciler's behaviour under each reconcile key is in test_reconcile_reload.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.health.window import Sample
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config_dict, merge, running_daemon
from tests.helpers.wait import wait_for

Observe = Callable[[Daemon], Any]


def _probes(d: Daemon) -> Any:
    assert d._probe_ctx is not None
    return d._probe_ctx.config.probes


def _rest(d: Daemon) -> dict[str, Any]:
    """What the live REST client (and the probes' and reconciler's view of it) uses."""
    rest = d.rest
    assert d._probe_ctx is not None and d._probe_ctx.rest is rest
    return {
        "token": rest._token,
        "api_base": rest._api_base,
        "max_retries": rest._max_retries,
        "timeout": rest._timeout.total,
        "interval": rest.limiter._interval,
    }


def _reconciler(d: Daemon) -> Any:
    assert d.reconciler is not None
    return d.reconciler


def _action_runs(d: Daemon) -> Any:
    return d.effects.actions


# (key, new YAML value, what the running daemon uses)
CASES: list[tuple[str, Any, Observe]] = [
    ("health.window", "3m", lambda d: d.health.settings.window),
    ("health.min_samples", 9, lambda d: d.health.settings.min_samples),
    ("health.source_min_samples", 11, lambda d: d.health.settings.source_min_samples),
    ("health.failure_ratio", 0.6, lambda d: d.health.settings.failure_ratio),
    ("health.slow_ratio", 0.7, lambda d: d.health.settings.slow_ratio),
    ("health.evaluate_interval", "100ms", lambda d: d.health.evaluate_interval),
    ("breaker.reset_timeout", "30s", lambda d: d.breaker.settings.reset_timeout),
    ("breaker.success_threshold", 5, lambda d: d.breaker.settings.success_threshold),
    ("breaker.backoff_factor", 3, lambda d: d.breaker.settings.backoff_factor),
    ("breaker.max_reset_timeout", "20m", lambda d: d.breaker.settings.max_reset_timeout),
    ("breaker.backoff_reset_after", "2h", lambda d: d.breaker.settings.backoff_reset_after),
    ("probes.gateway.interval", "20s", lambda d: _probes(d).gateway.interval),
    ("probes.gateway.timeout", "4s", lambda d: _probes(d).gateway.timeout),
    ("probes.gateway.slow", "1500ms", lambda d: d.health.settings.slow_thresholds["gateway"]),
    ("probes.rest.interval", "40s", lambda d: _probes(d).rest.interval),
    ("probes.rest.timeout", "5s", lambda d: _probes(d).rest.timeout),
    ("probes.rest.slow", "2500ms", lambda d: d.health.settings.slow_thresholds["rest"]),
    ("probes.cdp.interval", "25s", lambda d: _probes(d).cdp.interval),
    ("probes.cdp.timeout", "6s", lambda d: _probes(d).cdp.timeout),
    ("probes.statuspage.interval", "2m", lambda d: _probes(d).statuspage.interval),
    ("probes.statuspage.timeout", "7s", lambda d: _probes(d).statuspage.timeout),
    ("discord.token", "an0ther-t0ken", lambda d: _rest(d)["token"]),
    ("discord.api_base", "http://127.0.0.1:9/api/v10", lambda d: _rest(d)["api_base"]),
    ("discord.max_retries", 2, lambda d: _rest(d)["max_retries"]),
    ("discord.request_timeout", "3s", lambda d: _rest(d)["timeout"]),
    ("discord.global_rate", 10, lambda d: _rest(d)["interval"]),
    ("discord.gateway_url", "wss://gw.example/", lambda d: _probes_discord(d).gateway_url),
    ("discord.channel_limit", 250, lambda d: _reconciler(d)._guild_census.limit),
    ("discord.guild_id", "1100000000000000099", lambda d: _reconciler(d)._guild_id),
    ("actions.on_open", [{"exec": ["true"]}], lambda d: _action_runs(d).on_open),
    ("actions.on_close", [{"exec": ["true"]}], lambda d: _action_runs(d).on_close),
    ("actions.timeout", "3s", lambda d: _action_runs(d).timeout),
    ("reconcile.enabled", True, lambda d: _reconciler(d).settings.enabled),
    ("reconcile.interval", "10m", lambda d: _reconciler(d).settings.interval),
    ("reconcile.name_pattern", "^tmp-", lambda d: _reconciler(d).settings.name_pattern),
    (
        "reconcile.protected_channel_ids",
        ["1100000000000000007"],
        lambda d: _reconciler(d).settings.protected_channel_ids,
    ),
    ("reconcile.min_age", "20m", lambda d: _reconciler(d).settings.min_age),
    ("reconcile.emergency_min_age", "1m", lambda d: _reconciler(d).settings.emergency_min_age),
    ("reconcile.max_deletes_per_run", 7, lambda d: _reconciler(d).settings.max_deletes_per_run),
    ("reconcile.dry_run", True, lambda d: _reconciler(d).settings.dry_run),
    ("reconcile.high_watermark", 0.9, lambda d: _reconciler(d).settings.high_watermark),
    ("reconcile.stale_after", "2h", lambda d: _reconciler(d).settings.stale_after),
    ("reconcile.settle_delay", "45s", lambda d: _reconciler(d).settings.settle_delay),
    ("cdp.auto_delete", "9s", lambda d: _reconciler(d).cdp.auto_delete),
    ("cdp.request_timeout", "9m", lambda d: _reconciler(d).cdp.request_timeout),
    ("cdp.max_channel_del_type", "ALL", lambda d: _reconciler(d).cdp.max_channel_del_type),
    ("reconcile.ledger_grace", "4m", lambda d: _reconciler(d).settings.ledger_grace),
    ("reconcile.census_interval", "7m", lambda d: _reconciler(d).settings.census_interval),
    ("reconcile.list_spacing", "40s", lambda d: _reconciler(d).settings.list_spacing),
]


def _probes_discord(d: Daemon) -> Any:
    assert d._probe_ctx is not None
    return d._probe_ctx.config.discord


def _nested(key: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    for part in reversed(key.split(".")):
        value = {part: value}
    nested: dict[str, Any] = value
    return nested


@pytest.mark.parametrize(("key", "value", "observe"), CASES, ids=[c[0] for c in CASES])
async def test_reloaded_key_takes_effect(
    key: str, value: Any, observe: Observe, discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    # Quiet daemon: no probes, no reconcile runs; only the reload is under test.
    base = fast_config_dict(
        discord_sim,
        tmp_path / "state",
        probes={"gateway": {"enabled": False}, "rest": {"enabled": False}},
    )
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(base))
    async with running_daemon(load_config(path), config_path=path) as daemon:
        await wait_for(daemon.ready, what="ready")
        before = observe(daemon)
        path.write_text(yaml.safe_dump(merge(base, _nested(key, value))))
        assert daemon.reload()
        after = observe(daemon)
    assert after != before, f"{key}: the running daemon still uses {before!r}"


async def test_reloaded_min_samples_changes_the_verdict(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    base = fast_config_dict(
        discord_sim,
        tmp_path / "state",
        probes={"gateway": {"enabled": False}, "rest": {"enabled": False}},
        health={"window": "1h", "min_samples": 3},
    )
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(base))
    async with running_daemon(load_config(path), config_path=path) as daemon:
        now = daemon.clock.time()
        for i in range(3):
            daemon.health.add_sample(Sample("gateway", now - i, False, 0.1))
        assert daemon.evaluate_once().conclusive
        path.write_text(yaml.safe_dump(merge(base, {"health": {"min_samples": 5}})))
        assert daemon.reload()
        verdict = daemon.evaluate_once()
    assert not verdict.conclusive and "(3 < 5)" in verdict.reason
