"""The audit log of deletions: fsynced JSON lines. Before each DELETE an `intent` line,
after it the outcome (`deleted`, `gone` or `failed`); a dry run writes one `dry_run` line
per decision. No DELETE is sent unless its intent line is on disk: when a line cannot be
written the run deletes nothing more and ends as an error, so after any crash (SIGKILL
included) every deletion that happened has at least its intent line."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from monitor.errors import StateError
from monitor.reconcile.plan import Action
from monitor.reconcile.report import ReconcileReport, RunState, error_entry
from monitor.state import StateDir

# The `event` of an audit line.
AUDIT_EVENTS = ("intent", "deleted", "gone", "failed", "dry_run")
AUDIT_FAILED = "not attempted: the audit log cannot be written"


def audit_line(
    report: ReconcileReport, a: Action, reason: str, *, event: str, guild_id: str, ts: float
) -> dict[str, Any]:
    """The audit record of one step of deleting (or, dry, deciding to delete) a channel."""
    return {
        "ts": ts,
        "event": event,
        "run_id": report.run_id,
        "trigger": report.trigger,
        "guild_id": guild_id,
        "channel_id": str(a.channel_id),
        "name": a.name,
        "created_at": a.created_at,
        "reason": reason,
        "request_id": a.request_id,
        "dry_run": report.dry_run,
    }


async def write_audit(
    state_dir: StateDir,
    state: RunState,
    a: Action,
    reason: str,
    *,
    event: str,
    guild_id: str,
    ts: float,
    log: logging.Logger,
) -> bool:
    """Append the line; on failure record the error, make the run an error and stop the
    rest of it (False)."""
    record = audit_line(state.report, a, reason, event=event, guild_id=guild_id, ts=ts)
    try:
        # In a thread: the fsync must not stall the gate's streams on this loop.
        await asyncio.to_thread(state_dir.append_audit, record)
    except StateError as exc:
        state.report.errors.append(error_entry(a, f"audit log ({event}): {exc}"))
        if state.abort != AUDIT_FAILED:
            # Once per run, loudly: the operator must fix the state directory.
            log.error("reconcile: cannot write the audit log (%s); deleting nothing more", exc)
            state.report.error = f"the audit log cannot be written: {exc}"
        state.abort = AUDIT_FAILED
        return False
    return True
