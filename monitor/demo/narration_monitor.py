"""The demo's sentences for what cdp-monitor does in a run: its breaker, its gate
(refusing, the adaptive create limit) and its reconciler (`narration.event_text` asks
here first)."""

from __future__ import annotations

from monitor.demo.events import (
    BreakerChanged,
    Event,
    GateRefusing,
    LimitLowered,
    ReconcileDeleted,
)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_DELETE_WHY = {
    "ledger_failed": "their request had failed",
    "ledger_completed": "their request had finished long ago",
    "empty_aged": "empty and old enough",
    "stale": "inactive too long",
}


def _breaker_text(e: BreakerChanged) -> str:
    if e.first_open:
        return (
            f"cdp-monitor: breaker OPEN: {e.reason}. "
            f"{plural(e.inflight, 'channel-creating request')} had "
            "already been let in (in flight at CDP or queued at the gate); new ones "
            "are refused from now on."
        )
    if e.new == "open":
        return f"cdp-monitor: breaker open again: {e.reason}."
    if e.new == "half_open":
        return (
            "cdp-monitor: breaker half-open: letting one trial request through to "
            "see whether Discord is back."
        )
    if e.new == "closed":
        return f"cdp-monitor: breaker CLOSED ({e.reason}); creation resumes."
    return f"cdp-monitor: breaker {e.new}: {e.reason}."


def _reconcile_text(e: ReconcileDeleted) -> str:
    reasons = "; ".join(f"{v} {_DELETE_WHY.get(k, k)}" for k, v in sorted(e.by_reason.items()))
    trigger = (
        "an emergency run (guild above the high watermark)" if e.emergency else f"a {e.trigger} run"
    )
    return (
        f"cdp-monitor: {trigger} deleted {plural(e.count, 'leaked channel')} "
        f"({e.total} so far: {reasons})."
    )


def monitor_text(event: Event) -> str | None:
    """The sentence for an event of cdp-monitor's (breaker, gate, reconciler), None
    for any other event."""
    match event:
        case BreakerChanged():
            return _breaker_text(event)
        case ReconcileDeleted():
            return _reconcile_text(event)
        case GateRefusing():
            return (
                "cdp-monitor: creation paused: the gate answers new chat requests "
                "with 503 and Retry-After instead of passing them to CDP; requests "
                "that reuse a channel and /v1/models still pass."
            )
        case LimitLowered():
            return (
                f"cdp-monitor: Discord now takes {event.per_create:.1f}s per channel, so the "
                f"gate lets at most {event.limit} creates be pending at CDP (a create "
                f"admitted now must finish within {event.budget:g}s, CDP's attempt timeout "
                "less headroom); the others wait at the gate or get 503 with Retry-After."
            )
    return None
