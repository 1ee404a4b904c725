"""Creation slots (DESIGN section 7): a create slot covers CDP's creation of the
request's channel, not the conversation that follows. A slot is freed by whichever comes
first:

- the request's channel exists: a CHANNEL_CREATE for a `cdp-chat-` channel on the
  daemon's gateway session. CDP's creates of one guild are serialised (discordgo's
  per-bucket lock), so the oldest pending create owns the next such channel;
- CDP's answer starts (its headers arrive: creation is over, one way or another);
- CDP's creation window (3 attempts of `cdp.create_attempt_timeout`) has passed;
- the request ends.

Without a session only the last three apply (the fallback `/status` names). With one,
a creation window that passes with no channel while the session is current (the guild's
events are flowing) is evidence about Discord: :attr:`PendingCreations.on_missing`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from monitor.clock import Clock
from monitor.vocab import CHANNEL_PREFIX

ANSWERED_KEPT = 512  # answered requests remembered: far more than creates in flight


class ChannelEvents(Protocol):
    """What the gate needs of the gateway session's live guild
    (monitor.discord.session_live.LiveGuild)."""

    current: bool  # the session is up and every event since the last snapshot was seen

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]: ...


class CreateSlot:
    """One admitted create's hold on a slot; released once (`reason` counted)."""

    def __init__(self, release: Callable[[CreateSlot, str], None]) -> None:
        self._release = release
        self.held = True
        self.timer: asyncio.Future[None] | None = None
        self.ticket: int | None = None  # its place in the adaptive limit's queue model

    def release(self, reason: str = "done") -> None:
        if not self.held:
            return
        self.held = False
        if self.timer is not None and reason != "window":
            self.timer.cancel()
        self._release(self, reason)


class PendingCreations:
    """The slots held, oldest first, and what freed them. `release` gives a slot back to
    the cap; `window`: CDP's creation window in seconds (0: no timer)."""

    def __init__(self, *, clock: Clock, window: float, release: Callable[[], None]) -> None:
        self._clock = clock
        self.window = window
        self._release = release
        self._held: deque[CreateSlot] = deque()
        self.releases: Counter[str] = Counter()  # channel | answer | window | done
        self.events: ChannelEvents | None = None
        # Called when a creation window passed without the channel while events flowed.
        self.on_missing: Callable[[], None] | None = None
        # Called on every channel of CDP's that appears, and on every release.
        self.on_channel: Callable[[], None] | None = None
        self.on_released: Callable[[CreateSlot, str], None] | None = None
        # Channel names of requests CDP has answered: their creation is accounted for,
        # so a later channel of that name (a timed-out attempt's twin, a create past
        # discordgo's client timeout) is not credited to the next pending create.
        self._answered: deque[str] = deque(maxlen=ANSWERED_KEPT)
        self.late_ignored = 0

    def open(self) -> CreateSlot:
        slot = CreateSlot(self._released)
        self._held.append(slot)
        if self.window > 0:
            slot.timer = asyncio.ensure_future(self._expire(slot))
        return slot

    def attach(self, events: ChannelEvents) -> Callable[[], None]:
        """Free slots on the session's channel events; returns the detach function."""
        self.events = events
        unsubscribe = events.subscribe(self._event)

        def detach() -> None:
            unsubscribe()
            self.events = None

        return detach

    def answered(self, request_id: str) -> None:
        """CDP answered the request with this id (its `X-Request-Id`)."""
        self._answered.append(CHANNEL_PREFIX + request_id)

    def _event(self, event: Any) -> None:
        name = getattr(event, "name", None) or ""
        if getattr(event, "kind", None) != "created" or not name.startswith(CHANNEL_PREFIX):
            return
        if name in self._answered:
            self.late_ignored += 1
            return
        if self._held:
            self._held[0].release("channel")  # the oldest pending create owns it
        if self.on_channel is not None:
            self.on_channel()

    def _released(self, slot: CreateSlot, reason: str) -> None:
        self.releases[reason] += 1
        try:
            self._held.remove(slot)
        except ValueError:
            pass
        self._release()
        if self.on_released is not None:
            self.on_released(slot, reason)

    async def _expire(self, slot: CreateSlot) -> None:
        await self._clock.sleep(self.window)
        if not slot.held:
            return
        missing = self.events is not None and self.events.current
        slot.release("window")
        if missing and self.on_missing is not None:
            self.on_missing()

    def status(self) -> dict[str, Any]:
        if self.events is not None:
            how = "gateway session: a slot is freed when the request's channel exists,"
        else:
            how = "no gateway session: a slot is freed"
        how += " when CDP's answer starts"
        if self.window:
            how += f" or after CDP's creation window ({self.window:g}s)"
        return {
            "pending": len(self._held),
            "released": dict(self.releases),
            "release_on": how,
            "late_channels_ignored": self.late_ignored,
        }
