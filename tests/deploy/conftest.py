"""Fixtures shared by the deployment tests: what a live daemon exports."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from monitor.metrics import Metrics
from tests.helpers.daemon import live_metrics_text


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name a live daemon's /metrics declares, as PromQL sees it.

    From the `# TYPE` lines, not the samples: a labelled metric with no child yet (no
    deletion so far, say) is declared but has no sample line.
    """
    text = live_metrics_text(tmp_path_factory.mktemp("live") / "state")
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
    assert "cdpmon_breaker_state" in names  # the daemon really answered
    return names


@pytest.fixture(scope="module")
def metric_labels() -> dict[str, frozenset[str]]:
    """PromQL name → label names, for every metric of monitor/metrics.py."""
    out: dict[str, frozenset[str]] = {}
    for value in vars(Metrics(CollectorRegistry())).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            out[name] = frozenset(value._labelnames)
    return out
