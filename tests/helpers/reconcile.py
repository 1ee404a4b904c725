"""Shared by the reconciler tests: a fixed `now`, settings, and listing entries with
snowflakes of a chosen age."""

from __future__ import annotations

import itertools
from typing import Any

from monitor.config import ReconcileConfig
from monitor.discord.snowflake import make_snowflake
from monitor.reconcile import Plan

NOW = 1_700_000_000.0
GUILD = 1_100_000_000_000_000_001
MIN = 60.0
HOUR = 3600.0


def cfg(**kw: Any) -> ReconcileConfig:
    return ReconcileConfig(**kw)


_seq = itertools.count(1)


def sf(age: float, now: float = NOW) -> int:
    """A snowflake created `age` seconds before `now` (unique per call)."""
    return make_snowflake(now - age, increment=next(_seq) & 0xFFF)


def chan(
    age: float,
    name: str = "",
    *,
    type_: int = 0,
    last_msg_age: float | None = None,
    cid: int | None = None,
) -> dict[str, Any]:
    cid = cid if cid is not None else sf(age)
    out: dict[str, Any] = {
        "id": str(cid),
        "type": type_,
        "guild_id": str(GUILD),
        "name": name or f"cdp-chat-{cid:x}",
        "parent_id": None,
        "position": 0,
    }
    if type_ in (0, 5):
        out["last_message_id"] = None if last_msg_age is None else str(sf(last_msg_age))
    return out


def ids(actions: Any) -> list[str]:
    return [str(a.channel_id) for a in actions]


def why_of(p: Plan, cid: str) -> str:
    return next(s.why for s in p.skipped if s.channel_id == cid)
