"""Reading metric values in tests, only through prometheus_client's public API.

`sample` reads a registry by its exported (PromQL) name, e.g. a Counter as `x_total`;
`metric_value` reads a metric object (a Counter's `_total` sample, a Gauge's own) the way
`registry.get_sample_value` does, from `collect()`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sample `name{labels}`; fails loudly when the registry does not export it."""
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"no sample {name}{labels} in the registry"
    return found


def sample_or_zero(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sample `name{labels}`, 0.0 for a labelled series not touched yet."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def metric_value(metric: MetricWrapperBase, **labels: str) -> float:
    """The current value of `metric` (a Counter or Gauge) with `labels`.

    Like the old `metric_value(metric, ...)`, naming the labels creates the child
    (at 0), and wrong label names raise; a histogram or summary has no single value.
    """
    if labels:
        metric.labels(**labels)
    for family in metric.collect():
        if family.type not in ("counter", "gauge"):
            raise AssertionError(f"{family.name} is a {family.type}: read one of its samples")
        name = family.name + "_total" if family.type == "counter" else family.name
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample for {metric!r} with labels {labels}")
