"""The metrics registry: names, pre-created children, and constants kept in step."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, generate_latest

from monitor import metrics
from monitor.clock import SYSTEM_CLOCK
from monitor.supervise import Supervisor


def test_counters_with_known_labels_start_at_zero() -> None:
    text = generate_latest(metrics.Metrics(CollectorRegistry()).registry).decode()
    for line in (
        'cdpmon_breaker_transitions_total{to="open"} 0.0',
        'cdpmon_discord_ratelimited_total{scope="global"} 0.0',
        'cdpmon_cdp_channel_create_failures_total{reason="channel_limit"} 0.0',
        'cdpmon_reconcile_runs_total{result="error"} 0.0',
        'cdpmon_breaker_state{state="closed"} 1.0',
        "cdpmon_paused 0.0",
        'cdpmon_action_attempts_total{kind="notify"} 0.0',
        'cdpmon_action_failures_total{kind="webhook"} 0.0',
        'cdpmon_notifications_suppressed_total{reason="rate_limited"} 0.0',
    ):
        assert line in text
    assert "_created" not in text  # disable_created_metrics: no `*_created` beside counters


def test_a_supervised_loop_exports_its_restarts_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    supervisor = Supervisor(
        metrics=metrics.Metrics(registry), logger=logging.getLogger("t"), clock=SYSTEM_CLOCK
    )

    async def main() -> None:
        async def body() -> None:
            await asyncio.Event().wait()

        supervisor.start("evaluate", body)
        await supervisor.stop(timeout=1.0)

    asyncio.run(main())
    assert registry.get_sample_value("cdpmon_loop_restarts_total", {"loop": "evaluate"}) == 0.0


def test_every_metric_has_the_prefix_and_help() -> None:
    families = list(metrics.Metrics(CollectorRegistry()).registry.collect())
    assert len(families) >= 30
    for family in families:
        assert family.name.startswith("cdpmon_"), family.name
        assert family.documentation, family.name
