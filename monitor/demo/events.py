"""What a run reports while it goes: a `Tick` (one look at the world) every sample
interval, and an `Event` for each thing worth a sentence. Events carry numbers only;
`narration` turns them into English."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tick:
    """One look at the world, every `sample_interval`."""

    t: float
    run: str
    phase: str  # healthy, outage, recovered, draining (load stopped), cleanup
    breaker: str | None  # None without cdp-monitor
    channels: int  # every channel in the guild
    temp: int  # cdp-chat- channels
    leaked: int  # temp channels nobody will ever delete
    ok: int
    refused: int
    failed: int
    pending: int  # client requests not answered yet


@dataclass(frozen=True)
class Event:
    """`t` is seconds since the run's load started; `run` is "without" or "with"."""

    t: float
    run: str


@dataclass(frozen=True)
class RunStarted(Event):
    number: int  # 1 or 2 of an incident
    with_monitor: bool


@dataclass(frozen=True)
class RunFinished(Event):
    duration: float
    interrupted: bool


@dataclass(frozen=True)
class OutageStarted(Event):
    kind: str
    create_latency: float
    attempt_timeout: float
    attempts: int


@dataclass(frozen=True)
class Recovered(Event):
    pass


@dataclass(frozen=True)
class Draining(Event):
    """The load stopped; the requests still out are awaited."""


@dataclass(frozen=True)
class BreakerChanged(Event):
    old: str
    new: str
    reason: str
    first_open: bool  # the first time it opened in this run
    inflight: int  # creates in flight or queued at the gate at that moment


@dataclass(frozen=True)
class CreateTimedOut(Event):
    """CDP abandoned its first create attempt (it still reaches Discord)."""

    attempt_timeout: float


@dataclass(frozen=True)
class CreateErrored(Event):
    """A create ran into discordgo's 20 s client timeout: a 500 at once, no retry."""

    http_timeout: float


@dataclass(frozen=True)
class CdpTrouble(Event):
    """CDP failed a request for a reason of its own (no user token left)."""

    message: str


@dataclass(frozen=True)
class ChannelsLeaked(Event):
    count: int  # new since the last such event
    total: int


@dataclass(frozen=True)
class GuildFull(Event):
    """CDP logged Discord's 30013."""


@dataclass(frozen=True)
class GateRefusing(Event):
    """The gate refused its first create because Discord is unstable."""


@dataclass(frozen=True)
class LimitLowered(Event):
    """The gate's adaptive create limit first fell below the concurrency cap."""

    limit: int  # creates that may be pending at CDP now
    per_create: float  # Discord's measured creation time, seconds
    budget: float  # the longest predicted wait a create is admitted with


@dataclass(frozen=True)
class ReconcileDeleted(Event):
    count: int  # new since the last such event
    total: int
    by_reason: dict[str, int] = field(hash=False)
    trigger: str
    emergency: bool


@dataclass(frozen=True)
class UnderWatermark(Event):
    channels: int
    watermark: int
    limit: int
