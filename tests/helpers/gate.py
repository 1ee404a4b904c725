"""A stand-in for the gateway session's live guild as the gate sees it
(monitor/gate/slots.py ChannelEvents): CHANNEL_CREATE events on demand. The real
LiveGuild needs a whole gateway session; the gate only subscribes to its events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ChannelCreated:
    name: str
    kind: str = "created"


class FakeLive:
    """`current` and `subscribe` as LiveGuild has them; `created` dispatches an event."""

    def __init__(self) -> None:
        self.current = True
        self._subscribers: list[Callable[[Any], None]] = []

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def created(self, name: str = "cdp-chat-1") -> None:
        for callback in list(self._subscribers):
            callback(ChannelCreated(name))
