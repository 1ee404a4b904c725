"""The load: clients sending chat requests at a steady, seeded rate with the real openai
SDK, retrying as deployed clients do, and counting what became of each request."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from monitor.demo.settings import ScenarioSettings
from monitor.errors import ScenarioError

# Gate refusals (DESIGN section 7): the client is told to come back later.
REFUSAL_CODES = frozenset({"discord_unstable", "paused", "create_queue_full"})


def import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ScenarioError(
            "the scenario's clients use the openai package, which is not installed; "
            "install the test extra (pip install -e '.[test]') or `pip install openai`"
        ) from exc
    return openai


class LoadGenerator:
    """Clients sending chat requests at a steady rate with the real openai SDK.

    Every request is one conversation; the SDK retries it (`max_retries`) on 5xx and
    honours `Retry-After`, as deployed clients do. The schedule is seeded.
    """

    def __init__(self, base_url: str, settings: ScenarioSettings) -> None:
        openai = import_openai()
        self._openai = openai
        self._settings = settings
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="sk-scenario",
            max_retries=settings.client_retries,
            timeout=settings.client_timeout,
        )
        self._rng = random.Random(settings.seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.ok = 0
        self.refused = 0
        self.failed = 0
        self.unfinished = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set: one request every 1/rate s, jittered ±50%."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            self.sent += 1
            task = asyncio.create_task(self._one(self.sent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            due += self._rng.uniform(0.5, 1.5) / self._settings.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))

    async def _one(self, n: int) -> None:
        openai = self._openai
        try:
            await self._client.chat.completions.create(
                model="coze",
                messages=[{"role": "user", "content": f"question number {n}"}],
            )
        except openai.APIStatusError as exc:
            code = getattr(exc, "code", None)
            if exc.status_code == 503 and code in REFUSAL_CODES:
                self.refused += 1
            else:
                self.failed += 1
        except openai.APIError:  # connection errors and timeouts
            self.failed += 1
        else:
            self.ok += 1

    async def drain(self, timeout: float) -> None:
        """Wait for the requests still out; cancel (and count) what is left after `timeout`."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.cancel()

    async def cancel(self) -> None:
        left = list(self._tasks)
        self.unfinished += len(left)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def close(self) -> None:
        await self.cancel()
        await self._client.close()
