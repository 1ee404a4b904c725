"""Sliding time window over health samples, and its pure evaluation.

A sample is one observation of Discord from one source. Producers decide what a
failure is; the conventions the evaluation relies on:

- ``gateway`` / ``rest``: one sample per probe run, ``duration`` = the probe's latency.
- ``gate``: one sample per channel-creating request seen by the gate. Its duration
  includes the model's answer time, so it normally gets no slow threshold.
- ``cdplog``: one *failure* sample per retry or failure line. A single
  ``failed after 3 attempts`` line is one failure, like each ``retrying...N`` line.
- ``statuspage``: one sample per poll and component; anything but ``operational``
  (degraded performance, partial/major outage, maintenance) is a failure, see
  :func:`statuspage_ok`.
- ``cdp``: CDP's own liveness. It is kept so one window can serve /status, but it is
  *not* Discord instability and never enters the evaluation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from monitor.units import format_duration
from monitor.vocab import DISCORD_SOURCES, SOURCES

if TYPE_CHECKING:
    from monitor.config import HealthConfig, ProbesConfig

_STATUSPAGE_OK = frozenset({"operational"})


def statuspage_ok(component_status: str) -> bool:
    """Whether a statuspage.io component status counts as a healthy sample."""
    return component_status.strip().lower() in _STATUSPAGE_OK


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation: `at` in wall-clock seconds, `duration` in seconds if measured."""

    source: str
    at: float
    ok: bool
    duration: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown sample source {self.source!r}")


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """The evaluation's parameters; built from the config by :func:`window_settings`."""

    window: float
    min_samples: int
    # A single source is judged on its own only with this many samples in the window:
    # 1 failure in 3 REST probes is noise, 3 in 8 gateway probes is an outage.
    source_min_samples: int
    failure_ratio: float
    slow_ratio: float
    # Per source: a sample whose duration exceeds this is slow. Sources absent here
    # are never slow.
    slow_thresholds: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError("window must be positive")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        for name in ("failure_ratio", "slow_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        # Freeze a caller's dict so the settings really are immutable.
        object.__setattr__(self, "slow_thresholds", MappingProxyType(dict(self.slow_thresholds)))


def window_settings(health: HealthConfig, probes: ProbesConfig) -> WindowSettings:
    """The one way from the config (`health` and the probes' `slow`) to the settings."""
    return WindowSettings(
        window=health.window,
        min_samples=health.min_samples,
        source_min_samples=health.source_min_samples,
        failure_ratio=health.failure_ratio,
        slow_ratio=health.slow_ratio,
        slow_thresholds={"gateway": probes.gateway.slow, "rest": probes.rest.slow},
    )


@dataclass(frozen=True, slots=True)
class SourceStats:
    total: int = 0
    failures: int = 0
    slow: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Result of one evaluation. `conclusive` is False below the minimum sample count."""

    unstable: bool
    failure_ratio: float
    slow_ratio: float
    sample_count: int
    reason: str
    conclusive: bool = True
    failures: int = 0
    slow: int = 0
    by_source: Mapping[str, SourceStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for /status."""
        return {
            "unstable": self.unstable,
            "conclusive": self.conclusive,
            "failure_ratio": round(self.failure_ratio, 4),
            "slow_ratio": round(self.slow_ratio, 4),
            "sample_count": self.sample_count,
            "failures": self.failures,
            "slow": self.slow,
            "reason": self.reason,
            "by_source": {
                name: {"total": s.total, "failures": s.failures, "slow": s.slow}
                for name, s in sorted(self.by_source.items())
            },
        }


def _is_slow(sample: Sample, thresholds: Mapping[str, float]) -> bool:
    limit = thresholds.get(sample.source)
    return limit is not None and sample.duration is not None and sample.duration > limit


def _count(
    samples: Iterable[Sample], now: float, settings: WindowSettings
) -> tuple[int, int, int, dict[str, SourceStats]]:
    """Totals (samples, failures, slow) and per-source stats in ``[now - window, now]``."""
    start = now - settings.window
    counts: dict[str, list[int]] = {}
    for s in samples:
        # Samples after `now` are excluded so an evaluation at a past `now` is a replay.
        if s.source not in DISCORD_SOURCES or not start <= s.at <= now:
            continue
        c = counts.setdefault(s.source, [0, 0, 0])
        c[0] += 1
        c[1] += not s.ok
        c[2] += _is_slow(s, settings.slow_thresholds)
    by_source = {name: SourceStats(*c) for name, c in counts.items()}
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    return totals[0], totals[1], totals[2], by_source


def _source_verdict(
    by_source: Mapping[str, SourceStats], settings: WindowSettings, span: str
) -> tuple[str, float, float] | None:
    """The first source with enough samples that is unstable on its own:
    (reason, failure ratio, slow ratio); None if none is."""
    for name, st in sorted(by_source.items()):
        if st.total < max(settings.min_samples, settings.source_min_samples):
            continue
        s_fr, s_sr = st.failures / st.total, st.slow / st.total
        s_over = f"over {st.total} {name} samples in {span}"
        if s_fr >= settings.failure_ratio:
            reason = f"{name} failure ratio {s_fr:.2f} >= {settings.failure_ratio:.2f} {s_over}"
            return reason, s_fr, s_sr
        if s_sr >= settings.slow_ratio:
            reason = f"{name} slow ratio {s_sr:.2f} >= {settings.slow_ratio:.2f} {s_over}"
            return reason, s_fr, s_sr
    return None


def evaluate(samples: Iterable[Sample], now: float, settings: WindowSettings) -> Verdict:
    """Judge Discord's health from the samples in ``[now - window, now]``.

    Failure ratio = failed / total; slow ratio = slow / total, where slow means a
    duration above the source's threshold whether or not the sample failed (a slow
    failure is both). Unstable when either ratio reaches its threshold with at least
    `min_samples` samples, overall or for any one source with `source_min_samples`
    samples (the reported ratio is then that source's); fewer samples are inconclusive
    and never unstable.
    """
    total, failures, slow, by_source = _count(samples, now, settings)
    span = format_duration(settings.window)
    if total < settings.min_samples:
        return Verdict(
            unstable=False,
            failure_ratio=failures / total if total else 0.0,
            slow_ratio=slow / total if total else 0.0,
            reason=f"insufficient samples ({total} < {settings.min_samples}) in {span}",
            conclusive=False,
            sample_count=total,
            failures=failures,
            slow=slow,
            by_source=by_source,
        )

    fr = failures / total
    sr = slow / total
    over = f"over {total} samples in {span}"
    if fr >= settings.failure_ratio:
        reason = f"failure ratio {fr:.2f} >= {settings.failure_ratio:.2f} {over}"
    elif sr >= settings.slow_ratio:
        reason = f"slow ratio {sr:.2f} >= {settings.slow_ratio:.2f} {over}"
    else:
        reason = f"healthy: failure ratio {fr:.2f}, slow ratio {sr:.2f} {over}"
        # A source failing on its own (the gateway down while REST answers) is
        # diluted by the healthy ones overall; judge each source with enough samples too.
        alone = _source_verdict(by_source, settings, span)
        if alone is not None:
            reason, s_fr, s_sr = alone
            # Report the ratio that tripped: the source's, the other stays overall.
            if s_fr >= settings.failure_ratio:
                fr = s_fr
            else:
                sr = s_sr
    return Verdict(
        unstable=fr >= settings.failure_ratio or sr >= settings.slow_ratio,
        failure_ratio=fr,
        slow_ratio=sr,
        reason=reason,
        conclusive=True,
        sample_count=total,
        failures=failures,
        slow=slow,
        by_source=by_source,
    )


class SampleWindow:
    """The daemon's mutable sample store: append from producers, evaluate on a timer.

    Bounded: past `max_samples` the oldest appended samples are dropped, so a flood
    of gate samples cannot grow memory without limit.
    """

    def __init__(self, *, max_samples: int = 10_000) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self._samples: deque[Sample] = deque(maxlen=max_samples)

    def append(self, sample: Sample) -> None:
        self._samples.append(sample)

    def extend(self, samples: Iterable[Sample]) -> None:
        self._samples.extend(samples)

    def prune(self, now: float, window: float) -> int:
        """Drop samples older than ``now - window``; returns how many were dropped."""
        start = now - window
        if all(s.at >= start for s in self._samples):
            return 0
        # Producers may append slightly out of order, so filter instead of popleft-ing.
        kept = [s for s in self._samples if s.at >= start]
        dropped = len(self._samples) - len(kept)
        self._samples.clear()
        self._samples.extend(kept)
        return dropped

    def evaluate(self, now: float, settings: WindowSettings) -> Verdict:
        self.prune(now, settings.window)
        return evaluate(self._samples, now, settings)

    def latest(self, source: str) -> Sample | None:
        """The most recently appended sample of `source`, for /status."""
        for s in reversed(self._samples):
            if s.source == source:
                return s
        return None

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(tuple(self._samples))
