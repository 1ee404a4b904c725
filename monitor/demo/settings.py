"""What one incident run depends on: `ScenarioSettings`, the prefilled variant, the
faults that make the outage (the simulator's, and CDP's own for `tokens`), and the
daemon's config (time compressed as much as CDP's timers are).

The outage kinds are the ways real CDP v4.6.5 leaks (CDP-FACTS.md section 1):
- `slow`: each create takes a good part of discordgo's 20 s client timeout; creates of
  one guild are serialised on discordgo's bucket lock, so the k-th queued create waits
  about k x latency and passes CDP's 60 s attempt timeout; the abandoned attempts still
  create their channels later.
- `ratelimit`: a 429 storm on channel creation; discordgo sleeps out every 429 and
  retries, so attempts pass 60 s the same way.
- `ramp`: Discord slows down without ever failing: creation latency rises over the
  first half of the outage from a tenth of discordgo's 20 s client timeout to just under
  it, and stays there (`outage_steps`); no 5xx, no 429, only CDP's queue growing past
  its attempt timeout.
- `hung`: each create takes longer than the 20 s client timeout: the request fails at
  once (no retry), and Discord still creates the channel afterwards.
- `tokens`: CDP's own trouble while Discord is fine: no user token left, so every chat
  request is a 500 `no_available_user_auth` and no channel is made.

A run is one of `RUN_KINDS`: CDP alone (`without`), or cdp-monitor in front of it with
its default gate (`with`), with the breaker alone (`breaker`: `gate.adaptive_limit:
false`) or with the breaker and the adaptive create limit (`limit`)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.sim.cdp import CdpEmulator
from monitor.sim.cdp.settings import REQUEST_OUT_TIME
from monitor.sim.discord import DiscordSimulator

# How Discord misbehaves (`outage_faults` makes each; `narration.OUTAGE_TEXT` says it).
OUTAGE_KINDS = ("slow", "ramp", "ratelimit", "hung", "tokens")
DISCORD_KINDS = frozenset({"slow", "ramp", "ratelimit", "hung"})
RAMP_STEPS = 10  # `ramp`: the latency is set anew this many times over the outage
RAMP_FROM, RAMP_TO = 0.1, 0.85  # `ramp`: first and last latency, x discordgo's timeout
RAMP_SHARE = 0.5  # `ramp`: the share of the outage it rises over (then it stays)
CDP_ATTEMPT_TIMEOUT = 60.0  # CreateChannelWithRetry's, in real CDP
CDP_HTTP_TIMEOUT = 20.0  # discordgo's http.Client
SCENARIOS = ("incident", "prefill")
CREATE_ROUTE = "POST /guilds/{guild_id}/channels"


@dataclass(frozen=True)
class RunKind:
    """What stands in front of CDP in one run."""

    name: str
    monitor: bool  # cdp-monitor's gate between the clients and CDP
    adaptive_limit: bool | None  # gate.adaptive_limit; None: the daemon's default
    header: str  # the run's column in the side-by-side table


RUN_KINDS: dict[str, RunKind] = {
    k.name: k
    for k in (
        RunKind("without", False, None, "without cdp-monitor"),
        RunKind("with", True, None, "with cdp-monitor"),
        RunKind("breaker", True, False, "breaker alone"),
        RunKind("limit", True, True, "breaker + limit"),
    )
}
DEFAULT_RUNS = ("without", "with")  # the demo's two runs
COMPARE_RUNS = ("without", "breaker", "limit")  # bench/incident.py --compare-limit


def run_kinds(names: str | tuple[str, ...] | list[str]) -> tuple[RunKind, ...]:
    """The runs named (a comma-separated string or a sequence), checked."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUN_KINDS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"runs must be distinct names among {', '.join(RUN_KINDS)}")
    return tuple(RUN_KINDS[n] for n in names)


@dataclass(frozen=True)
class ScenarioSettings:
    """Everything a run depends on; both runs of an incident use the same settings."""

    scenario: str = "incident"  # incident | prefill (the guild starts 95% full of leaks)
    seed: int = 7
    rate: float = 3.0  # client chat requests per second
    healthy: float = 4.0  # seconds of normal traffic before the outage
    outage: float = 10.0  # seconds Discord is unstable
    outage_kind: str = "slow"
    after: float = 8.0  # seconds of traffic after Discord recovers
    tail: float = 20.0  # at most this long after the load stops, waiting for a clean guild
    attempt_timeout: float = 1.5  # CDP's per-attempt create timeout (60 s in real CDP)
    attempts: int = 3  # CDP's CreateChannelWithRetry attempts
    reply_delay: float = 0.2  # the Coze bot thinking
    auto_delete: float = 1.0  # CHANNEL_AUTO_DEL_TIME
    client_retries: int = 2  # the openai SDK's max_retries
    client_timeout: float = 30.0
    channel_limit: int = 500
    prefill: int = 0  # old empty cdp-chat- channels in the guild before the run
    max_concurrent_creates: int = 4
    create_rate: float = 4.0  # gate.create_rate: under Discord's 5/s create bucket
    when_open: str = "reject"  # gate.when_open: refuse at once, or hold up to hold_max
    hold_max: float = 10.0
    high_watermark: float = 0.8
    sample_interval: float = 0.25

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario must be one of {', '.join(SCENARIOS)}")
        if self.when_open not in ("reject", "hold") or self.hold_max <= 0:
            problems.append("when_open must be reject or hold, with a positive hold_max")
        if self.outage_kind not in OUTAGE_KINDS:
            problems.append(f"outage_kind must be one of {', '.join(OUTAGE_KINDS)}")
        if self.rate <= 0:
            problems.append("rate must be positive")
        for name in ("healthy", "outage", "after", "tail", "attempt_timeout", "client_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive")
        if self.attempts < 1 or self.max_concurrent_creates < 1:
            problems.append("attempts and max_concurrent_creates must be at least 1")
        if self.client_retries < 0 or self.reply_delay < 0 or self.auto_delete < 0:
            problems.append("client_retries, reply_delay and auto_delete must not be negative")
        if not 0 <= self.prefill <= self.channel_limit:
            problems.append("prefill must be between 0 and channel_limit")
        if not 0 < self.high_watermark <= 1:
            problems.append("high_watermark must be in (0, 1]")
        if self.sample_interval <= 0:
            problems.append("sample_interval must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def recovery_at(self) -> float:
        return self.healthy + self.outage

    @property
    def load_until(self) -> float:
        return self.healthy + self.outage + self.after

    @property
    def time_scale(self) -> float:
        """How much faster than real CDP the emulator's timers run."""
        return CDP_ATTEMPT_TIMEOUT / self.attempt_timeout

    @property
    def http_timeout(self) -> float:
        return CDP_HTTP_TIMEOUT / self.time_scale

    @property
    def create_latency(self) -> float:
        """How long Discord takes to create a channel during the outage (seconds):
        `slow` 0.8 of discordgo's timeout (16 s real; a queue of 4 passes 60 s),
        `ramp` at its peak 0.85 of it (17 s real), `hung` 1.6 times it (32 s real: a
        20 s error, the channel comes later)."""
        factor = {"slow": 0.8, "ramp": RAMP_TO, "ratelimit": 0.1, "hung": 1.6, "tokens": 0.0}
        return factor[self.outage_kind] * self.http_timeout

    @property
    def watermark_channels(self) -> int:
        return math.ceil(self.high_watermark * self.channel_limit)


def prefill_settings(**overrides: Any) -> ScenarioSettings:
    """The second scenario: leaks already fill 95% of the guild before the outage."""
    # A longer tail: the reconciler paces its deletes to spare CDP's rate limits, and
    # 475 old leaks take it about a minute.
    base: dict[str, Any] = {
        "scenario": "prefill",
        "prefill": 475,
        "channel_limit": 500,
        "tail": 60.0,
    }
    base.update(overrides)
    return ScenarioSettings(**base)


def outage_faults(settings: ScenarioSettings) -> dict[str, Any]:
    """The body of `PUT /_sim/faults` that starts the outage (empty for `tokens`)."""
    latency = settings.create_latency * 1000
    kind = settings.outage_kind
    if kind == "slow":
        return {
            "rest": {
                "latency_ms": latency,
                "jitter_ms": latency * 0.2,
                "routes": [CREATE_ROUTE, "GET /gateway/bot"],
            },
            "gateway": {"hello_delay_ms": 3000},
        }
    if kind == "ramp":
        return outage_steps(settings)[0][1]
    if kind == "ratelimit":
        return {
            "rest": {"latency_ms": latency, "shared_429_rate": 0.6, "routes": [CREATE_ROUTE]},
        }
    if kind == "hung":
        return {
            "rest": {"latency_ms": latency, "routes": [CREATE_ROUTE, "GET /gateway/bot"]},
            "gateway": {"refuse": True},
        }
    return {"rest": {}}


def outage_steps(settings: ScenarioSettings) -> list[tuple[float, dict[str, Any]]]:
    """(seconds into the outage, `PUT /_sim/faults` body) pairs: one at 0 for every kind
    but `ramp`, whose create latency rises in `RAMP_STEPS` even steps from `RAMP_FROM` to
    `RAMP_TO` of discordgo's client timeout (a little jitter, never reaching it) over
    `RAMP_SHARE` of the outage, then stays."""
    if settings.outage_kind != "ramp":
        return [(0.0, outage_faults(settings))]
    http_ms = settings.http_timeout * 1000
    steps = []
    for i in range(RAMP_STEPS):
        factor = RAMP_FROM + (RAMP_TO - RAMP_FROM) * i / (RAMP_STEPS - 1)
        rest = {"latency_ms": factor * http_ms, "jitter_ms": 0.05 * http_ms}
        offset = settings.outage * RAMP_SHARE * i / (RAMP_STEPS - 1)
        steps.append((offset, {"rest": rest | {"routes": [CREATE_ROUTE]}}))
    return steps


def cdp_faults(settings: ScenarioSettings) -> dict[str, Any] | None:
    """The body of `PUT /_cdp/faults` that starts the outage (CDP's own trouble)."""
    if settings.outage_kind == "tokens":
        return {"user_tokens": []}
    return None


def daemon_config_dict(
    settings: ScenarioSettings,
    sim: DiscordSimulator,
    cdp: CdpEmulator,
    *,
    state_dir: Path,
    cdp_log: Path,
    adaptive_limit: bool | None = None,
) -> dict[str, Any]:
    """The daemon's config with time compressed as much as CDP's timeouts are;
    `adaptive_limit` sets `gate.adaptive_limit` (None: the daemon's default)."""
    gate = _gate_section(settings, cdp)
    if adaptive_limit is not None:
        gate["adaptive_limit"] = adaptive_limit
    return {
        "discord": {
            "token": sim.settings.token,
            "guild_id": str(sim.settings.guild_id),
            "api_base": sim.api_base,
            "gateway_url": sim.gateway_url,
            "request_timeout": "2s",
            "max_retries": 1,
            # CDP shares the bot's 50 requests/s: leave it most of them.
            "global_rate": 20,
            "channel_limit": settings.channel_limit,
        },
        "probes": {
            "gateway": {"interval": "250ms", "timeout": "1s", "slow": "800ms"},
            # GET /gateway/bot is limited to 5 per 5 s: probe it well inside that. Slow
            # is compressed as CDP's timers are: 300 ms here is 12 s for real.
            "rest": {"interval": "1500ms", "timeout": "1s", "slow": "300ms"},
            "cdp": {"enabled": True, "interval": "1s", "timeout": "1s"},
        },
        "signals": {"cdp_log": {"enabled": True, "file": str(cdp_log)}, "gate": True},
        "health": {"window": "2500ms", "min_samples": 3, "evaluate_interval": "250ms"},
        "breaker": {"reset_timeout": "2s", "success_threshold": 2, "max_reset_timeout": "4s"},
        "gate": gate,
        "reconcile": _reconcile_section(settings),
        # CHANNEL_AUTO_DEL_TIME, and CDP's timers as compressed as the emulator's: the
        # attempt timeout is the adaptive limit's deadline and the slots' window.
        "cdp": {
            "auto_delete": f"{settings.auto_delete}s",
            "create_attempt_timeout": f"{settings.attempt_timeout}s",
            "request_timeout": f"{REQUEST_OUT_TIME / settings.time_scale}s",
        },
        "control": {"listen": "127.0.0.1:0", "token": secrets.token_hex(16)},
        "state_dir": str(state_dir),
    }


def _gate_section(settings: ScenarioSettings, cdp: CdpEmulator) -> dict[str, Any]:
    return {
        "enabled": True,
        "listen": "127.0.0.1:0",
        "upstream": cdp.base_url,
        "max_concurrent_creates": settings.max_concurrent_creates,
        "create_rate": settings.create_rate,
        "when_open": settings.when_open,
        "hold_max": f"{settings.hold_max}s",
        # Short: a request queued behind the cap must not slip in after the breaker
        # opened; it is refused with Retry-After instead.
        "queue_wait": "1s",
        "upstream_timeout": "60s",
    }


def _reconcile_section(settings: ScenarioSettings) -> dict[str, Any]:
    return {
        "enabled": True,
        "interval": "2s",
        "min_age": "3s",
        "emergency_min_age": "2s",
        "settle_delay": "500ms",
        "ledger_grace": "2s",
        "high_watermark": settings.high_watermark,
        "max_deletes_per_run": 100,
        "census_interval": "2s",
        "list_spacing": "1s",
    }
