"""When the reconciler runs, and the exhaustion forecast (pure)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from monitor.reconcile import Census, exhaustion_seconds, next_trigger
from tests.helpers.reconcile import HOUR, MIN, NOW, cfg

# -- triggers and exhaustion ---------------------------------------------------------------------


def census(channels: int, limit: int = 500, at: float = NOW) -> Census:
    return Census(at=at, channels=channels, limit=limit, high_watermark=0.8)


def trig(now: float, **kw: Any) -> str | None:
    kw.setdefault("breaker_state", "closed")
    kw.setdefault("closed_since", NOW - 10 * HOUR)
    kw.setdefault("last_run_at", NOW - MIN)
    kw.setdefault("last_census", census(100))
    kw.setdefault("settings", cfg())
    return next_trigger(now, **kw)


def test_interval_while_closed() -> None:
    assert trig(NOW, last_run_at=NOW - 299) is None
    assert trig(NOW, last_run_at=NOW - 300) == "interval"
    for state in ("open", "half_open", "forced_open"):
        assert trig(NOW, last_run_at=NOW - 10 * HOUR, breaker_state=state) is None


def test_startup_run_after_settle() -> None:
    assert trig(NOW, last_run_at=None) == "startup"
    assert trig(NOW, last_run_at=None, closed_since=NOW - 10) is None
    assert trig(NOW, last_run_at=None, breaker_state="open") is None


def test_recovery_after_settle_delay_and_again_after_min_age() -> None:
    closed = NOW
    s = cfg(settle_delay=30.0, min_age=600.0, interval=3600.0)
    run_before = closed - 100
    base = {"closed_since": closed, "settings": s}
    assert trig(closed + 29, last_run_at=run_before, **base) is None  # settling
    assert trig(closed + 30, last_run_at=run_before, **base) == "recovery"
    assert trig(closed + 31, last_run_at=closed + 30, **base) is None
    assert trig(closed + 599, last_run_at=closed + 30, **base) is None
    assert trig(closed + 600, last_run_at=closed + 30, **base) == "recovery"  # backlog aged
    assert trig(closed + 601, last_run_at=closed + 600, **base) is None
    assert trig(closed + 600 + 3600, last_run_at=closed + 600, **base) == "interval"


def test_emergency_in_any_breaker_state() -> None:
    full = census(490)
    for state in ("closed", "open", "half_open", "forced_open"):
        assert trig(NOW, breaker_state=state, last_census=full, last_run_at=None) == "emergency"
    # Right after a run: again at once only if that run made progress.
    assert trig(NOW, last_census=full, last_run_at=NOW - 1, breaker_state="open") is None
    assert (
        trig(
            NOW,
            last_census=full,
            last_run_at=NOW - 1,
            breaker_state="open",
            last_run_progress=True,
        )
        == "emergency"
    )
    assert trig(NOW, last_census=full, last_run_at=NOW - 30, breaker_state="open") == "emergency"
    assert trig(NOW, last_census=census(399), last_run_at=None, breaker_state="open") is None


def test_exhaustion_estimate() -> None:
    assert exhaustion_seconds([], 500) == math.inf
    assert exhaustion_seconds([(0.0, 100)], 500) == math.inf
    assert exhaustion_seconds([(0.0, 500)], 500) == 0.0
    assert exhaustion_seconds([(0.0, 100), (60.0, 100)], 500) == math.inf
    assert exhaustion_seconds([(0.0, 200), (60.0, 100)], 500) == math.inf
    # 1 channel per second, 400 to go.
    points = [(float(t), 90 + t) for t in range(0, 11)]
    assert exhaustion_seconds(points, 500) == pytest.approx(400.0)
