"""Metric names and label matchers in alerts and the dashboard match what the daemon exports."""

from __future__ import annotations

import re

import pytest

from tests.deploy.files import (
    _HISTOGRAM_SUFFIXES,
    _MATCHER,
    _SELECTOR,
    KNOWN_LABEL_VALUES,
    MONITOR_JOB,
    PROMETHEUS_CONFIG,
    alert_rules,
    dashboard_exprs,
    load_yaml,
    used_metric_names,
)


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_is_exported(source: str, exported_names: set[str]) -> None:
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    used = used_metric_names(exprs, exported_names)
    assert used, "no cdpmon_ metric found: the extraction is broken"
    assert used - exported_names == set()


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_label_matchers_name_real_labels_and_values(
    source: str, metric_labels: dict[str, frozenset[str]]
) -> None:
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    checked = 0
    for expr in exprs:
        for metric, body in _SELECTOR.findall(expr):
            metric = next(
                (metric.removesuffix(s) for s in _HISTOGRAM_SUFFIXES if metric.endswith(s)),
                metric,
            )
            for label, op, value in _MATCHER.findall(body):
                checked += 1
                assert label in metric_labels[metric] | {"job", "instance"}, (metric, label)
                known = KNOWN_LABEL_VALUES.get((metric, label))
                if known is None or op.startswith("!") or value.startswith("$"):
                    continue
                for alternative in value.split("|"):
                    assert alternative in known, (metric, label, alternative)
    assert checked > 0


def test_up_alert_uses_the_scrape_job_name() -> None:
    jobs = [job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]]
    assert jobs == [MONITOR_JOB]
    up_exprs = [r["expr"] for r in alert_rules() if re.search(r"\bup\{", r["expr"])]
    assert up_exprs == [
        f'up{{job="{MONITOR_JOB}"}} == 0',  # CdpMonitorDown
        f'absent(up{{job="{MONITOR_JOB}"}})',  # CdpMonitorAbsent
    ]
