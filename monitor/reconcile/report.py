"""What a reconcile run did: the report (JSON for the control API, text for the CLI).

`ReconcileReport` is filled in by the reconciler as the run goes; `result_of` names its
outcome once it is over; `run_summary` is the short form /status shows; `format_report`
is the human-readable text `cdp-monitor reconcile` prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.config import ReconcileConfig
from monitor.logs import redact
from monitor.reconcile.plan import Action, Plan, ago

REPORT_LIST_LIMIT = 500  # entries per list in as_dict(), so one answer stays readable


@dataclass
class ReconcileReport:
    run_id: str
    trigger: str
    dry_run: bool
    started_at: float
    finished_at: float | None = None
    result: str = "ok"
    listed: int = 0
    emergency: bool = False
    planned: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    gone: list[dict[str, Any]] = field(default_factory=list)  # 404: already deleted
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    deferred: int = 0
    not_matching: int = 0
    census: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why the run as a whole failed (the audit log unwritable)

    def as_dict(self) -> dict[str, Any]:
        """JSON for the control API; secrets Discord or a proxy echoed back redacted."""

        def capped(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return items[:REPORT_LIST_LIMIT]

        return redact(
            {
                "run_id": self.run_id,
                "trigger": self.trigger,
                "dry_run": self.dry_run,
                "result": self.result,
                "error": self.error,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "listed": self.listed,
                "emergency": self.emergency,
                "planned": capped(self.planned),
                "deleted": capped(self.deleted),
                "gone": capped(self.gone),
                "skipped": capped(self.skipped),
                "errors": capped(self.errors),
                "counts": {
                    "planned": len(self.planned),
                    "deleted": len(self.deleted),
                    "gone": len(self.gone),
                    "skipped": len(self.skipped),
                    "errors": len(self.errors),
                    "deferred": self.deferred,
                    "not_matching": self.not_matching,
                },
                "census": self.census,
                "notes": list(self.notes),
            }
        )


@dataclass
class RunState:
    """A run under way: its report, and why the remaining deletions are not attempted."""

    report: ReconcileReport
    abort: str | None = None


def error_entry(a: Action, text: str) -> dict[str, Any]:
    return {"id": str(a.channel_id), "name": a.name, "error": text}


def fill_from_plan(report: ReconcileReport, p: Plan, *, purges: str | None = None) -> None:
    """The plan's part of a run's report."""
    report.listed = p.census.channels
    report.emergency = p.emergency
    report.planned = [a.as_dict() for a in p.actions]
    report.skipped = [s.as_dict() for s in p.skipped]
    report.deferred = p.deferred
    report.not_matching = p.not_matching
    report.census = p.census.as_dict()
    if p.emergency:
        report.notes.append(f"above the high watermark: emergency_min_age {ago(p.min_age)} applies")
    if p.emergency and purges is not None:
        report.notes.append(
            f"at the limit CDP deletes cdp-chat- channels in use (MAX_CHANNEL_DEL_TYPE={purges})"
        )


def unjudged_message(p: Plan) -> str:
    """The operator's notice of the channels with messages that no rule can judge."""
    shown = ", ".join(f"{s.channel_id} ({s.name})" for s in p.unjudged[:20])
    more = f" and {len(p.unjudged) - 20} more" if len(p.unjudged) > 20 else ""
    return (
        f"{len(p.unjudged)} temporary channels with messages that no rule can judge are "
        f"kept: {shown}{more}. Review them with `cdp-monitor reconcile --adopt-older-than "
        "DURATION` (a dry run; --yes deletes them, audited)"
    )


def result_of(report: ReconcileReport) -> str:
    """ok, dry_run, partial or error (RECONCILE_RESULTS)."""
    if report.census is None or report.error:  # never listed the guild, or could not audit
        return "error"
    if report.dry_run:
        return "error" if report.errors else "dry_run"
    if report.errors:
        return "partial" if report.deleted else "error"
    return "ok"


def run_status(
    settings: ReconcileConfig,
    running: bool,
    last_success: float | None,
    last: ReconcileReport | None,
) -> dict[str, Any]:
    """The `reconcile` part of /status."""
    return {
        "enabled": settings.enabled,
        "dry_run": settings.dry_run,
        "running": running,
        "last_success": last_success,
        "last_run": None if last is None else run_summary(last),
    }


def run_summary(report: ReconcileReport) -> dict[str, Any]:
    """The last run as /status shows it."""
    return redact(
        {
            "run_id": report.run_id,
            "trigger": report.trigger,
            "dry_run": report.dry_run,
            "result": report.result,
            "error": report.error,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "planned": len(report.planned),
            "deleted": len(report.deleted),
            "gone": len(report.gone),
            "errors": len(report.errors),
            "deferred": report.deferred,
        }
    )


# format_report groups "only 3m old" with "only 5m old", and one request's id with another's.
_GROUP_DURATIONS = re.compile(r"\b(?:\d+(?:\.\d+)?(?:ms|h|m|s|d))+\b")
_GROUP_REQUESTS = re.compile(r"request \S+ ")


def format_report(report: ReconcileReport) -> str:
    """Human-readable report for the CLI (secrets redacted, as in as_dict)."""
    return redact(_format(report))


def _format(report: ReconcileReport) -> str:
    started = datetime.fromtimestamp(report.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    mode = "dry run" if report.dry_run else "live"
    lines = [f"reconcile {report.run_id} ({mode}, trigger {report.trigger}) at {started}"]
    lines.extend(f"note: {n}" for n in report.notes)
    if report.error:
        lines.append(f"ERROR: {report.error}")
    if report.census is not None:
        c = report.census
        temp = ", ".join(f"{k} {v}" for k, v in c["temp"].items())
        lines.append(
            f"guild: {c['channels']}/{c['limit']} channels ({c['usage']:.0%})"
            + (" - above the high watermark" if c["above_watermark"] else "")
            + f"; temporary: {temp}"
        )
    verb = "would delete" if report.dry_run else "planned"
    lines.append(
        f"result: {report.result}; {verb} {len(report.planned)}, deleted {len(report.deleted)}, "
        f"already gone {len(report.gone)}, kept {len(report.skipped)}, "
        f"errors {len(report.errors)}"
        + (f", {report.deferred} left for the next run" if report.deferred else "")
    )
    lines.extend(_format_removed(report))
    lines.extend(_format_kept(report))
    lines.extend(_format_unjudged(report))
    for err in report.errors[:20]:
        lines.append(f"error: {err.get('id') or '-'} {err.get('name') or ''}: {err['error']}")
    return "\n".join(lines)


def _format_removed(report: ReconcileReport) -> list[str]:
    shown = report.planned if report.dry_run else report.deleted
    if not shown:
        return []
    lines = ["would delete:" if report.dry_run else "deleted:"]
    lines.extend(f"  {item['id']}  {item['name']}  ({item['reason']})" for item in shown[:50])
    if len(shown) > 50:
        lines.append(f"  ... and {len(shown) - 50} more")
    return lines


def _format_kept(report: ReconcileReport) -> list[str]:
    if not report.skipped:
        return []
    why: dict[str, int] = {}
    for s in report.skipped:
        key = _GROUP_DURATIONS.sub("N", _GROUP_REQUESTS.sub("request R ", s["why"]))
        why[key] = why.get(key, 0) + 1
    lines = ["kept:"]
    lines.extend(f"  {n:>4} x {text}" for text, n in sorted(why.items(), key=lambda kv: -kv[1]))
    return lines


def _format_unjudged(report: ReconcileReport) -> list[str]:
    """The channels with messages no rule can judge: old leaks, or conversations kept."""
    unjudged = [s for s in report.skipped if s.get("unjudged")]
    if not unjudged:
        return []
    lines = [f"no rule can judge these {len(unjudged)} channels with messages (kept):"]
    lines.extend(f"  {s['id']}  {s['name']}  ({s['why']})" for s in unjudged[:50])
    if len(unjudged) > 50:
        lines.append(f"  ... and {len(unjudged) - 50} more")
    lines.append(
        "  to delete those you confirm are leaks: cdp-monitor reconcile --adopt-older-than "
        "DURATION (a dry run; add --yes to delete)"
    )
    return lines
