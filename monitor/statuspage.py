"""The status page at `GET /` of the control port (DESIGN section 6): one HTML page,
rendered on the server from /status, no external assets (works offline), nothing
secret (an allow-list of fields; no upstream URL, no token). Its buttons ask for the
control token and send it as a Bearer header with a JSON body, as the API wants.
`History` keeps the few hours of channel and creation counts its chart draws."""

from __future__ import annotations

import html
from collections import deque
from datetime import UTC, datetime
from typing import Any

from monitor.statuspage_html import TEMPLATE
from monitor.units import format_duration

HISTORY_SPAN = 6 * 3600.0  # seconds the chart shows
HISTORY_STEP = 60.0  # at most one point per step
_BADGE = {"closed": "ok", "half_open": "warn", "open": "bad", "forced_open": "bad"}


class History:
    """(time, channels, creates in 24 h) points, one per HISTORY_STEP, HISTORY_SPAN long."""

    def __init__(self) -> None:
        self.points: deque[tuple[float, int | None, int | None]] = deque(
            maxlen=int(HISTORY_SPAN / HISTORY_STEP)
        )

    def record(self, status: dict[str, Any], now: float) -> None:
        if self.points and now - self.points[-1][0] < HISTORY_STEP:
            return
        census = status.get("channels") or {}
        creates = _creations(status)
        self.points.append((now, census.get("channels"), creates.get("creates")))


def _creations(status: dict[str, Any]) -> dict[str, Any]:
    """Daily creations against the cap, when the gateway session counts them
    (/status `channels.live`: creates_24h, create_limit_daily, seconds_to_create_cap)."""
    live = (status.get("channels") or {}).get("live") or {}
    if live.get("creates_24h") is None:
        return {}
    return {
        "creates": live["creates_24h"],
        "cap": live.get("create_limit_daily"),
        "seconds_to_cap": live.get("seconds_to_create_cap"),
    }


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dur(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or seconds < 0 or seconds != seconds:
        return "-"
    return format_duration(round(float(seconds)))


def _field(key: str, value: Any) -> str:
    return _when(value) if key == "until" and value is not None else str(value)


def _row(label: str, value: str, ident: str = "") -> str:
    attr = f' id="{ident}"' if ident else ""
    return f"<tr><th>{html.escape(label)}</th><td{attr}>{value}</td></tr>"


def _breaker(status: dict[str, Any]) -> str:
    b = status.get("breaker") or {}
    state = str(b.get("state", "unknown"))
    badge = _BADGE.get(state, "warn")
    rows = [
        _row("state", f'<span class="badge {badge}">{_e(state)}</span>', "breaker-state"),
        _row("since", _when(b.get("since"))),
        _row("retry at", _when(b.get("retry_at"))),
    ]
    paused = status.get("paused")
    if paused:
        rows.append(_row("paused", _e(paused.get("reason") or "(no reason)"), "paused-reason"))
        rows.append(_row("until", _when(paused.get("until")) if paused.get("until") else "resume"))
    return _card("Breaker", rows)


def _health(status: dict[str, Any]) -> str:
    h = status.get("health") or {}
    rows = [
        _row("verdict", _e(h.get("reason") or ("unstable" if h.get("unstable") else "stable"))),
        _row("failure ratio", _e(h.get("failure_ratio")), "failure-ratio"),
        _row("slow ratio", _e(h.get("slow_ratio"))),
    ]
    for source, s in (h.get("by_source") or {}).items():
        rows.append(_row(source, f"{_e(s.get('failures'))} failed / {_e(s.get('total'))}"))
    return _card("Health by source", rows)


def _discord(status: dict[str, Any]) -> str:
    d = status.get("discord") or {}
    probes = status.get("probes") or {}
    discord = [p for name, p in probes.items() if name in ("gateway", "rest")]
    reachable = "-" if not discord else ("yes" if any(p.get("ok") for p in discord) else "NO")
    rows = [
        _row("reachable", reachable, "discord-reachable"),
        _row("token", "INVALID" if d.get("token_invalid") else "ok", "discord-token"),
        _row("Cloudflare ban", _dur(d.get("banned_for")) if d.get("banned_for") else "none"),
    ]
    for name, p in probes.items():
        rows.append(
            _row(f"probe {name}", "ok" if p.get("ok") else f"failed: {_e(p.get('detail'))}")
        )
    session = status.get("gateway_session")
    if isinstance(session, dict):
        rows.append(_row("gateway session", _e(session.get("state") or session.get("up"))))
    return _card("Discord", rows)


def _channels(status: dict[str, Any]) -> str:
    c = status.get("channels") or {}
    rows = [
        _row("channels", _e(c.get("channels")), "channels"),
        _row("limit", _e(c.get("limit")), "channel-limit"),
        _row("usage", f"{c['usage'] * 100:.0f}%" if c.get("usage") is not None else "-"),
        _row("above watermark", "YES" if c.get("above_watermark") else "no", "watermark"),
        _row("full in", _dur(c.get("exhaustion_seconds"))),
    ]
    for state, n in (c.get("temp") or {}).items():
        rows.append(_row(f"temporary {state}", _e(n)))
    cr = _creations(status)
    if cr:
        rows.append(_row("created in 24 h", f"{_e(cr['creates'])} / {_e(cr['cap'])}", "creates"))
        rows.append(_row("cap in", _dur(cr.get("seconds_to_cap"))))
    return _card("Channels", rows)


def _cdp(status: dict[str, Any]) -> str:
    gate = status.get("gate") or {}
    rows = [_row(f"gate {k}", _e(v)) for k, v in sorted((gate.get("decisions") or {}).items())]
    rows.append(_row("gate fail-open", "YES" if gate.get("fail_open") else "no"))
    rows.append(_row("create limit", _e(_limit_text(gate.get("limit") or {}))))
    for key in ("cdp_errors", "cdp"):
        part = status.get(key)
        if isinstance(part, dict):
            rows += [
                _row(str(k), _e(v)) for k, v in sorted(part.items()) if not isinstance(v, dict)
            ]
    return _card("CDP and the gate", rows)


def _limit_text(limit: dict[str, Any]) -> str:
    """The adaptive create limit in one line (monitor/gate/limit.py)."""
    if not limit.get("enabled"):
        return "off"
    if not limit.get("active"):
        return "standing aside (no current gateway session)"
    return (
        f"{limit.get('pending')} pending of {limit.get('limit')}; "
        f"{limit.get('per_create')}s a channel, next waits {limit.get('predicted_wait')}s "
        f"(budget {limit.get('budget')}s)"
    )


def _recent(status: dict[str, Any]) -> str:
    events = status.get("events") or []
    items = [
        f"<li><time>{_when(ev.get('at'))}</time> <b>{_e(ev.get('kind'))}</b> "
        f"{_e(' '.join(f'{k}={_field(k, v)}' for k, v in ev.items() if k not in ('kind', 'at')))}"
        "</li>"
        for ev in reversed(events[-15:])
    ]
    run = (status.get("reconcile") or {}).get("last_run")
    if run:
        items.append(
            f"<li>last reconcile <b>{_e(run.get('result'))}</b> "
            f"at {_when(run.get('finished_at'))}: "
            f"deleted {_e(run.get('deleted'))}, planned {_e(run.get('planned'))}"
            f"{' (dry run)' if run.get('dry_run') else ''}</li>"
        )
    body = "".join(items) or "<li>nothing yet</li>"
    title = "<h2>Recent events and deletions</h2>"
    return f'<section class="card wide">{title}<ul id="events">{body}</ul></section>'


def _card(title: str, rows: list[str]) -> str:
    head = f"<h2>{html.escape(title)}</h2>"
    return f'<section class="card">{head}<table>{"".join(rows)}</table></section>'


def chart(
    points: list[tuple[float, int | None, int | None]], width: int = 600, height: int = 160
) -> str:
    """An inline SVG of channels (blue) and creations in 24 h (orange) over time."""
    if len(points) < 2:
        return '<p class="muted">The chart fills in as the daemon runs.</p>'
    t0, t1 = points[0][0], points[-1][0]
    top = max([v for _, c, d in points for v in (c, d) if v is not None] or [1]) or 1
    out = []
    for index, color in ((1, "#2563eb"), (2, "#ea580c")):
        xy = []
        for point in points:
            value = point[index]
            if value is not None:
                x = (point[0] - t0) / (t1 - t0 or 1) * (width - 40) + 35
                xy.append(f"{x:.1f},{height - 20 - value / top * (height - 30):.1f}")
        if len(xy) > 1:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(xy)}"/>'
            )
    span = format_duration(round(t1 - t0))
    return (
        f'<svg id="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="channels and creations over the last {span}">'
        f'<text x="2" y="14" font-size="11">{top}</text>'
        f'<text x="2" y="{height - 20}" font-size="11">0</text>'
        f'<text x="{width - 5}" y="{height - 4}" font-size="11" text-anchor="end">'
        f"now (last {span})</text>"
        f"{''.join(out)}</svg>"
        '<p class="legend"><span style="color:#2563eb">■ channels</span> '
        '<span style="color:#ea580c">■ created in 24 h</span></p>'
    )


def render_page(status: dict[str, Any], history: History | None, now: float) -> str:
    """The whole page for `status` (the /status dict) at `now`."""
    parts = (_breaker, _health, _discord, _channels, _cdp, _recent)
    cards = "".join(part(status) for part in parts)
    points = list(history.points) if history is not None else []
    return TEMPLATE.substitute(
        updated=_when(now),
        cards=cards,
        chart=chart(points),
    )
