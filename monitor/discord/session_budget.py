"""The session's pure decisions: may it IDENTIFY now (the budget), how long to wait for
`max_concurrency` spacing, and the reconnect backoff. Everything takes `now`.

IDENTIFY spends one of the bot's daily session starts (1000, shared with CDP, whose
every start IDENTIFYs); running out gets the token reset. So the daemon IDENTIFYs only
while Discord's `session_start_limit.remaining` stays at or above a reserve left for
CDP, and at most `max_identifies_per_day` times in any rolling 24 h of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitor.discord.session_proto import IDENTIFY_WINDOW

DAY = 86_400.0
# Without a known `remaining` (GET /gateway/bot failed) ask again after at most this long.
UNKNOWN_RETRY = 60.0


@dataclass(frozen=True, slots=True)
class StartLimit:
    """GET /gateway/bot's `session_start_limit`, and when it was read."""

    remaining: int
    total: int
    reset_after: float  # seconds from `at`
    max_concurrency: int
    at: float

    @classmethod
    def from_gateway_bot(cls, body: object, at: float) -> StartLimit | None:
        if not isinstance(body, dict) or not isinstance(body.get("session_start_limit"), dict):
            return None
        limit = body["session_start_limit"]
        try:
            return cls(
                remaining=int(limit["remaining"]),
                total=int(limit.get("total", 1000)),
                reset_after=float(limit.get("reset_after", 0)) / 1000.0,
                max_concurrency=max(1, int(limit.get("max_concurrency", 1))),
                at=at,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """`allowed`, or `reason` ("reserve", "daily_max", "unknown") and when to ask again."""

    allowed: bool
    reason: str | None = None
    detail: str = ""
    retry_at: float | None = None


def identifies_within_day(identifies: Iterable[float], now: float) -> list[float]:
    """The IDENTIFY times of the last rolling 24 h, oldest first."""
    return sorted(t for t in identifies if now - DAY < t <= now)


def identify_decision(
    now: float,
    *,
    limit: StartLimit | None,
    reserve: int,
    identifies: Sequence[float],
    max_per_day: int,
    unknown_retry: float = UNKNOWN_RETRY,
) -> BudgetDecision:
    """May the daemon IDENTIFY at `now`? `identifies`: its own IDENTIFY times;
    `unknown_retry`: when to ask again after GET /gateway/bot failed."""
    recent = identifies_within_day(identifies, now)
    if len(recent) >= max_per_day:
        return BudgetDecision(
            False,
            "daily_max",
            f"{len(recent)} IDENTIFYs in the last 24 h (max_identifies_per_day {max_per_day})",
            recent[len(recent) - max_per_day] + DAY,
        )
    if limit is None:
        return BudgetDecision(
            False,
            "unknown",
            "session starts left unknown (GET /gateway/bot failed)",
            now + unknown_retry,
        )
    if limit.remaining < reserve:
        return BudgetDecision(
            False,
            "reserve",
            f"session_start_limit.remaining {limit.remaining} is below identify_reserve {reserve}",
            limit.at + max(limit.reset_after, UNKNOWN_RETRY),
        )
    return BudgetDecision(True)


def identify_wait(now: float, identifies: Sequence[float], max_concurrency: int) -> float:
    """Seconds to wait so that at most `max_concurrency` IDENTIFYs fall in any 5 s."""
    recent = sorted(t for t in identifies if now - IDENTIFY_WINDOW < t <= now)
    if len(recent) < max(1, max_concurrency):
        return 0.0
    return recent[len(recent) - max(1, max_concurrency)] + IDENTIFY_WINDOW - now


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float) -> float:
    """Delay before reconnect attempt number `failures` (0: the first, immediate).
    Exponential, capped, with `jitter` in [0, 1) spreading it over its upper half."""
    if failures <= 0:
        return 0.0
    raw = min(cap, base * 2.0 ** (failures - 1))
    return raw * (0.5 + 0.5 * jitter)
