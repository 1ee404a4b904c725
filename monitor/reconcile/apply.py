"""Carrying out a plan: for each action, ask Discord about the channel again, re-apply the
rules to the answer (`recheck`), write the intent line, delete it, write the outcome
line; at most `concurrency` channels at a time, through the shared budget-pacing REST
client. A 404 is "already gone"; a 401 or an unwritable audit log stops the rest of the
run (with the audit log unwritable, no DELETE is sent at all). A channel Discord
describes without `last_message_id` gets its newest message asked for before the
re-check judges its emptiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from monitor.clock import Clock
from monitor.errors import DiscordError, DiscordNotFound, DiscordUnauthorized
from monitor.ledger import LedgerView
from monitor.metrics import Metrics
from monitor.reconcile.audit import AUDIT_FAILED, write_audit
from monitor.reconcile.census import ChannelsAPI
from monitor.reconcile.plan import Action, Plan, Skip, recheck
from monitor.reconcile.report import RunState, error_entry
from monitor.reconcile.rules import Inputs
from monitor.state import StateDir


@runtime_checkable
class MessagesAPI(Protocol):
    """The emptiness check's call; a client without it keeps such channels."""

    async def list_messages(self, channel_id: int | str, limit: int = 50) -> Any: ...


@dataclass(frozen=True)
class Applier:
    """What carrying out a plan needs; `inputs` returns the current settings and activity
    (the re-check applies the rules as configured, and to what is in flight, at that
    moment)."""

    guild_id: int
    rest: ChannelsAPI
    ledger: LedgerView | None  # live: a request may have (re)opened since the plan
    inputs: Callable[[], Inputs]
    state_dir: StateDir
    metrics: Metrics
    clock: Clock
    log: logging.Logger
    concurrency: int

    async def dry_run(self, state: RunState, p: Plan) -> None:
        """Delete nothing; audit each decision."""
        for a in p.actions:
            await self.audit(state, a, a.reason, "dry_run")
            if state.abort:
                break

    async def delete_all(self, state: RunState, p: Plan) -> None:
        """Delete the plan's channels, at most `concurrency` at a time."""
        report = state.report
        sem = asyncio.Semaphore(max(1, self.concurrency))

        async def one(a: Action) -> None:
            async with sem:
                if state.abort:
                    report.skipped.append(Skip(str(a.channel_id), a.name, state.abort).as_dict())
                    return
                await self._delete_one(state, p, a)

        results = await asyncio.gather(*(one(a) for a in p.actions), return_exceptions=True)
        for a, res in zip(p.actions, results, strict=True):
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                # A bug, not a Discord answer: keep going with the others, but say it loudly.
                self.log.error("reconcile: deleting %s failed", a.channel_id, exc_info=res)
                report.errors.append(error_entry(a, f"internal error: {res!r}"))

    async def _delete_one(self, state: RunState, p: Plan, a: Action) -> None:
        report = state.report
        try:
            fresh = await self.rest.get_channel(a.channel_id)
        except DiscordError as exc:
            _discord_failed(state, a, "re-check", exc)
            return
        messages = None
        if isinstance(fresh, Mapping) and "last_message_id" not in fresh:
            try:
                messages = await self._newest_message(a)
            except DiscordError as exc:
                _discord_failed(state, a, "emptiness check", exc)
                return
        inputs = self.inputs()
        reason, why = recheck(
            a,
            fresh,
            self.ledger,
            inputs.settings,
            self.clock.time(),
            min_age=p.min_age,
            guild_id=self.guild_id,
            messages=messages,
            cdp=inputs.cdp,
            activity=inputs.activity,
        )
        if reason is None:
            report.skipped.append(Skip(str(a.channel_id), a.name, f"re-check: {why}").as_dict())
            self.log.info("reconcile: kept %s (%s): %s", a.channel_id, a.name, why)
            return
        if state.abort:
            report.skipped.append(Skip(str(a.channel_id), a.name, state.abort).as_dict())
            return
        # Shielded so a cancelled run never deletes without writing the audit line.
        await asyncio.shield(self._delete_and_audit(state, a, reason))

    async def _newest_message(self, a: Action) -> Any:
        """GET /channels/{id}/messages?limit=1, or None when the client cannot ask."""
        if not isinstance(self.rest, MessagesAPI):
            return None
        return await self.rest.list_messages(a.channel_id, limit=1)

    async def _delete_and_audit(self, state: RunState, a: Action, reason: str) -> None:
        # The intent line is on disk before the DELETE leaves: a crash between the two
        # still leaves a trace of every deletion.
        if not await self.audit(state, a, reason, "intent"):
            state.report.skipped.append(Skip(str(a.channel_id), a.name, AUDIT_FAILED).as_dict())
            return
        try:
            await self.rest.delete_channel(a.channel_id)
        except DiscordError as exc:
            _discord_failed(state, a, "delete", exc)
            gone = isinstance(exc, DiscordNotFound)
            await self.audit(state, a, reason, "gone" if gone else "failed")
            return
        state.report.deleted.append({"id": str(a.channel_id), "name": a.name, "reason": reason})
        self.metrics.channels_deleted.labels(guild=str(self.guild_id), reason=reason).inc()
        self.log.info("reconcile: deleted %s (%s): %s", a.channel_id, a.name, reason)
        await self.audit(state, a, reason, "deleted")

    async def audit(self, state: RunState, a: Action, reason: str, event: str) -> bool:
        return await write_audit(
            self.state_dir,
            state,
            a,
            reason,
            event=event,
            guild_id=str(self.guild_id),
            ts=self.clock.time(),
            log=self.log,
        )


def _discord_failed(state: RunState, a: Action, step: str, exc: DiscordError) -> None:
    """404 means already gone (not an error); a 401 stops the rest of the run."""
    if isinstance(exc, DiscordNotFound):
        state.report.gone.append({"id": str(a.channel_id), "name": a.name})
        return
    state.report.errors.append(error_entry(a, f"{step}: {exc}"))
    if isinstance(exc, DiscordUnauthorized):
        state.abort = "not attempted: Discord rejected the token"
