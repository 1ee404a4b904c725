"""The one way tests wait for a condition: poll it until it holds, within a bound.

The bound is a liveness guard (a broken test fails instead of hanging), never a timing
assertion: a loaded machine may be slow, so bounds are generous.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

BOUND = 30.0  # seconds; generous, see the module docstring (a loaded 2-core CI box)
INTERVAL = 0.02


async def wait_for(
    check: Callable[[], T | Awaitable[T]],
    *,
    what: str,
    bound: float = BOUND,
    interval: float = INTERVAL,
    detail: Callable[[], str | Awaitable[str]] | None = None,
) -> T:
    """Poll `check` (sync or async) until it returns something truthy, and return that.

    Raises AssertionError naming `what` (plus `detail()`, e.g. a log) when `bound` passes.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if loop.time() > deadline:
            extra = "" if detail is None else detail()
            if inspect.isawaitable(extra):
                extra = await extra
            raise AssertionError(f"gave up waiting for {what} after {bound}s{extra}")
        await asyncio.sleep(interval)
