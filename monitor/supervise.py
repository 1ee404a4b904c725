"""Loop supervision: named loops that are restarted with backoff when they crash."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from monitor.clock import Clock
from monitor.metrics import Metrics


@dataclass
class LoopState:
    """What /status and /healthz show of one supervised loop."""

    up: bool = False
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    """Runs named loops; a crashing loop is logged, counted and restarted with backoff."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        logger: logging.Logger,
        clock: Clock,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
    ) -> None:
        self._metrics = metrics
        self._log = logger
        self._clock = clock
        self._base = backoff_base
        self._cap = backoff_cap
        self.loops: dict[str, LoopState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        self.loops[name] = LoopState()
        self._metrics.loop_restarts.labels(loop=name)  # at 0, so increase() sees the first
        self._tasks[name] = asyncio.create_task(self._keep(name, body), name=name)

    async def _keep(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        state = self.loops[name]
        failures = 0
        while True:
            state.up = True
            self._metrics.loop_up.labels(loop=name).set(1)
            started = self._clock.monotonic()
            try:
                await body()
                error = "loop returned"
            except asyncio.CancelledError:
                state.up = False
                self._metrics.loop_up.labels(loop=name).set(0)
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._log.exception("loop %s crashed", name)
            state.up = False
            state.restarts += 1
            state.last_error = error
            self._metrics.loop_up.labels(loop=name).set(0)
            self._metrics.loop_restarts.labels(loop=name).inc()
            # A loop that ran a good while before failing starts its backoff afresh.
            failures = 1 if self._clock.monotonic() - started > self._cap else failures + 1
            delay = min(self._cap, self._base * 2 ** (failures - 1))
            self._log.warning("loop %s down (%s); restarting in %.1fs", name, error, delay)
            await self._clock.sleep(delay)

    def alive(self) -> bool:
        return all(s.up for s in self.loops.values())

    def status(self) -> dict[str, Any]:
        return {
            name: {"up": s.up, "restarts": s.restarts, "last_error": s.last_error}
            for name, s in self.loops.items()
        }

    async def stop(self, timeout: float) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)
        self._tasks.clear()
