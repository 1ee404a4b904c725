from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.health.window import (
    Sample,
    SampleWindow,
    SourceStats,
    WindowSettings,
    evaluate,
    statuspage_ok,
)
from monitor.vocab import SOURCES

NOW = 1_700_000_000.0
SETTINGS = WindowSettings(
    window=120.0,
    min_samples=5,
    source_min_samples=6,
    failure_ratio=0.5,
    slow_ratio=0.5,
    slow_thresholds={"gateway": 1.0, "rest": 2.0},
)


def ok(source: str, ago: float, duration: float | None = 0.1) -> Sample:
    return Sample(source, NOW - ago, True, duration)


def fail(source: str, ago: float, duration: float | None = None) -> Sample:
    return Sample(source, NOW - ago, False, duration)


def test_failure_ratio_trips_with_readable_reason() -> None:
    samples = [fail("gateway", a) for a in (5, 20, 35, 50)] + [ok("rest", 10), ok("rest", 40)]
    v = evaluate(samples, NOW, SETTINGS)
    assert v.unstable and v.conclusive
    assert v.sample_count == 6 and v.failures == 4
    assert v.failure_ratio == pytest.approx(4 / 6)
    assert v.reason == "failure ratio 0.67 >= 0.50 over 6 samples in 2m"
    assert v.by_source == {"gateway": SourceStats(4, 4, 0), "rest": SourceStats(2, 0, 0)}


def test_healthy_window() -> None:
    samples = [ok("gateway", a) for a in range(0, 120, 15)] + [fail("rest", 30)]
    v = evaluate(samples, NOW, SETTINGS)
    assert not v.unstable and v.conclusive
    assert v.failure_ratio == pytest.approx(1 / 9)
    assert v.reason == "healthy: failure ratio 0.11, slow ratio 0.00 over 9 samples in 2m"


def test_failure_ratio_exactly_at_threshold_is_unstable() -> None:
    samples = [fail("gateway", a) for a in (1, 2, 3)] + [ok("gateway", a) for a in (4, 5, 6)]
    assert evaluate(samples, NOW, SETTINGS).unstable


def test_samples_outside_the_window_are_ignored() -> None:
    old_failures = [fail("gateway", 121 + a) for a in range(10)]
    future = [fail("gateway", -5)]
    recent = [ok("gateway", a) for a in (0, 30, 60, 90, 120)]
    v = evaluate(old_failures + future + recent, NOW, SETTINGS)
    assert v.sample_count == 5  # both edges of [now-window, now] are inclusive
    assert v.failures == 0 and not v.unstable


def test_cdp_liveness_is_not_discord_instability() -> None:
    samples = [fail("cdp", a) for a in range(20)] + [ok("gateway", a) for a in range(5)]
    v = evaluate(samples, NOW, SETTINGS)
    assert v.sample_count == 5 and not v.unstable
    assert "cdp" not in v.by_source


def test_insufficient_samples_never_unstable() -> None:
    samples = [fail("gateway", a) for a in (1, 2, 3, 4)] + [fail("cdp", 1)]
    v = evaluate(samples, NOW, SETTINGS)
    assert not v.unstable and not v.conclusive
    assert v.sample_count == 4 and v.failure_ratio == 1.0
    assert v.reason == "insufficient samples (4 < 5) in 2m"


def test_empty_window() -> None:
    v = evaluate([], NOW, SETTINGS)
    assert (v.unstable, v.conclusive, v.sample_count, v.failure_ratio) == (False, False, 0, 0.0)


def test_slow_thresholds_are_per_source() -> None:
    samples = [
        ok("gateway", 1, 1.5),  # slow: above gateway's 1.0
        ok("gateway", 2, 1.0),  # not slow: at the threshold
        ok("rest", 3, 1.5),  # not slow: rest allows 2.0
        ok("rest", 4, 2.5),  # slow
        ok("gate", 5, 300.0),  # gate has no threshold: never slow
        ok("cdplog", 6, None),
    ]
    v = evaluate(samples, NOW, SETTINGS)
    assert v.slow == 2
    assert v.slow_ratio == pytest.approx(2 / 6)
    assert not v.unstable


def test_slow_ratio_trips() -> None:
    samples = [ok("gateway", a, 3.0) for a in (1, 2, 3)] + [ok("rest", a, 0.2) for a in (4, 5)]
    v = evaluate(samples, NOW, SETTINGS)
    assert v.unstable and v.failures == 0
    assert v.reason == "slow ratio 0.60 >= 0.50 over 5 samples in 2m"


def test_slow_failure_counts_as_both() -> None:
    v = evaluate([fail("gateway", 1, 10.0)], NOW, replace(SETTINGS, min_samples=1))
    assert (v.failures, v.slow) == (1, 1)


def test_single_cdplog_failure_is_one_failure() -> None:
    samples = [ok("gateway", a) for a in (10, 25, 40, 55)] + [fail("cdplog", 3)]
    v = evaluate(samples, NOW, SETTINGS)
    assert v.by_source["cdplog"] == SourceStats(1, 1, 0)
    assert v.failures == 1 and v.sample_count == 5


@pytest.mark.parametrize(
    ("status", "healthy"),
    [
        ("operational", True),
        ("Operational ", True),
        ("degraded_performance", False),
        ("partial_outage", False),
        ("major_outage", False),
        ("under_maintenance", False),
    ],
)
def test_statuspage_status_mapping(status: str, healthy: bool) -> None:
    assert statuspage_ok(status) is healthy


def test_statuspage_degraded_counts_as_failure() -> None:
    samples = [
        Sample("statuspage", NOW - a, statuspage_ok("degraded_performance")) for a in (1, 61)
    ]
    samples += [ok("gateway", a) for a in (5, 20, 35)]
    v = evaluate(samples, NOW, SETTINGS)
    assert v.by_source["statuspage"] == SourceStats(2, 2, 0)
    assert v.failure_ratio == pytest.approx(2 / 5)


def test_unknown_source_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sample source"):
        Sample("gatway", NOW, True)


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 0}, {"min_samples": 0}, {"failure_ratio": 0}, {"slow_ratio": 1.5}],
)
def test_settings_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        replace(SETTINGS, **kwargs)  # type: ignore[arg-type]


def test_settings_freeze_thresholds() -> None:
    thresholds = {"gateway": 1.0}
    s = replace(SETTINGS, slow_thresholds=thresholds)
    thresholds["gateway"] = 99.0
    assert s.slow_thresholds["gateway"] == 1.0
    with pytest.raises(TypeError):
        s.slow_thresholds["rest"] = 1.0  # type: ignore[index]


def test_verdict_as_dict_is_json_ready() -> None:
    v = evaluate([fail("gateway", 1), ok("rest", 2)], NOW, replace(SETTINGS, min_samples=2))
    d = v.as_dict()
    assert d["failure_ratio"] == 0.5 and d["sample_count"] == 2
    assert d["by_source"] == {
        "gateway": {"total": 1, "failures": 1, "slow": 0},
        "rest": {"total": 1, "failures": 0, "slow": 0},
    }


# -- SampleWindow -------------------------------------------------------------------


def test_sample_window_prunes_old_samples() -> None:
    w = SampleWindow()
    w.extend([ok("gateway", 300), ok("gateway", 200), ok("gateway", 10)])
    w.append(ok("rest", 250))  # appended out of order
    assert w.prune(NOW, 120.0) == 3
    assert [s.at for s in w] == [NOW - 10]
    assert w.prune(NOW, 120.0) == 0


def test_sample_window_is_bounded() -> None:
    w = SampleWindow(max_samples=3)
    for a in (5, 4, 3, 2, 1):
        w.append(ok("gateway", a))
    assert len(w) == 3
    assert [s.at for s in w] == [NOW - 3, NOW - 2, NOW - 1]


def test_sample_window_evaluate_prunes_and_keeps_cdp_for_status() -> None:
    w = SampleWindow()
    w.extend([fail("gateway", 500)] * 3)
    w.extend([fail("gateway", a) for a in (1, 2, 3)] + [ok("rest", 4), ok("rest", 5)])
    w.append(Sample("cdp", NOW - 1, False))
    v = w.evaluate(NOW, SETTINGS)
    assert v.sample_count == 5 and v.unstable
    assert len(w) == 6  # old ones dropped; the cdp sample stays for /status
    latest_cdp = w.latest("cdp")
    assert latest_cdp is not None and not latest_cdp.ok
    assert w.latest("statuspage") is None


samples_strategy = st.lists(
    st.builds(
        Sample,
        source=st.sampled_from(SOURCES),
        at=st.floats(NOW - 400, NOW + 10),
        ok=st.booleans(),
        duration=st.none() | st.floats(0, 20),
    ),
    max_size=60,
)


@given(samples_strategy)
def test_evaluate_invariants(samples: list[Sample]) -> None:
    v = evaluate(samples, NOW, SETTINGS)
    in_window = [s for s in samples if s.source != "cdp" and NOW - SETTINGS.window <= s.at <= NOW]
    assert v.sample_count == len(in_window)
    assert v.failures == sum(not s.ok for s in in_window)
    assert 0.0 <= v.failure_ratio <= 1.0 and 0.0 <= v.slow_ratio <= 1.0
    assert v.conclusive == (v.sample_count >= SETTINGS.min_samples)
    if v.unstable:
        assert v.conclusive
        assert v.failure_ratio >= 0.5 or v.slow_ratio >= 0.5
    # Order does not matter.
    assert evaluate(list(reversed(samples)), NOW, SETTINGS) == v


def test_one_failing_source_is_judged_on_its_own() -> None:
    settings = replace(SETTINGS, min_samples=3, failure_ratio=0.3)
    now = 1000.0
    # 8 gateway probes, 3 refused; 12 healthy REST samples dilute them to 3/20 overall.
    samples = [Sample("gateway", now - 100 + i * 12, i < 5, 0.1) for i in range(8)]
    samples += [Sample("rest", now - 110 + i * 9, True, 0.1) for i in range(12)]
    verdict = evaluate(samples, now, settings)
    assert verdict.unstable
    assert verdict.reason.startswith("gateway failure ratio 0.38 >= 0.30 over 8 gateway samples")
    assert verdict.failure_ratio == 3 / 8


def test_a_source_with_few_samples_is_not_judged_alone() -> None:
    settings = replace(SETTINGS, min_samples=3, failure_ratio=0.3)
    now = 1000.0
    # One REST timeout in 4 REST probes is noise; overall it is 1 in 12.
    samples = [Sample("rest", now - 100 + i * 30, i != 0, 0.1) for i in range(4)]
    samples += [Sample("gateway", now - 110 + i * 15, True, 0.1) for i in range(8)]
    verdict = evaluate(samples, now, settings)
    assert not verdict.unstable and verdict.conclusive
    assert verdict.failure_ratio == 1 / 12
