"""Active probes: one signature, picked from a table (blackbox_exporter style).

Every probe is `async (ProbeContext) -> ProbeResult`, never raises for network outcomes,
and is bounded by its own timeout by the caller (`run_probe`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from monitor.clock import Clock
from monitor.config import Config
from monitor.discord.gateway import probe_gateway
from monitor.discord.rest import DiscordRestClient
from monitor.errors import DiscordError, DiscordUnauthorized
from monitor.health.owner import REACH_SOURCES, Health
from monitor.health.window import Sample, statuspage_ok
from monitor.httpserve import descriptor_pressure
from monitor.metrics import Metrics
from monitor.vocab import DISCORD_SOURCES


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    ok: bool
    duration: float
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0  # wall time the probe finished

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "duration_seconds": round(self.duration, 4),
            "detail": self.detail,
            "at": self.at,
            **self.data,
        }


@dataclass
class ProbeContext:
    """What probes may use; built by the daemon, shared by every probe."""

    config: Config
    session: aiohttp.ClientSession
    rest: DiscordRestClient
    clock: Clock
    logger: logging.Logger
    gateway_url: str | None = None  # learned from GET /gateway when not configured

    @property
    def discord_http(self) -> aiohttp.ClientSession:
        """Discord's own session (through `discord.proxy`): the REST client's."""
        return self.rest.session

    async def resolve_gateway_url(self) -> str:
        if self.config.discord.gateway_url:
            return self.config.discord.gateway_url
        if self.gateway_url is None:
            # GET /gateway needs no token: asked without one, it keeps working after a
            # 401 has made the REST client stop using the dead token.
            url = None
            if self.rest.banned_for > 0:  # the IP is banned from the API: don't ask
                raise DiscordError(f"GET /gateway: Cloudflare ban for {self.rest.banned_for:.0f}s")
            try:
                async with self.discord_http.get(
                    self.config.discord.api_base.rstrip("/") + "/gateway",
                    timeout=aiohttp.ClientTimeout(total=self.config.probes.gateway.timeout),
                ) as resp:
                    data = await resp.json(content_type=None) if resp.status == 200 else None
                    url = data.get("url") if isinstance(data, dict) else None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise DiscordError(f"GET /gateway: {exc}", route="/gateway") from None
            if not isinstance(url, str) or not url:
                raise DiscordError("GET /gateway answered without a url", route="/gateway")
            self.gateway_url = url
        return self.gateway_url


ProbeFn = Callable[[ProbeContext], Awaitable[ProbeResult]]


async def gateway_probe(ctx: ProbeContext) -> ProbeResult:
    started = ctx.clock.monotonic()
    timeout = ctx.config.probes.gateway.timeout
    try:
        url = await ctx.resolve_gateway_url()
    except DiscordError as exc:
        return ProbeResult(
            "gateway", False, ctx.clock.monotonic() - started, f"GET /gateway: {exc}"
        )
    result = await probe_gateway(url, session=ctx.discord_http, timeout=timeout, clock=ctx.clock)
    if not result.ok and not ctx.config.discord.gateway_url:
        ctx.gateway_url = None  # ask again next time; Discord may have moved the gateway
    detail = "ok" if result.ok else f"{result.outcome} in {result.phase}: {result.error}"
    data: dict[str, Any] = {"outcome": result.outcome, "latency": result.latencies()}
    if result.close_code is not None:
        data["close_code"] = result.close_code
    return ProbeResult("gateway", result.ok, ctx.clock.monotonic() - started, detail, data)


async def rest_probe(ctx: ProbeContext) -> ProbeResult:
    started = ctx.clock.monotonic()
    try:
        # One attempt: a probe measures Discord, it must not hide failures behind retries.
        body = await ctx.rest.request("GET", "/gateway/bot", max_retries=0)
    except DiscordUnauthorized as exc:
        return ProbeResult(
            "rest", False, ctx.clock.monotonic() - started, str(exc), {"status": 401}
        )
    except DiscordError as exc:
        status = getattr(exc, "status", None)
        return ProbeResult(
            "rest", False, ctx.clock.monotonic() - started, str(exc), {"status": status}
        )
    duration = ctx.clock.monotonic() - started
    limit = body.get("session_start_limit") if isinstance(body, dict) else None
    remaining = limit.get("remaining") if isinstance(limit, dict) else None
    data: dict[str, Any] = {"status": 200}
    if isinstance(remaining, int):
        data["session_starts_remaining"] = remaining
    return ProbeResult("rest", True, duration, "ok", data)


async def cdp_probe(ctx: ProbeContext) -> ProbeResult:
    started = ctx.clock.monotonic()
    base = ctx.config.probes.cdp.url or ctx.config.gate.upstream
    timeout = aiohttp.ClientTimeout(total=ctx.config.probes.cdp.timeout)
    try:
        async with ctx.session.get(base.rstrip("/") + "/v1/models", timeout=timeout) as resp:
            await resp.read()
            ok = resp.status < 500
            detail = f"HTTP {resp.status}"
            status: int | None = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        ok, detail, status = False, f"{type(exc).__name__}: {exc}", None
    return ProbeResult("cdp", ok, ctx.clock.monotonic() - started, detail, {"status": status})


async def statuspage_probe(ctx: ProbeContext) -> ProbeResult:
    started = ctx.clock.monotonic()
    cfg = ctx.config.probes.statuspage
    try:
        async with ctx.session.get(
            cfg.url, timeout=aiohttp.ClientTimeout(total=cfg.timeout)
        ) as resp:
            summary = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return ProbeResult(
            "statuspage", False, ctx.clock.monotonic() - started, f"{type(exc).__name__}: {exc}"
        )
    components = summary.get("components") if isinstance(summary, dict) else None
    states: dict[str, str] = {}
    for comp in components if isinstance(components, list) else []:
        if isinstance(comp, dict) and comp.get("name") in ("API", "Gateway"):
            states[str(comp["name"])] = str(comp.get("status", "unknown"))
    if not states:
        return ProbeResult(
            "statuspage", False, ctx.clock.monotonic() - started, "no API/Gateway component"
        )
    ok = all(statuspage_ok(s) for s in states.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(states.items()))
    return ProbeResult(
        "statuspage", ok, ctx.clock.monotonic() - started, detail, {"components": states}
    )


# Failures of this host, not of Discord: out of descriptors, buffers or memory (an
# attack on our listeners, a leak). They say nothing about Discord's health.
_LOCAL_ERRORS = tuple(
    os.strerror(code) for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
)


_PRESSURE = 0.9  # descriptors in use (share of RLIMIT_NOFILE) at which we are the cause


def local_failure(detail: str) -> bool:
    """Whether a failed probe was this host's failure: its detail names a local resource
    error, or the process is nearly out of descriptors (a timeout then is ours too)."""
    if any(text in detail for text in _LOCAL_ERRORS):
        return True
    ratio = descriptor_pressure()["ratio"]
    return ratio is not None and ratio >= _PRESSURE


PROBES: dict[str, ProbeFn] = {
    "gateway": gateway_probe,
    "rest": rest_probe,
    "cdp": cdp_probe,
    "statuspage": statuspage_probe,
}


def enabled_probes(config: Config) -> list[str]:
    p = config.probes
    flags = {
        "gateway": p.gateway.enabled,
        "rest": p.rest.enabled,
        "cdp": p.cdp.enabled,
        "statuspage": p.statuspage.enabled,
    }
    return [name for name, on in flags.items() if on]


def probe_interval(config: Config, name: str) -> float:
    interval: float = getattr(config.probes, name).interval
    return interval


async def run_probe(name: str, ctx: ProbeContext) -> ProbeResult:
    """Run one probe under its timeout (plus a grace for clean-up); never raises."""
    timeout: float = getattr(ctx.config.probes, name).timeout
    started = ctx.clock.monotonic()
    try:
        result = await asyncio.wait_for(PROBES[name](ctx), timeout + 2.0)
    except TimeoutError:
        result = ProbeResult(
            name, False, ctx.clock.monotonic() - started, f"timed out after {timeout}s"
        )
    data = result.data
    if not result.ok and local_failure(result.detail):
        data = {**data, "local": True}  # no Discord sample (record_probe)
    return ProbeResult(
        result.probe, result.ok, result.duration, result.detail, data, ctx.clock.time()
    )


def record_probe(
    result: ProbeResult, metrics: Metrics, health: Health | None = None
) -> Sample | None:
    """Export a probe result as metrics; return the health sample it contributes, if any.
    A failed Discord probe tells `health` why Discord may be unreachable."""
    if health is not None and not result.ok and result.probe in REACH_SOURCES:
        health.note_unreachable(f"{result.probe} probe: {result.detail}")
    metrics.probe_success.labels(probe=result.probe).set(1 if result.ok else 0)
    metrics.probe_duration.labels(probe=result.probe).set(result.duration)
    if result.probe == "gateway":
        for phase, seconds in result.data.get("latency", {}).items():
            metrics.gateway_latency.labels(phase=phase).set(seconds)
    remaining = result.data.get("session_starts_remaining")
    if remaining is not None:
        metrics.session_starts_remaining.set(remaining)
    if result.probe not in DISCORD_SOURCES:
        return None
    # A 401 says our token is dead, not that Discord is unstable.
    if result.data.get("status") == 401:
        return None
    if result.data.get("local"):
        return None  # our own resource trouble, not Discord's
    return Sample(result.probe, result.at, result.ok, result.duration)
