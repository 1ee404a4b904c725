"""The deletion rules (pure): one temporary channel + what is known → delete (and why) or
keep (and why). DESIGN section 7b; plan.py applies them to a whole listing.

What is known besides the channel: the request ledger (its entry, CDP's restarts), the
`reconcile` and `cdp` settings, and `Activity` (what the gate has in flight right now,
the operator's `--adopt-older-than`). A wrong deletion is the worst bug this product can
have: every rule needs evidence that the channel's request is over, and anything the
rules cannot judge is kept (and, with messages, reported as `unjudged`).

A channel its ledger entry knows:
  open → kept, always (emergency or not);
  failed → `ledger_failed`;
  dead (CDP restarted, or its connection broke off, while it ran) → `cdp_restart` once
    `cdp.request_lifetime` (3 create attempts + the reply timeout) has passed since it
    opened; with `cdp.auto_delete: never` only while empty (CDP would keep it);
  completed → `ledger_completed` once `cdp.auto_delete + ledger_grace` has passed; with
    `cdp.auto_delete: never` it is the operator's and kept, except an empty same-named
    twin (an abandoned create attempt) older than `min_age` (`empty_aged`).
A stay-active channel (`cdp-chat-<sonyflake>`, decimal only, made by CDP's daily task) →
  `stay_active` once `cdp.request_lifetime` has passed (the task deletes its channels at
  its end, whatever CHANNEL_AUTO_DEL_TIME says).
Any other channel:
  empty → `empty_aged` once older than `min_age`; above the high watermark once older
    than `emergency_min_age`, but only with evidence its request is over: a CDP restart
    since it was created, or no channel-creating request in flight at the gate. Without
    the gate (nothing known in flight) `min_age` applies. Never while it was born after
    a create the gate still forwards without knowing its request id (CDP names it only
    when it answers): it may be that request's channel, its prompt not posted yet.
  with messages → `cdp_restart` when its name is a request's (`cdp-chat-<request id>`),
    CDP restarted since it was created and `cdp.request_lifetime` has passed (CDP's
    delete timer died with it); `stale`
    (opt-in `stale_after`); `adopted` with the operator's `--adopt-older-than`; neither
    applies with `cdp.auto_delete: never` except `adopted`. Otherwise kept, `unjudged`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from monitor.config import CdpConfig, ReconcileConfig
from monitor.discord.snowflake import snowflake_time
from monitor.ledger import LedgerEntry, LedgerView
from monitor.units import format_duration

REASONS = (
    "ledger_failed",
    "ledger_completed",
    "empty_aged",
    "stale",
    "cdp_restart",
    "stay_active",
    "adopted",
)
# CDP's daily task names channels cdp-chat-<sonyflake> (discord.go:663): a decimal id of at
# most 20 digits (a request id is 23 to 31 characters, 8 random [0-9a-zA-Z] at its end)
# whose time (sonyflake: 10 ms units above 24 bits, from 2023-01-01 UTC,
# common/snowflakeid.go) is the channel's own creation time, give or take the creation.
_STAY_ACTIVE_RE = re.compile(r"cdp-chat-(?P<id>\d{1,20})")
_SONYFLAKE_EPOCH = 1_672_531_200.0
_SONYFLAKE_SLACK = 3600.0
# Discord's clock (a snowflake's time) against ours: a channel born up to this long
# before a create was forwarded may still be that create's.
_CLOCK_SLACK = 2.0
# A request's channel as CDP names it (lowercased): 14 digits of time, 1-9 of nanoseconds,
# 8 random; a channel named otherwise (POST /api/channel/create) has no CDP timer to lose.
_REQUEST_CHANNEL_RE = re.compile(r"cdp-chat-\d{15,23}[0-9a-z]{8}")


@dataclass(frozen=True, slots=True)
class Activity:
    """What is known right now beyond the listing and the ledger."""

    # Channel-creating requests the gate is forwarding (None: unknown, no gate). A
    # request's channel is protected by the ledger only once CDP's first byte arrives.
    inflight_creates: int | None = None
    # When the oldest create the gate is forwarding without a known request id was
    # forwarded (wall clock; None: none, or no gate).
    unnamed_creates_since: float | None = None
    # The operator's `reconcile --adopt-older-than`: channels with messages that no rule
    # judges, older than this (and idle as long), are deleted as `adopted`.
    adopt_older_than: float | None = None


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the rules read besides the channel and the ledger."""

    settings: ReconcileConfig
    cdp: CdpConfig
    activity: Activity = Activity()


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: str | None  # a delete reason, or None: keep it
    why: str  # why it is kept ("" when deleted)
    state: str  # census state: active, empty, stale, leaked
    last_message_id: int | None = None
    request_id: str | None = None
    last_listed: bool = True
    unjudged: bool = False  # kept with messages, no rule could judge it


def ago(seconds: float) -> str:
    """A duration for a human ("9m"), never negative."""
    return format_duration(max(0.0, round(seconds, 3)))


def is_request_channel(name: str) -> bool:
    return _REQUEST_CHANNEL_RE.fullmatch(name.lower()) is not None


def stay_active_since(name: str, created: float) -> float | None:
    """When CDP's daily task made this channel's id, if the name is one of its channels
    created (`created`, the channel's snowflake time) around then; else None."""
    m = _STAY_ACTIVE_RE.fullmatch(name)
    if m is None:
        return None
    made = _SONYFLAKE_EPOCH + (int(m["id"]) >> 24) / 100.0
    return made if abs(created - made) <= _SONYFLAKE_SLACK else None


def judge(
    channel_id: int,
    name: str,
    last: int | None,
    ledger: LedgerView,
    inputs: Inputs,
    now: float,
    min_age: float,
) -> Verdict:
    """The verdict on one temporary channel (name matched, text, not protected).
    `min_age` is the one in force (`emergency_min_age` above the high watermark)."""
    created = snowflake_time(channel_id)
    entry = ledger.lookup_channel_name(name)
    if entry is not None:
        return _by_ledger(entry, last, inputs, now, now - created)
    task = stay_active_since(name, created)
    if task is not None:
        return _stay_active(last, inputs, now - task)
    restarted = any(t > created for t in ledger.restarts)
    if last is None:
        return _empty(inputs, now, created, min_age, restarted)
    return _with_messages(name, last, inputs, now, now - created, restarted)


def _by_ledger(
    entry: LedgerEntry, last: int | None, inputs: Inputs, now: float, age: float
) -> Verdict:
    # The ledger knows this request: it outranks the age rules.
    rid, s, cdp = entry.request_id, inputs.settings, inputs.cdp
    if entry.state == "open":
        return Verdict(None, f"request {rid} is still open", "active", last, rid)
    if entry.state == "failed":
        return Verdict("ledger_failed", "", "leaked", last, rid)
    if entry.state == "dead":
        left = entry.opened_at + cdp.request_lifetime - now
        if cdp.auto_delete is None and last is not None:
            why = f"request {rid} died with CDP; CDP never deletes (cdp.auto_delete: never)"
            return Verdict(None, why, "active", last, rid)
        if left < 0:
            return Verdict("cdp_restart", "", "leaked", last, rid)
        why = f"request {rid} died with CDP; its time runs out in {ago(left)}"
        return Verdict(None, why, "active", last, rid)
    finished = entry.last_change
    if cdp.auto_delete is None:
        if last is None and age > s.min_age:
            return Verdict("empty_aged", "", "leaked", last, rid)  # an abandoned attempt's twin
        why = f"request {rid} completed; CDP never deletes (cdp.auto_delete: never)"
        return Verdict(None, why, "active", last, rid)
    if now - finished > cdp.auto_delete + s.ledger_grace:
        return Verdict("ledger_completed", "", "leaked", last, rid)
    why = f"request {rid} completed {ago(now - finished)} ago; CDP deletes it itself"
    return Verdict(None, why, "active", last, rid)


def _stay_active(last: int | None, inputs: Inputs, task_age: float) -> Verdict:
    left = inputs.cdp.request_lifetime - task_age
    if left < 0:
        return Verdict("stay_active", "", "leaked", last)
    why = f"CDP's daily stay-active channel; its task may run {ago(left)} more"
    return Verdict(None, why, "active", last)


def _empty(inputs: Inputs, now: float, created: float, min_age: float, restarted: bool) -> Verdict:
    s, age = inputs.settings, now - created
    if age <= min_age:
        return Verdict(None, f"empty, only {ago(age)} old (min_age {ago(min_age)})", "empty")
    # Above the watermark: older than emergency_min_age but not min_age. CDP's prompt
    # post has no timeout, so age alone does not say the request is over.
    inflight = inputs.activity.inflight_creates
    if not (age > s.min_age or restarted or inflight == 0):
        known = "nothing known in flight (no gate)" if inflight is None else f"{inflight} in flight"
        why = f"empty, {ago(age)} old; its request may be live ({known}), min_age {ago(s.min_age)}"
        return Verdict(None, why, "empty")
    since = inputs.activity.unnamed_creates_since
    if since is not None and created >= since - _CLOCK_SLACK:
        why = (
            f"empty, {ago(age)} old; born after a create the gate forwarded {ago(now - since)} "
            "ago and still awaits CDP's answer to (its request id unknown): may be its channel"
        )
        return Verdict(None, why, "empty")
    return Verdict("empty_aged", "", "leaked")


def _with_messages(
    name: str, last: int, inputs: Inputs, now: float, age: float, restarted: bool
) -> Verdict:
    s, cdp, adopt = inputs.settings, inputs.cdp, inputs.activity.adopt_older_than
    idle = now - snowflake_time(last)
    keeps = cdp.auto_delete is None  # CDP never deletes: a completed conversation is kept
    named = is_request_channel(name)  # not a client's name from /api/channel/create
    if not keeps and named and restarted and age > cdp.request_lifetime:
        return Verdict("cdp_restart", "", "leaked", last)
    # stale also needs min_age: a stale_after shorter than min_age must not delete young
    # channels (the backlog lands late, and CDP may still be posting into it).
    if not keeps and s.stale_after is not None and idle > s.stale_after and age > s.min_age:
        return Verdict("stale", "", "leaked", last)
    if adopt is not None and idle > adopt and age > adopt and age > cdp.request_lifetime:
        return Verdict("adopted", "", "leaked", last)
    threshold = s.stale_after if s.stale_after is not None else s.min_age
    state = "stale" if idle > threshold else "active"
    why = f"has messages (last {ago(idle)} ago)"
    if keeps:
        why += "; CDP never deletes (cdp.auto_delete: never)"
    return Verdict(None, why, state, last, unjudged=True)
