"""The guild as the gateway session sees it: every channel (as REST would list it, kept
current by CHANNEL_CREATE/UPDATE/DELETE and MESSAGE_CREATE), the daily creations, and
the subscription API the gate and the reconciler use (channel created / deleted /
message in a channel).

Where the numbers come from: a full snapshot (a REST listing, or GUILD_CREATE after an
IDENTIFY) makes the state "synced"; while the session stays up (or RESUMEs, which
replays what was missed) every event keeps it current. A session gap makes it stale
until the next snapshot; `needs_listing` says when a REST listing is due.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from monitor.discord.session_creations import CreationWindow
from monitor.discord.snowflake import parse_snowflake, snowflake_time
from monitor.metrics import Metrics
from monitor.vocab import CHANNEL_PREFIXES

EventKind = Literal["created", "deleted", "message"]
Source = Literal["gateway", "rest"]


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """One change seen on the session, as handed to subscribers."""

    kind: EventKind
    channel_id: int
    name: str | None
    at: float  # wall clock when the daemon saw it


Subscriber = Callable[[ChannelEvent], None]


class LiveGuild:
    """See the module docstring. `resync_interval`: a REST listing at least this often,
    even while the session is current."""

    def __init__(
        self,
        guild_id: int,
        *,
        creations: CreationWindow,
        metrics: Metrics,
        daily_create_limit: int,
        resync_interval: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self.guild_id = guild_id
        self._guild = str(guild_id)
        self.creations = creations
        self._metrics = metrics
        self.daily_create_limit = daily_create_limit
        self.resync_interval = resync_interval
        self._log = logger or logging.getLogger(__name__)
        self._channels: dict[int, dict[str, Any]] = {}
        self._subscribers: list[Subscriber] = []
        self.synced_at: float | None = None  # last full snapshot
        self.synced_from: Source | None = None
        self.rest_synced_at: float | None = None
        self.last_event_at: float | None = None
        self.current = False  # events since the snapshot are complete
        self._session_up = False  # the guild's events are flowing
        self._guild_seen = False  # this session has had GUILD_CREATE for the guild
        self._listing_due = True  # a REST listing since the last gap is still to come

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` for every channel created, deleted or spoken in; returns the
        function that unsubscribes. A failing subscriber is logged, never propagated."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, event: ChannelEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                self._log.exception("channel event subscriber failed")

    # -- the session's side -----------------------------------------------------------

    def snapshot_loaded(self, channels: Iterable[Any], now: float, source: Source) -> None:
        """A full channel list (REST listing or GUILD_CREATE) replaces what is known."""
        fresh: dict[int, dict[str, Any]] = {}
        for raw in channels:
            cid = parse_snowflake(raw.get("id")) if isinstance(raw, dict) else None
            if cid is not None:
                fresh[cid] = {**raw, "guild_id": raw.get("guild_id", self._guild)}
        self._channels = fresh
        self.synced_at, self.synced_from = now, source
        if source == "rest":
            self.rest_synced_at = now
            self._listing_due = False
        # Complete from here on only while events flow (a listing during a gap is not).
        self.current = self._session_up
        self.creations.add_listed(fresh, now)
        self.publish(now)

    def session_up(self, *, resumed: bool) -> None:
        """The session is (again) ready. After a RESUME the missed events are replayed,
        so the guild's events flow on if they flowed before; after an IDENTIFY they flow
        only once GUILD_CREATE has brought the guild (an unavailable guild sends none)."""
        if not resumed:  # a new session: what happened since the old one is unknown
            self._guild_seen = False
            self._listing_due = True
        self._session_up = self._guild_seen
        if self._session_up and self.synced_at is not None:
            self.current = True

    def session_down(self) -> None:
        """A gap: events may be missed until a RESUME replays them or a snapshot."""
        self._session_up = False
        self.current = False

    def dispatch(self, event: str, data: Any, now: float) -> None:
        """Apply one dispatch event (others are ignored)."""
        if not isinstance(data, dict):
            return
        self.last_event_at = now
        if event == "GUILD_CREATE":
            if parse_snowflake(data.get("id")) == self.guild_id and not data.get("unavailable"):
                self._guild_seen = self._session_up = True
                self.snapshot_loaded(data.get("channels") or [], now, "gateway")
            return
        if parse_snowflake(data.get("guild_id")) != self.guild_id:
            return
        if event in ("CHANNEL_CREATE", "CHANNEL_UPDATE"):
            self._channel(event, data, now)
        elif event == "CHANNEL_DELETE":
            cid = parse_snowflake(data.get("id"))
            if cid is not None and self._channels.pop(cid, None) is not None:
                self.publish(now)
                self._emit(ChannelEvent("deleted", cid, data.get("name"), now))
        elif event == "MESSAGE_CREATE":
            cid, mid = parse_snowflake(data.get("channel_id")), parse_snowflake(data.get("id"))
            if cid is not None and mid is not None and cid in self._channels:
                self._channels[cid]["last_message_id"] = str(mid)
                self._emit(ChannelEvent("message", cid, self._channels[cid].get("name"), now))

    def _channel(self, event: str, data: dict[str, Any], now: float) -> None:
        cid = parse_snowflake(data.get("id"))
        if cid is None:
            return
        known = cid in self._channels
        fresh = {"last_message_id": None} if event == "CHANNEL_CREATE" else {}
        self._channels[cid] = {**fresh, **self._channels.get(cid, {}), **data}
        if event == "CHANNEL_CREATE":
            self.creations.add(cid, now)
        self.publish(now)
        if event == "CHANNEL_CREATE" and not known:
            name = data.get("name")
            if isinstance(name, str) and name.startswith(CHANNEL_PREFIXES):
                self._log.debug("temporary channel %s (%s) created", name, cid)
            self._emit(ChannelEvent("created", cid, name if isinstance(name, str) else None, now))

    # -- readers ----------------------------------------------------------------------

    def needs_listing(self, now: float) -> bool:
        """A REST listing is due: never synced, events not flowing, a new session since
        the last listing (a gap RESUME did not replay), or the slow re-sync."""
        if not self.current or self.synced_at is None or self._listing_due:
            return True
        last_rest = self.rest_synced_at
        return last_rest is None or now - last_rest >= self.resync_interval

    def channels(self) -> list[dict[str, Any]]:
        """Every known channel, shaped like a REST listing's items."""
        return [dict(raw) for raw in self._channels.values()]

    def temp_channels(self) -> list[dict[str, Any]]:
        """Each temporary channel's id, name, creation and last message time."""
        out = []
        for cid, raw in self._channels.items():
            name = raw.get("name")
            if isinstance(name, str) and name.startswith(CHANNEL_PREFIXES):
                last = parse_snowflake(raw.get("last_message_id"))
                out.append(
                    {
                        "id": str(cid),
                        "name": name,
                        "created_at": snowflake_time(cid),
                        "last_message_at": None if last is None else snowflake_time(last),
                    }
                )
        return out

    def publish(self, now: float) -> None:
        """Set the guild gauges from the live state (also called on a timer: the 24 h
        window slides without events)."""
        g = self._guild
        if self.synced_at is not None:
            self._metrics.guild_channels.labels(guild=g).set(len(self._channels))
        self._metrics.guild_channel_creates_24h.labels(guild=g).set(self.creations.count(now))
        self._metrics.guild_channel_create_limit_daily.labels(guild=g).set(self.daily_create_limit)
        self._metrics.guild_channel_create_cap_seconds.labels(guild=g).set(
            self.creations.seconds_to_cap(now, self.daily_create_limit)
        )

    def status(self, now: float) -> dict[str, Any]:
        """The live part of /status `channels`: counts, where they came from, how fresh."""
        cap = self.creations.seconds_to_cap(now, self.daily_create_limit)
        return {
            "count": len(self._channels) if self.synced_at is not None else None,
            "temporary": len(self.temp_channels()),
            "source": "gateway" if self.current else (self.synced_from or "none"),
            "current": self.current,
            "synced_at": self.synced_at,
            "synced_from": self.synced_from,
            "rest_synced_at": self.rest_synced_at,
            "last_event_at": self.last_event_at,
            "creates_24h": self.creations.count(now),
            "create_limit_daily": self.daily_create_limit,
            "seconds_to_create_cap": cap if math.isfinite(cap) else None,
        }
