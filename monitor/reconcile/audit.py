"""The audit log of deletions: one fsynced JSON line per deletion (and per dry-run
decision), written before the run moves on. No deletion without its line: when the line
cannot be written, the run stops deleting."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from monitor.errors import StateError
from monitor.reconcile.plan import Action
from monitor.reconcile.report import ReconcileReport, RunState, error_entry
from monitor.state import StateDir


def audit_line(
    report: ReconcileReport, a: Action, reason: str, *, guild_id: str, ts: float
) -> dict[str, Any]:
    """The audit record of deleting (or, dry, deciding to delete) one channel."""
    return {
        "ts": ts,
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
    guild_id: str,
    ts: float,
    log: logging.Logger,
) -> None:
    """Append the line; on failure record the error and abort the rest of the run."""
    record = audit_line(state.report, a, reason, guild_id=guild_id, ts=ts)
    try:
        # In a thread: the fsync must not stall the gate's streams on this loop.
        await asyncio.to_thread(state_dir.append_audit, record)
    except StateError as exc:
        state.report.errors.append(error_entry(a, f"audit log: {exc}"))
        state.abort = "not attempted: the audit log cannot be written"
        log.error("reconcile: %s; stopping this run", exc)
