"""The guild's listing and census: the one listing request (cached briefly, its last
attempt remembered for pacing), the census history behind the exhaustion forecast, and
the guild gauges. The pacing intervals themselves come from the reconciler's current
settings on every call, so a reload applies at once.

With the gateway session's live state attached, the census is taken from it while it
is current; a REST listing runs only when the live state asks for one (at start, after
a gap in the events, at its slow re-sync) and is handed back to it."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace
from typing import Any, Protocol

from monitor.clock import Clock
from monitor.errors import DiscordMalformedResponse
from monitor.metrics import Metrics
from monitor.reconcile.plan import Census
from monitor.reconcile.triggers import GROWTH_POINTS, forecast


class ChannelsAPI(Protocol):
    """The REST calls the reconciler makes (DiscordRestClient provides them)."""

    async def list_guild_channels(self, guild_id: int | str) -> Any: ...

    async def get_channel(self, channel_id: int | str) -> Any: ...

    async def delete_channel(self, channel_id: int | str) -> Any: ...


class LiveChannels(Protocol):
    """The gateway session's live channels (monitor.discord.session_live.LiveGuild)."""

    def needs_listing(self, now: float) -> bool: ...

    def channels(self) -> list[dict[str, Any]]: ...

    def snapshot_loaded(self, channels: list[Any], now: float, source: Any) -> None: ...

    def publish(self, now: float) -> None: ...

    def status(self, now: float) -> dict[str, Any]: ...


class GuildCensus:
    """One guild's listing, census and forecast (wall-clock times from `clock`)."""

    def __init__(
        self,
        *,
        guild_id: int,
        channel_limit: int,
        rest: ChannelsAPI,
        metrics: Metrics,
        clock: Clock,
        live: LiveChannels | None = None,
    ) -> None:
        self._guild_id = guild_id
        self.live = live
        self.source = "rest"  # where the last listing came from
        self._guild = str(guild_id)
        self._rest = rest
        self._metrics = metrics
        self._clock = clock
        self._limit = channel_limit
        self.last: Census | None = None
        self._history: deque[tuple[float, int]] = deque(maxlen=GROWTH_POINTS)
        self.last_attempt = -math.inf  # when a listing was last asked for
        self.last_failed = False
        self._listing: tuple[float, list[Any]] | None = None  # (when, channels)
        metrics.guild_channel_limit.labels(guild=self._guild).set(channel_limit)

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value
        self._metrics.guild_channel_limit.labels(guild=self._guild).set(value)

    async def fetch(self) -> list[Any]:
        """List the guild (one request, unless the live state is current); the answer is
        kept for `recent_listing`."""
        now = self._clock.time()
        if self.live is not None and not self.live.needs_listing(now):
            channels: list[Any] = self.live.channels()
            self.live.publish(now)
            self.source, self.last_failed = "gateway", False
            self._listing = (now, channels)
            return channels
        self.last_attempt = now
        self.last_failed = True
        channels = await self._rest.list_guild_channels(self._guild_id)
        if not isinstance(channels, list):
            raise DiscordMalformedResponse(
                f"listing: expected a list, got {type(channels).__name__}",
                route="/guilds/{guild_id}/channels",
                method="GET",
            )
        self.last_failed = False
        self.source = "rest"
        self._listing = (self._clock.time(), channels)
        if self.live is not None:
            self.live.snapshot_loaded(channels, self._clock.time(), "rest")
        return channels

    def recent_listing(self, now: float, reuse: float) -> list[Any] | None:
        """The last listing, if it is younger than `reuse` seconds."""
        if self._listing is not None and now - self._listing[0] < reuse:
            return self._listing[1]
        return None

    def tried_within(self, now: float, spacing: float) -> bool:
        """A listing was asked for less than `spacing` seconds ago."""
        return now - self.last_attempt < spacing

    def older_than(self, now: float, max_age: float) -> bool:
        """No census yet, or the last one is at least `max_age` old."""
        return self.last is None or now - self.last.at >= max_age

    def record(self, census: Census) -> None:
        self.last = census
        self._history.append((census.at, census.channels))
        g = self._guild
        self._metrics.guild_channels.labels(guild=g).set(census.channels)
        self._metrics.guild_channel_limit.labels(guild=g).set(census.limit)
        for state, n in census.temp().items():
            self._metrics.temp_channels.labels(guild=g, state=state).set(n)
        self._metrics.guild_channel_exhaustion.labels(guild=g).set(self.exhaustion(census.at))

    def exhaustion(self, now: float) -> float:
        return forecast(self._history, self._limit, now)

    def after_run(self, removed: int, now: float) -> None:
        """A run ended having removed `removed` channels: forget the listing if it predates
        deletions (one that removed nothing, a dry run, leaves it valid for the next
        run's `recent_listing`: a burst of requests is one listing) and adjust the census
        without listing again."""
        if removed:
            self._listing = None
        if removed and self.last is not None:
            c = self.last
            self.record(
                replace(
                    c,
                    at=max(now, c.at),
                    channels=max(0, c.channels - removed),
                    leaked=max(0, c.leaked - removed),
                )
            )

    def as_dict(self, now: float) -> dict[str, Any] | None:
        """The census for /status, with the forecast (null when not growing)."""
        if self.last is None:
            return None
        out = self.last.as_dict()
        seconds = self.exhaustion(now)
        out["exhaustion_seconds"] = seconds if math.isfinite(seconds) else None
        out["source"] = self.source
        out["age_seconds"] = max(0.0, now - self.last.at)
        if self.live is not None:
            out["live"] = self.live.status(now)
        return out
