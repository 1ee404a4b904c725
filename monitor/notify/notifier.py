"""The notifier: turns events into messages on the operator's notification services.

Never in the daemon's way: `__call__` (an event subscriber) only rate-limits and queues;
one worker task sends, each send bounded by `timeout` and run on a daemon thread of its
own (Apprise is synchronous), so a hung service stalls neither the event loop, nor the
default executor aiohttp resolves names on, nor the process's exit. At most one such
thread hangs at a time: while it does, further messages fail at once. One message per
event kind per `period`; the rest, and whatever overflows the queue, is counted as
suppressed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from monitor.events import Event
from monitor.metrics import Metrics
from monitor.notify.messages import render

# (title, body) -> delivered? Runs on the notifier's thread; may block.
Sender = Callable[[str, str], bool]
QUEUE_MAX = 32


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """What the notifier needs from `actions.notify` (resolved: language, kinds)."""

    language: str
    period: float
    timeout: float
    kinds: frozenset[str]
    instance: str = ""


class Notifier:
    def __init__(
        self,
        settings: NotifySettings,
        *,
        sender: Sender,
        metrics: Metrics,
        logger: logging.Logger,
    ) -> None:
        self.settings = settings
        self._sender = sender
        self._metrics = metrics
        self._log = logger
        self._last: dict[str, float] = {}
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_MAX)
        self._busy = False  # a send thread is still running (maybe hung)
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # delivered messages, for tests and the status page

    def __call__(self, event: Event) -> None:
        """Event subscriber: queue `event` unless its kind spoke within the period."""
        s = self.settings
        if event.kind not in s.kinds:
            return
        last = self._last.get(event.kind)
        if last is not None and event.at - last < s.period:
            self._metrics.notifications_suppressed.labels(reason="rate_limited").inc()
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.notifications_suppressed.labels(reason="queue_full").inc()
            return
        self._last[event.kind] = event.at

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            await self._send(event)

    async def _send(self, event: Event) -> None:
        s = self.settings
        title, body = render(event, s.language, s.instance)
        self._metrics.action_attempts.labels(kind="notify").inc()
        try:
            ok = await asyncio.wait_for(self._in_thread(title, body), s.timeout)
            error = None if ok else "a service refused it"
        except TimeoutError:
            error = f"no answer within {s.timeout}s"
        except Exception as exc:  # a notification must never take the daemon down
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.sent += 1
            return
        self._metrics.action_failures.labels(kind="notify").inc()
        self._log.warning("notification %s failed: %s", event.kind, error)

    def _in_thread(self, title: str, body: str) -> asyncio.Future[bool]:
        """The sender's answer, computed on a daemon thread (abandoned if it hangs)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if self._busy:
            future.set_exception(RuntimeError("the previous message is still hanging"))
            return future

        def settle(ok: bool | None, exc: BaseException | None) -> None:
            if future.done():  # timed out meanwhile
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(bool(ok))

        def work() -> None:
            try:
                result: tuple[bool | None, BaseException | None] = (self._sender(title, body), None)
            except Exception as exc:
                result = (None, exc)
            self._busy = False  # before the answer: the next send may start at once
            try:
                loop.call_soon_threadsafe(settle, *result)
            except RuntimeError:
                pass  # the loop is gone (shutdown): nobody waits for this answer

        self._busy = True
        threading.Thread(target=work, name="cdpmon-notify", daemon=True).start()
        return future


def apprise_sender(urls: list[str], names: list[str]) -> Sender:
    """A sender over Apprise (the `notify` extra). ValueError names a URL it cannot use
    by where it came from (`names`), since the URL holds the service's secret."""
    import apprise  # optional: imported only when notifications are configured

    client = apprise.Apprise()
    for url, name in zip(urls, names, strict=True):
        if not client.add(url):
            raise ValueError(f"{name}: Apprise does not understand this URL")

    def send(title: str, body: str) -> bool:
        return bool(client.notify(body=body, title=title))

    return send


def cdp_telegram_url(environ: Mapping[str, str]) -> str | None:
    """CDP's own Telegram settings (NOTIFY_TELEGRAM_BOT_TOKEN, NOTIFY_TELEGRAM_USER_ID)
    as an Apprise URL, or None when either is unset."""
    token = environ.get("NOTIFY_TELEGRAM_BOT_TOKEN", "").strip()
    user = environ.get("NOTIFY_TELEGRAM_USER_ID", "").strip()
    if not token or not user:
        return None
    return f"tgram://{token}/{user}"
