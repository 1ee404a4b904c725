"""When to reconcile, and when the guild will be full (pure: everything takes `now`).

`next_trigger` says why a run is due (startup, recovery, interval, emergency) from the
breaker's state, the last run and the last census. `exhaustion_seconds` and `forecast`
estimate the time until the channel limit from the recent census points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from monitor.config import ReconcileConfig
from monitor.reconcile.plan import Census

# Exhaustion estimate: growth rate over the last few census points in this window.
GROWTH_POINTS = 10
GROWTH_WINDOW = 1800.0


def exhaustion_seconds(points: Sequence[tuple[float, int]], limit: int) -> float:
    """Seconds until `limit` at the growth rate fitted to the census points (time, count);
    +Inf when not growing (or too few points), 0 when already full."""
    if not points:
        return math.inf
    last_n = points[-1][1]
    if last_n >= limit:
        return 0.0
    if len(points) < 2:
        return math.inf
    mean_t = sum(t for t, _ in points) / len(points)
    mean_n = sum(n for _, n in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return math.inf
    slope = sum((t - mean_t) * (n - mean_n) for t, n in points) / var
    if slope <= 0:
        return math.inf
    return (limit - last_n) / slope


def forecast(history: Iterable[tuple[float, int]], limit: int, now: float) -> float:
    """`exhaustion_seconds` over the census points of the last GROWTH_WINDOW."""
    return exhaustion_seconds([(t, n) for t, n in history if now - t <= GROWTH_WINDOW], limit)


def restart_due(restarts: Sequence[float], request_lifetime: float) -> float | None:
    """When the requests that died with CDP's last restart are all over (a run then
    deletes their channels); None before any restart."""
    return restarts[-1] + request_lifetime + 1.0 if restarts else None


def next_trigger(
    now: float,
    *,
    breaker_state: str,
    closed_since: float | None,
    last_run_at: float | None,
    last_census: Census | None,
    settings: ReconcileConfig,
    last_run_progress: bool = False,
    emergency_retry: float | None = None,
    restart_due: float | None = None,
) -> str | None:
    """Why a run is due now, or None.

    * `emergency`: the last census is above the high watermark, in any breaker state.
      Repeated at once while runs make progress, else every `emergency_retry` (default:
      the settings' `list_spacing`).
    * nothing else unless the breaker is closed, and not within `settle_delay` of closing.
    * `startup`: no run yet.
    * `cdp_restart`: `restart_due` (when the requests that died with CDP's last restart
      are over) has come since the last run.
    * `recovery`: after closing, a run is due once `settle_delay` has passed and again once
      `min_age` has passed (the backlog of timed-out creates lands after recovery and only
      becomes old enough to delete later).
    * `interval`: `interval` since the last run.

    `last_run_at` is when the last run listed the guild.
    """
    retry = settings.list_spacing if emergency_retry is None else emergency_retry
    if last_census is not None and last_census.above_watermark:
        if last_run_at is None or last_run_progress or now - last_run_at >= retry:
            return "emergency"
    if breaker_state != "closed":
        return None
    if closed_since is not None and now - closed_since < settings.settle_delay:
        return None
    if last_run_at is None:
        return "startup"
    if restart_due is not None and now >= restart_due > last_run_at:
        return "cdp_restart"
    if closed_since is not None:
        for checkpoint in (closed_since + settings.settle_delay, closed_since + settings.min_age):
            if now >= checkpoint > last_run_at:
                return "recovery"
    if now - last_run_at >= settings.interval:
        return "interval"
    return None
