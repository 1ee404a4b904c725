"""The metrics registry: names, pre-created children, and constants kept in step."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from monitor import metrics


def test_counters_with_known_labels_start_at_zero() -> None:
    text = generate_latest(metrics.Metrics(CollectorRegistry()).registry).decode()
    for line in (
        'cdpmon_breaker_transitions_total{to="open"} 0.0',
        'cdpmon_discord_ratelimited_total{scope="global"} 0.0',
        'cdpmon_cdp_channel_create_failures_total{reason="limit_30013"} 0.0',
        'cdpmon_reconcile_runs_total{result="error"} 0.0',
        'cdpmon_breaker_state{state="closed"} 1.0',
        "cdpmon_paused 0.0",
    ):
        assert line in text


def test_every_metric_has_the_prefix_and_help() -> None:
    families = list(metrics.Metrics(CollectorRegistry()).registry.collect())
    assert len(families) >= 30
    for family in families:
        assert family.name.startswith("cdpmon_"), family.name
        assert family.documentation, family.name
