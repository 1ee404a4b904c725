"""Operator-facing events: the one place any component reports something a person should
hear about (a breaker trip, a pause, a guild filling up, a dead token, ...).

A component calls `events.emit(kind, **fields)`; subscribers (the notifier, the status
page's recent list) get the `Event` synchronously and must not block: the notifier only
queues it. Kinds are fixed here so messages, metrics labels and docs agree.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.clock import SYSTEM_CLOCK, Clock

# Every event kind, with who emits it. Fields each kind carries are listed in
# monitor/notify/messages.py (the message templates use them).
EVENT_KINDS = (
    "breaker_open",  # health effects: the breaker tripped (reason)
    "breaker_half_open",  # health effects: trying again (reason)
    "breaker_closed",  # health effects: recovered (reason)
    "paused",  # health effects: a manual pause (reason, until)
    "resumed",  # health effects: the pause ended (reason)
    "guild_watermark",  # status watch: census above the high watermark (channels, limit)
    # status watch: the gateway session's creations in 24 h near the daily cap
    # (creates, cap, seconds_to_cap)
    "daily_creations_near_cap",
    "token_invalid",  # status watch: Discord answered 401 (nothing else)
    "cloudflare_ban",  # status watch: Cloudflare banned this IP (seconds)
    # gate (issue 14): CDP's own errors, e.g. user tokens exhausted; status watch: the
    # CDP probe fails (detail)
    "cdp_trouble",
    # gate (issue 14): cannot reach Discord; status watch: every Discord probe fails (detail)
    "discord_unreachable",
    "reconcile_deleted",  # status watch: one run deleted >= threshold channels (deleted, run_id)
)
RECENT = 50  # events kept for the status page

Subscriber = Callable[["Event"], None]


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    at: float
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "at": self.at, **self.fields}


class Events:
    """The daemon's event bus: `emit` never raises and never waits."""

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, logger: logging.Logger | None = None):
        self._clock = clock
        self._log = logger or logging.getLogger("cdp-monitor")
        self._subscribers: list[Subscriber] = []
        self.recent: deque[Event] = deque(maxlen=RECENT)

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def emit(self, kind: str, **fields: Any) -> Event:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")  # a programming error
        event = Event(kind, self._clock.time(), fields)
        self.recent.append(event)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # one broken subscriber must not silence the others
                self._log.exception("event subscriber failed on %s", kind)
        return event
