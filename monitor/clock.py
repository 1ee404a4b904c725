"""Injectable clock so time-dependent logic can be tested without sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for intervals."""
        ...

    async def sleep(self, seconds: float) -> None: ...


async def wait_event(event: asyncio.Event, timeout: float, clock: Clock) -> None:
    """Return when `event` is set or after `timeout` seconds of `clock`, whichever is
    first."""
    changed = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait({changed, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        changed.cancel()
        timer.cancel()


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Manually advanced clock; `sleep` advances time instantly."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class ManualClock(FakeClock):
    """Manually advanced clock whose `sleep` waits until `advance` reaches its end; it
    records each sleep, so a test sees every wait the code under test made."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        done = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.monotonic() + max(0.0, seconds), done))
        await done

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        due = [(end, done) for end, done in self._sleepers if end <= self.monotonic()]
        for end, done in due:
            self._sleepers.remove((end, done))
            if not done.done():
                done.set_result(None)


SYSTEM_CLOCK = SystemClock()
