"""The adaptive create limit: admit a channel creation only while it can finish before
CDP gives up on it.

CDP creates a guild's channels one at a time (discordgo holds the guild's channel bucket
lock until Discord's answer: CDP-FACTS section 1), and gives each attempt
`cdp.create_attempt_timeout` (60 s). An attempt that passes it is retried while the
first one stays queued and creates its channel later: a leak. So the k-th pending create
waits about k times Discord's creation time, plus any 429 sleep, and a create may go
ahead only while that predicted wait stays under the timeout less `gate.limit_headroom`.

Measured here, per create, from the gate's own view: admission, and the moment the
request's channel exists (the gateway session's CHANNEL_CREATE; creates are served in
order, so the oldest pending one owns it). A create's service time is from when Discord
could start on it (its admission, or the previous completion if the queue was busy) to
its channel; 429 sleeps on CDP's bucket are inside it (discordgo sleeps them out while
holding the lock, and CDP's log does not show them). A global 429 or ban the daemon
itself saw on the shared bot token is added as a known wait.

Everything here is pure and takes `now` (monotonic seconds): :class:`CreateQueue`
records, :func:`predict_wait` and :meth:`CreateQueue.verdict` decide.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

SAMPLES = 3  # the slowest of the last few creations is the estimate: latency may rise


@dataclass(frozen=True, slots=True)
class LimitSettings:
    attempt_timeout: float  # cdp.create_attempt_timeout: CDP's per-attempt deadline
    headroom: float  # gate.limit_headroom: share of it kept in reserve
    max_pending: int  # gate.max_concurrent_creates: the limit when nothing is measured
    # CDP's creation window: a create older than it is given up, a measurement older
    # than it forgotten (0: never; then a Discord too slow for one create stays refused).
    window: float = 0.0

    @property
    def budget(self) -> float:
        """The longest predicted wait a create may be admitted with."""
        return self.attempt_timeout * (1.0 - self.headroom)


@dataclass(frozen=True, slots=True)
class Verdict:
    admit: bool
    predicted_wait: float  # for a create admitted now, until its channel exists
    limit: int  # creates that may be pending at once at the current creation time
    retry_after: float  # seconds until the queue has drained enough (0 when admitted)
    per_create: float  # the creation time the prediction uses (0: nothing measured)


def predict_wait(
    pending: int, head_started: float | None, per_create: float, now: float, blocked: float
) -> tuple[float, float]:
    """(predicted wait of one more create, the per-create time used): `pending` creates
    ahead of it, the oldest in service since `head_started`, each taking `per_create`
    seconds, the bot blocked `blocked` more seconds.

    A head in service longer than the estimate says Discord got slower by an unknown
    amount; until it finishes, its remaining time is taken as long as it has already
    taken (the best guess for a duration known only to exceed what has passed), and
    every create behind it as slow as that."""
    if pending == 0 or head_started is None:
        return blocked + per_create, per_create
    elapsed = max(0.0, now - head_started)
    per = per_create if elapsed <= per_create else 2.0 * elapsed
    return blocked + (per - elapsed) + pending * per, per


class CreateQueue:
    """The gate's model of CDP's create queue: admitted creates not yet finished, oldest
    first, and the recent service times. A create leaves it when its channel exists
    (the oldest one: :meth:`completed_one`), when CDP answers it (:meth:`ended`), or
    when CDP's creation window has passed since its admission. A client that hangs up
    does not end it: CDP's create goes on without the client."""

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._pending: dict[int, float] = {}  # ticket -> admission time, oldest first
        self._next_ticket = 0
        self._last_done: float | None = None
        self._service: deque[tuple[float, float]] = deque(maxlen=SAMPLES)  # (at, seconds)
        self.admitted = 0
        self.completed = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def per_create(self, now: float) -> float:
        """The creation time estimate: the slowest recent one (0 before any). A
        measurement older than CDP's creation window is forgotten, so a Discord once too
        slow for even one create gets a new trial (its answer is a fresh measurement)."""
        self._forget(now)
        return max((seconds for _, seconds in self._service), default=0.0)

    def _forget(self, now: float) -> None:
        window = self.settings.window
        while self._service and window > 0 and now - self._service[0][0] >= window:
            self._service.popleft()

    def admit(self, now: float) -> int:
        """Record an admitted create; returns its ticket for :meth:`ended`."""
        self._expire(now)
        self._next_ticket += 1
        self._pending[self._next_ticket] = now
        self.admitted += 1
        return self._next_ticket

    def completed_one(self, now: float) -> float | None:
        """A channel of CDP's appeared: the oldest pending create is done. Returns its
        service time (None when nothing was pending)."""
        self._expire(now)
        if not self._pending:
            return None
        ticket = next(iter(self._pending))
        service = max(0.0, now - self._started(self._pending.pop(ticket)))
        self._service.append((now, service))
        self._last_done = now
        self.completed += 1
        return service

    def ended(self, ticket: int, now: float) -> None:
        """CDP answered this create: its creation is over (no service time: the answer
        may be an error that never reached Discord)."""
        if ticket not in self._pending:
            return
        head = next(iter(self._pending)) == ticket
        del self._pending[ticket]
        if head:
            self._last_done = now

    def _expire(self, now: float) -> None:
        window = self.settings.window
        while self._pending and window > 0:
            ticket, admitted = next(iter(self._pending.items()))
            if now - admitted < window:
                return
            del self._pending[ticket]  # CDP has given up on it (its channel may yet come)

    def _started(self, admitted: float) -> float:
        return admitted if self._last_done is None else max(admitted, self._last_done)

    def head_started(self) -> float | None:
        """When Discord could start on the oldest pending create."""
        if not self._pending:
            return None
        return self._started(next(iter(self._pending.values())))

    def verdict(self, now: float, blocked: float = 0.0) -> Verdict:
        """May one more create go ahead now? `blocked`: seconds the bot is known to be
        blocked (a global 429). Only if its predicted wait fits the budget, even with
        nothing pending: a create that cannot finish in time leaks whatever else
        happens."""
        self._expire(now)
        s = self.settings
        n = self.pending
        wait, per = predict_wait(n, self.head_started(), self.per_create(now), now, blocked)
        room = s.budget - blocked  # what a known global 429 leaves of the budget
        if room < 0:
            limit = 0
        else:
            limit = s.max_pending if per <= 0 else int(min(s.max_pending, room // per))
        if wait <= s.budget:
            return Verdict(True, wait, max(1, limit), 0.0, per)
        drain = wait - s.budget
        if n == 0 and per > s.budget:
            # Too slow even alone: the slow measurements must age out first.
            ages = [at + s.window - now for at, sec in self._service if sec > s.budget]
            drain = max([blocked, *ages])
        return Verdict(False, wait, limit, max(0.0, drain), per)
