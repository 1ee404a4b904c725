"""The plan (pure): a guild listing + the request ledger + settings + `now` → what to delete.

`plan` gives the channels to delete (oldest first, capped), each with its reason, every
other temporary channel with why it is kept, and the census. `recheck` judges one channel
again from what Discord answers just before its deletion. A wrong deletion is the worst
bug this product can have, so the rules are narrow and anything unexpected in the listing
is skipped.

The rules (DESIGN section 7b) live in rules.py: a candidate is a text channel (type 0)
whose name matches `name_pattern` (`re.match`, from the start) and whose id is not
protected; `rules.judge` decides. Kept channels with messages that no rule can judge are
`Plan.unjudged` (the first run's report of old leaks).

A listing entry without `last_message_id` (the OpenAPI marks it optional) has unknown
emptiness: the ledger judges it first as usual; otherwise the age rule makes it a
candidate (`last_listed=False`) and `recheck` deletes it only once the newest message
(`GET /channels/{id}/messages?limit=1`, passed as `messages`) shows it empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from monitor.config import CdpConfig, ReconcileConfig
from monitor.discord.snowflake import parse_snowflake, snowflake_time
from monitor.ledger import EMPTY_LEDGER, LedgerView
from monitor.reconcile.rules import REASONS, Activity, Inputs, Verdict, ago, judge
from monitor.vocab import TEMP_CHANNEL_STATES

TEXT_CHANNEL = 0
__all__ = ["REASONS", "Action", "Census", "Plan", "Skip", "ago", "plan", "recheck"]


@dataclass(frozen=True, slots=True)
class Action:
    """One planned deletion, with what the listing said (the re-check compares)."""

    channel_id: int
    name: str
    reason: str
    created_at: float
    last_message_id: int | None
    request_id: str | None = None  # from the ledger, when it decided
    last_listed: bool = True  # False: the listing omitted last_message_id (emptiness unknown)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(self.channel_id),
            "name": self.name,
            "reason": self.reason,
            "created_at": self.created_at,
        }
        if not self.last_listed:
            out["emptiness"] = "checked just before deleting"
        return out


@dataclass(frozen=True, slots=True)
class Skip:
    """A channel left alone (or a listing entry that could not be understood), and why."""

    channel_id: str | None
    name: str | None
    why: str
    unjudged: bool = False  # has messages and no rule can judge it (old leak, or kept)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.channel_id, "name": self.name, "why": self.why}
        if self.unjudged:
            out["unjudged"] = True
        return out


@dataclass(frozen=True, slots=True)
class Census:
    """How full the guild is and what its temporary channels are doing."""

    at: float
    channels: int  # every listed channel: categories and voice count toward the limit
    limit: int
    high_watermark: float
    active: int = 0  # open ledger request, or recent activity
    empty: int = 0  # no message yet, too young to delete
    stale: int = 0  # messages, but none for long (deleted only with stale_after)
    leaked: int = 0  # the rules would delete it (cap aside)

    @property
    def usage(self) -> float:
        return self.channels / self.limit if self.limit > 0 else 0.0

    @property
    def above_watermark(self) -> bool:
        return above_watermark(self.channels, self.limit, self.high_watermark)

    def temp(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in TEMP_CHANNEL_STATES}

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "channels": self.channels,
            "limit": self.limit,
            "usage": round(self.usage, 4),
            "above_watermark": self.above_watermark,
            "temp": self.temp(),
        }


@dataclass(frozen=True)
class Plan:
    now: float
    emergency: bool  # above the high watermark: emergency_min_age applies
    min_age: float  # the min_age applied to empty channels
    actions: tuple[Action, ...]
    skipped: tuple[Skip, ...]
    deferred: int  # deletable, but past max_deletes_per_run (next run)
    not_matching: int  # listed channels whose name does not match (not listed in skipped)
    census: Census

    @property
    def unjudged(self) -> tuple[Skip, ...]:
        """Kept channels with messages that no rule can judge (`--adopt-older-than`)."""
        return tuple(s for s in self.skipped if s.unjudged)


def above_watermark(channels: int, limit: int, high_watermark: float) -> bool:
    return limit > 0 and channels >= high_watermark * limit


# -- one listing entry ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """A listing entry understood well enough to judge."""

    id: int
    name: str
    type: int
    raw: Mapping[str, Any]


def _parse(raw: Any, guild_id: int | None) -> _Facts | Skip:
    if not isinstance(raw, Mapping):
        return Skip(None, None, f"listing entry is not an object ({type(raw).__name__})")
    cid = parse_snowflake(raw.get("id"))
    if cid is None:
        shown = raw.get("id")
        return Skip(None, _str_or_none(raw.get("name")), f"missing or invalid id {shown!r}")
    name = raw.get("name")
    if not isinstance(name, str):
        return Skip(str(cid), None, f"name is not a string ({type(name).__name__})")
    type_ = raw.get("type")
    if isinstance(type_, bool) or not isinstance(type_, int):
        return Skip(str(cid), name, f"unknown channel type {type_!r}")
    if guild_id is not None and "guild_id" in raw and parse_snowflake(raw["guild_id"]) != guild_id:
        return Skip(str(cid), name, f"belongs to another guild ({raw['guild_id']!r})")
    return _Facts(cid, name, type_, raw)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _judge(
    f: _Facts, ledger: LedgerView, inputs: Inputs, now: float, min_age: float
) -> Verdict | Skip | None:
    """None: not a temporary channel at all (name does not match)."""
    settings = inputs.settings
    if not settings.name_regex.match(f.name):
        return None
    if f.type != TEXT_CHANNEL:
        return Skip(str(f.id), f.name, f"type {f.type} is not a text channel")
    if f.id in settings.protected_channel_ids:
        return Skip(str(f.id), f.name, "protected id")
    listed = "last_message_id" in f.raw  # optional in the API: unknown when absent
    raw_last = f.raw.get("last_message_id")
    last: int | None = None
    if raw_last is not None:
        last = parse_snowflake(raw_last)
        if last is None:
            return Skip(str(f.id), f.name, f"invalid last_message_id {raw_last!r}")
    verdict = judge(f.id, f.name, last, ledger, inputs, now, min_age)
    if listed:
        return verdict
    # Judged as if empty; `recheck` deletes only once the messages show it is.
    why = verdict.why and f"{verdict.why}; last_message_id not listed"
    return replace(verdict, why=why, last_listed=False)


# -- the whole listing ----------------------------------------------------------------------


@dataclass
class _Sorted:
    """The listing sorted into what the rules would delete and what they keep."""

    deletable: list[Action] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TEMP_CHANNEL_STATES, 0))
    not_matching: int = 0


def _sort_listing(
    channels: Sequence[Any],
    ledger: LedgerView,
    inputs: Inputs,
    now: float,
    min_age: float,
    guild_id: int | None,
) -> _Sorted:
    out = _Sorted()
    seen: set[int] = set()
    for raw in channels:
        facts = _parse(raw, guild_id)
        if isinstance(facts, Skip):
            out.skipped.append(facts)
            continue
        if facts.id in seen:
            out.skipped.append(Skip(str(facts.id), facts.name, "listed twice"))
            continue
        seen.add(facts.id)
        verdict = _judge(facts, ledger, inputs, now, min_age)
        if verdict is None:
            out.not_matching += 1
        elif isinstance(verdict, Skip):
            out.skipped.append(verdict)
        else:
            out.counts[verdict.state] += 1
            if verdict.reason is None:
                out.skipped.append(Skip(str(facts.id), facts.name, verdict.why, verdict.unjudged))
            else:
                out.deletable.append(_action(facts, verdict, verdict.reason))
    return out


def _action(facts: _Facts, verdict: Verdict, reason: str) -> Action:
    return Action(
        channel_id=facts.id,
        name=facts.name,
        reason=reason,
        created_at=snowflake_time(facts.id),
        last_message_id=verdict.last_message_id,
        request_id=verdict.request_id,
        last_listed=verdict.last_listed,
    )


def plan(
    channels: Sequence[Any],
    ledger_view: LedgerView | None,
    settings: ReconcileConfig,
    now: float,
    *,
    guild_limit: int,
    guild_id: int | None = None,
    cdp: CdpConfig | None = None,
    activity: Activity | None = None,
) -> Plan:
    """Decide what to delete. Pure: the same inputs always give the same plan. `cdp`
    (default: CDP's defaults) and `activity` (default: nothing known) feed the rules."""
    ledger = EMPTY_LEDGER if ledger_view is None else ledger_view
    inputs = Inputs(settings, cdp or CdpConfig(), activity or Activity())
    total = len(channels)
    emergency = above_watermark(total, guild_limit, settings.high_watermark)
    min_age = settings.emergency_min_age if emergency else settings.min_age
    found = _sort_listing(channels, ledger, inputs, now, min_age, guild_id)
    deletable = sorted(found.deletable, key=lambda a: (a.created_at, a.channel_id))  # oldest first
    cap = settings.max_deletes_per_run
    actions, later = deletable[:cap], deletable[cap:]
    found.skipped.extend(
        Skip(str(a.channel_id), a.name, f"{a.reason}, but over max_deletes_per_run ({cap})")
        for a in later
    )
    census = Census(
        at=now,
        channels=total,
        limit=guild_limit,
        high_watermark=settings.high_watermark,
        **found.counts,
    )
    return Plan(
        now=now,
        emergency=emergency,
        min_age=min_age,
        actions=tuple(actions),
        skipped=tuple(found.skipped),
        deferred=len(later),
        not_matching=found.not_matching,
        census=census,
    )


def recheck(
    action: Action,
    fresh: Any,
    ledger_view: LedgerView | None,
    settings: ReconcileConfig,
    now: float,
    *,
    min_age: float,
    guild_id: int | None = None,
    messages: Any = None,
    cdp: CdpConfig | None = None,
    activity: Activity | None = None,
) -> tuple[str | None, str]:
    """Judge a channel again from what Discord answered just now: (reason, "") to delete
    it, else (None, why). Any change since the listing keeps it. When `fresh` has no
    `last_message_id`, `messages` (the answer of GET .../messages?limit=1) stands in for
    it; without an understood one the channel is kept."""
    facts = _parse(fresh, guild_id)
    if isinstance(facts, Skip):
        return None, f"unexpected answer: {facts.why}"
    if "last_message_id" not in facts.raw:
        newest = newest_message_id(messages)
        if isinstance(newest, str):
            return None, f"last_message_id not listed and {newest}"
        facts = replace(facts, raw={**facts.raw, "last_message_id": newest})
    if facts.id != action.channel_id:
        return None, f"Discord answered for another channel ({facts.id})"
    if facts.type != TEXT_CHANNEL:
        return None, f"type changed to {facts.type}"
    if facts.name != action.name:
        return None, f"renamed to {facts.name!r}"
    ledger = EMPTY_LEDGER if ledger_view is None else ledger_view
    inputs = Inputs(settings, cdp or CdpConfig(), activity or Activity())
    verdict = _judge(facts, ledger, inputs, now, min_age)
    if verdict is None:
        return None, "name no longer matches name_pattern"
    if isinstance(verdict, Skip):
        return None, verdict.why
    if verdict.last_message_id != action.last_message_id:
        if not action.last_listed:
            return None, "has messages (the listing did not say)"
        return None, "a message arrived since the listing"
    if verdict.reason is None:
        return None, verdict.why
    return verdict.reason, ""


def newest_message_id(messages: Any) -> int | str | None:
    """The id of the first message of a `?limit=1` listing (None: the channel is empty),
    or why the answer says nothing (a str)."""
    if messages is None:
        return "emptiness not checked"
    if not isinstance(messages, list):
        return f"messages answer is not a list ({type(messages).__name__})"
    if not messages:
        return None
    first = messages[0]
    newest = parse_snowflake(first.get("id")) if isinstance(first, Mapping) else None
    return "messages answer has no valid id" if newest is None else newest
