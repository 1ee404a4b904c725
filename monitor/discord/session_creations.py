"""Channel creations in the guild over the last rolling 24 h, against the daily cap.

Bots are reported to be capped at about 500 channel creations per guild per day
(`discord.daily_create_limit`). Creations are learnt from CHANNEL_CREATE events and,
after a gap in the events, from the snowflake ids of listed channels (a channel created
and deleted inside the gap is missed then). Keyed by channel id, so an event and a
listing never count one channel twice. Pure apart from the injected `save`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

from monitor.discord.snowflake import parse_snowflake, snowflake_time

DAY = 86_400.0
# The "current rate" behind the time-to-cap forecast: creations of the last hour.
RATE_WINDOW = 3600.0


class CreationWindow:
    """Creation times by channel id, pruned to 24 h; `save` persists a change."""

    def __init__(
        self,
        initial: Mapping[str, float] | None = None,
        *,
        save: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self._at: dict[int, float] = {}
        for key, at in (initial or {}).items():
            cid = parse_snowflake(key)
            if cid is not None:
                self._at[cid] = float(at)
        self._save = save

    def add(self, channel_id: int, now: float) -> bool:
        """Count channel `channel_id` (its creation time from the id); False if known or
        older than 24 h."""
        at = snowflake_time(channel_id)
        if channel_id in self._at or at <= now - DAY:
            return False
        self._at[channel_id] = at
        self._persist(now)
        return True

    def add_listed(self, ids: Iterable[int], now: float) -> int:
        """Count every listed channel created within the last 24 h; returns how many
        were new."""
        added = 0
        for cid in ids:
            at = snowflake_time(cid)
            if cid not in self._at and at > now - DAY:
                self._at[cid] = at
                added += 1
        if added:
            self._persist(now)
        return added

    def count(self, now: float) -> int:
        return sum(1 for at in self._at.values() if now - DAY < at <= now + 60)

    def rate(self, now: float) -> float:
        """Creations per second over the last hour."""
        return sum(1 for at in self._at.values() if now - RATE_WINDOW < at) / RATE_WINDOW

    def seconds_to_cap(self, now: float, limit: int) -> float:
        """Seconds until `limit` creations in 24 h at the current rate: 0 at or past it,
        +Inf when not creating or when the cap is off (0)."""
        if limit <= 0:
            return math.inf
        left = limit - self.count(now)
        if left <= 0:
            return 0.0
        rate = self.rate(now)
        return math.inf if rate <= 0 else left / rate

    def as_json(self, now: float) -> dict[str, float]:
        return {str(cid): at for cid, at in self._at.items() if at > now - DAY}

    def _persist(self, now: float) -> None:
        self._at = {cid: at for cid, at in self._at.items() if at > now - DAY}
        if self._save is not None:
            self._save(self.as_json(now))
