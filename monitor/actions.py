"""Actions run on breaker transitions: `exec` argv or `webhook` POST, each time-bounded.
Messages to notification services live in monitor.notify.

Failures are logged and counted and never block or break the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from monitor.config import ActionConfig
from monitor.metrics import Metrics


class ActionRunner:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        logger: logging.Logger,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._log = logger
        self._environ = dict(os.environ if environ is None else environ)
        self._tasks: set[asyncio.Task[None]] = set()

    def fire(self, actions: Sequence[ActionConfig], event: dict[str, Any], timeout: float) -> None:
        """Start the actions in the background; the caller never waits on them."""
        for action in actions:
            task = asyncio.create_task(self._run(action, event, timeout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Give running actions up to `timeout` seconds (used at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def _run(self, action: ActionConfig, event: dict[str, Any], timeout: float) -> None:
        kind = "exec" if action.exec is not None else "webhook"
        self._metrics.action_attempts.labels(kind=kind).inc()
        try:
            if action.exec is not None:
                await self._exec(list(action.exec), event, timeout)
            elif action.webhook is not None:
                await self._webhook(action.webhook, event, timeout)
        except Exception as exc:  # an action must never take the daemon down
            self._metrics.action_failures.labels(kind=kind).inc()
            self._log.warning("breaker action %s failed: %s", kind, exc)

    async def _exec(self, argv: list[str], event: dict[str, Any], timeout: float) -> None:
        env = dict(self._environ)
        env.update(
            CDPMON_STATE=str(event.get("state", "")),
            CDPMON_PREVIOUS_STATE=str(event.get("previous", "")),
            CDPMON_REASON=str(event.get("reason", "")),
            CDPMON_TIME=str(event.get("at", "")),
        )
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"{argv[0]} killed after {timeout}s") from None
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-200:]
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {tail}")

    async def _webhook(self, url: str, event: dict[str, Any], timeout: float) -> None:
        async with self._session.post(
            url, json=event, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {resp.status}")
