"""What a run found (`RunResult`), the runs of an incident (`IncidentReport`), and the
rows of their side-by-side summary, laid out by `format_summary`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from monitor.demo.events import BreakerChanged, Event, Tick
from monitor.demo.settings import RUN_KINDS, ScenarioSettings


@dataclass
class RunResult:
    run: str  # a RUN_KINDS name: "without", "with", "breaker" or "limit"
    settings: ScenarioSettings
    interrupted: bool = False
    duration: float = 0.0
    requests: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    unfinished: int = 0
    peak_channels: int = 0
    peak_temp_channels: int = 0
    # Temporary channels CDP has not scheduled for deletion: in use, or leaked.
    peak_held_channels: int = 0
    leaked_at_end: int = 0
    channels_at_end: int = 0
    recovery_to_clean: float | None = None  # None: leaks remained at the end
    errors_30013: int = 0  # CDP log lines reporting Discord's 30013
    discord_30013: int = 0  # 30013 answers Discord gave (abandoned attempts included)
    in_use_deleted: int = 0  # CDP found its channel gone mid-conversation
    discord_429: int = 0
    discord_429_monitor_routes: int = 0
    monitor_429: int = 0  # 429s cdp-monitor's own client received
    late_channels: int = 0  # channels created by CDP's abandoned attempts
    cdp_create_timeouts: int = 0
    retrying_lines: int = 0  # "Create channel timed out, retrying...N" in CDP's log
    creates_at_cdp: int = 0  # channel-creating requests CDP answered (admitted ones)
    breaker_open_for: float = 0.0  # seconds the breaker was not closed (half-open too)
    limited: int = 0  # creates the gate's adaptive limit refused (503 create_queue_full)
    cdp_max_concurrent_creates: int = 0
    breaker_opened_at: float | None = None
    inflight_at_open: int | None = None  # creates in flight at the gate when it first opened
    # Requests that may leave channels behind: in flight whenever the breaker opened
    # from closed, plus the trial slots of every half-open period.
    exposed_requests: int = 0
    breaker_trips: int = 0
    half_open_periods: int = 0
    reconcile_deleted: int = 0
    reconcile_reasons: dict[str, int] = field(default_factory=dict)
    under_watermark_at: float | None = None
    timeline: list[Tick] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def success_ratio(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    @property
    def with_monitor(self) -> bool:
        return RUN_KINDS[self.run].monitor

    @property
    def held_bound(self) -> int:
        """What cdp-monitor promises for `peak_held_channels`: the requests it lets in at
        once (`max_concurrent_creates`, one channel each) plus whatever the requests
        already in flight whenever the breaker opened can leave behind, which is up to
        CDP's `attempts` channels each (and each half-open period lets a trial or a few in)."""
        s = self.settings
        return s.prefill + s.max_concurrent_creates + s.attempts * self.exposed_requests


@dataclass
class IncidentReport:
    settings: ScenarioSettings
    runs: list[RunResult] = field(default_factory=list)  # in the order they ran

    def run(self, name: str) -> RunResult | None:
        return next((r for r in self.runs if r.run == name), None)

    @property
    def without(self) -> RunResult | None:
        return self.run("without")

    @property
    def with_monitor(self) -> RunResult | None:
        """The demo's run with cdp-monitor (its default gate)."""
        return self.run("with")


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


Rows = list[tuple[str, list[str]]]
Cell = Callable[[RunResult], str]


def _cells(report: IncidentReport, fn: Cell) -> list[str]:
    return [fn(r) for r in report.runs]


def _monitor_only(report: IncidentReport, fn: Cell) -> list[str]:
    return _cells(report, lambda r: fn(r) if r.with_monitor else "-")


def summary_rows(report: IncidentReport, *, detail: bool = False) -> Rows:
    """(label, one cell per run) rows of the side-by-side summary; `detail` adds the
    numbers behind them (the benchmark prints those too)."""
    s = report.settings

    def cells(fn: Cell) -> list[str]:
        return _cells(report, fn)

    rows: Rows = []
    if s.prefill:
        rows += [
            ("peak channels in the guild", cells(lambda r: f"{r.peak_channels}/{s.channel_limit}")),
            (
                f"under the watermark ({s.watermark_channels}) at",
                cells(lambda r: _seconds(r.under_watermark_at)),
            ),
        ]
    rows += [
        ("peak temporary channels", cells(lambda r: str(r.peak_temp_channels))),
        ("channels left leaked at the end", cells(lambda r: str(r.leaked_at_end))),
        ("recovery -> no leaked channel", cells(lambda r: _seconds(r.recovery_to_clean))),
        ("30013 errors (guild full)", cells(lambda r: str(r.errors_30013))),
        ("client success ratio", cells(lambda r: f"{r.success_ratio:.0%}")),
        (
            "  requests ok / refused / failed",
            cells(lambda r: f"{r.ok} / {r.refused} / {r.failed + r.unfinished}"),
        ),
        ("429s from Discord", cells(lambda r: str(r.discord_429))),
        (
            "  answered to cdp-monitor's requests",
            _monitor_only(report, lambda r: str(r.monitor_429)),
        ),
    ]
    return rows + _detail_rows(report) if detail else rows


def _detail_rows(report: IncidentReport) -> Rows:
    """The numbers behind the summary, and the adaptive limit's (issue 19)."""
    healthy = report.settings.healthy

    def cells(fn: Cell) -> list[str]:
        return _cells(report, fn)

    def monitor_only(fn: Cell) -> list[str]:
        return _monitor_only(report, fn)

    def opened(r: RunResult) -> str:
        at = r.breaker_opened_at
        return "never" if at is None else f"{at - healthy:.1f}"

    return [
        ("channels from abandoned attempts", cells(lambda r: str(r.late_channels))),
        ("`retrying` lines in CDP's log", cells(lambda r: str(r.retrying_lines))),
        ("creates that reached CDP", cells(lambda r: str(r.creates_at_cdp))),
        ("creates refused by the limit", monitor_only(lambda r: str(r.limited))),
        ("breaker open (incl. half-open), s", monitor_only(lambda r: f"{r.breaker_open_for:.1f}")),
        ("breaker opened, s into the outage", monitor_only(opened)),
        ("  creates let in when it opened", monitor_only(lambda r: str(r.inflight_at_open))),
        (
            "peak held channels (bound)",
            monitor_only(lambda r: f"{r.peak_held_channels} ({r.held_bound})"),
        ),
        ("channels deleted by reconcile", monitor_only(lambda r: str(r.reconcile_deleted))),
        ("conversations that lost a channel", cells(lambda r: str(r.in_use_deleted))),
        ("run time (s)", cells(lambda r: f"{r.duration:.1f}")),
    ]


def format_summary(report: IncidentReport, *, detail: bool = False) -> str:
    """The side-by-side table of the runs in `report`."""
    headers = [RUN_KINDS[r.run].header for r in report.runs]
    rows = summary_rows(report, detail=detail)
    label_w = max(len(label) for label, _ in rows)
    col_w = [max(len(h), *(len(cells[i]) for _, cells in rows)) for i, h in enumerate(headers)]
    lines = [
        "".ljust(label_w) + "".join(f"  {h:>{w}}" for h, w in zip(headers, col_w, strict=True))
    ]
    lines.append("-" * len(lines[0]))
    for label, cells in rows:
        lines.append(
            label.ljust(label_w) + "".join(f"  {c:>{w}}" for c, w in zip(cells, col_w, strict=True))
        )
    return "\n".join(lines)


def breaker_open_for(events: list[Event], end: float) -> float:
    """Seconds the breaker spent away from closed, from a run's BreakerChanged events
    (still open at `end`: counted to it)."""
    total, since = 0.0, None
    for e in events:
        if not isinstance(e, BreakerChanged):
            continue
        if e.old == "closed" and e.new != "closed":
            since = e.t
        elif e.new == "closed" and since is not None:
            total, since = total + e.t - since, None
    if since is not None:
        total += max(0.0, end - since)
    return round(total, 2)
