"""Benchmark: clearing leaked channels with the Reconciler vs CDP-style one at a time.

Starts the Discord simulator in-process on a free loopback port with Discord-like limits
(global 50 req/s, the default per-route buckets) and REST latency, seeds traps the
reconciler must never delete (a protected id, names that do not match, channels with
messages, categories, voice channels, young empty channels), then:

1. seeds the leaked channels (empty, an hour old) and clears them with `Reconciler.run`
   (list once per run, then per channel GET re-check + DELETE, concurrently, paced by the
   shared client's global budget), run after run as the emergency trigger would;
2. seeds as many leaked channels again and deletes them CDP-style: one listing, then one
   DELETE at a time (sequential awaits, as CDP's `/api/channel/del/all/cdp` does; CDP's
   own version would also delete the matching traps, which are in use).

Prints both rates, as fractions of the client budget and of the simulator's ceiling, the
429 count, the speed-up, and whether every trap survived.

Each re-checked deletion costs two requests (GET + DELETE), so the reconciler's ceiling is
budget / 2 deletions per second, while one-at-a-time is bound by latency (at most
1000 / latency_ms per second): the speed-up is about budget * latency / 2.

    .venv/bin/python bench/reconcile_speed.py [--budget 40] [--latency-ms 50] [--leaked 480]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry

from monitor.config import ReconcileConfig
from monitor.discord.rest import DiscordRestClient
from monitor.metrics import Metrics
from monitor.reconcile import Reconciler
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.state import StateDir

HOUR = 3600


@dataclass(frozen=True)
class Phase:
    name: str
    deleted: int
    requests: int
    seconds: float
    sim_429s: int
    busiest_second: int
    runs: int = 1

    @property
    def delete_rate(self) -> float:
        return self.deleted / self.seconds

    @property
    def request_rate(self) -> float:
        return self.requests / self.seconds


class Bench:
    def __init__(self, http: aiohttp.ClientSession, sim: DiscordSimulator) -> None:
        self.http = http
        self.sim = sim

    async def seed(self, count: int, **body: object) -> list[str]:
        url = f"{self.sim.admin_url}/guilds/{self.sim.settings.guild_id}/channels"
        async with self.http.post(url, json={"count": count, **body}) as resp:
            resp.raise_for_status()
            return list((await resp.json())["channels"])

    def client(self, budget: float) -> DiscordRestClient:
        return DiscordRestClient(
            session=self.http,
            metrics=Metrics(CollectorRegistry()),
            token=self.sim.settings.token,
            api_base=self.sim.api_base,
            global_rate=budget,
            max_retries=3,
            timeout=10.0,
        )

    def mark(self) -> tuple[int, int]:
        return len(self.sim.state.request_log), sum(self.sim.state.ratelimited.values())

    def measure(
        self, name: str, mark: tuple[int, int], deleted: int, seconds: float, runs: int = 1
    ) -> Phase:
        log = list(self.sim.state.request_log)[mark[0] :]
        return Phase(
            name=name,
            deleted=deleted,
            requests=len(log),
            seconds=seconds,
            sim_429s=sum(self.sim.state.ratelimited.values()) - mark[1],
            busiest_second=self.sim.state.busiest_second(mark[0]),
            runs=runs,
        )


async def seed_traps(b: Bench) -> tuple[list[str], list[str]]:
    """Returns (trap ids, protected ids)."""
    protected = await b.seed(2, age_seconds=HOUR)
    traps = [
        *protected,
        *await b.seed(5, age_seconds=HOUR, prefix="general-"),
        *await b.seed(2, age_seconds=HOUR, prefix="x-cdp-chat-"),
        *await b.seed(4, age_seconds=HOUR, messages=1),
        *await b.seed(2, age_seconds=HOUR, type=4),
        *await b.seed(1, age_seconds=HOUR, type=2),
        *await b.seed(4, age_seconds=30),  # younger than emergency_min_age
    ]
    return traps, protected


async def reconciler_phase(
    b: Bench, args: argparse.Namespace, protected: list[str], audit_dir: str
) -> tuple[Phase, int]:
    leaked = await b.seed(args.leaked, age_seconds=HOUR)
    settings = ReconcileConfig(
        protected_channel_ids=frozenset(int(p) for p in protected),
        max_deletes_per_run=args.cap,
    )
    rest = b.client(args.budget)
    state_dir = StateDir(audit_dir)
    rec = Reconciler(
        settings,
        guild_id=b.sim.settings.guild_id,
        channel_limit=b.sim.settings.channel_limit,
        rest=rest,
        ledger=None,
        state_dir=state_dir,
        metrics=Metrics(CollectorRegistry()),
        concurrency=args.concurrency,
    )
    mark = b.mark()
    started = time.monotonic()
    deleted = runs = 0
    while True:  # as the emergency trigger does: again at once while runs make progress
        report = await rec.run(trigger="bench")
        runs += 1
        deleted += len(report.deleted)
        if report.errors:
            raise RuntimeError(f"reconcile errors: {report.errors[:3]}")
        if not report.planned:
            break
    seconds = time.monotonic() - started
    left = set(leaked) & {str(c) for c in b.sim.state.channels}
    if left:
        raise RuntimeError(f"{len(left)} leaked channels survived the reconciler")
    audited = sum(1 for r in state_dir.read_audit() if r["event"] == "deleted")
    return b.measure("reconciler", mark, deleted, seconds, runs), audited


async def one_at_a_time_phase(b: Bench, args: argparse.Namespace) -> Phase:
    leaked = await b.seed(args.leaked, age_seconds=HOUR)
    rest = b.client(args.budget)
    mark = b.mark()
    started = time.monotonic()
    channels = await rest.list_guild_channels(b.sim.settings.guild_id)
    # CDP deletes every `cdp-chat-` channel; here only the leaked ones, so both phases do
    # the same work (and the traps survive for the check).
    targets = [c["id"] for c in channels if c["id"] in set(leaked)]
    for cid in targets:
        await rest.delete_channel(cid)
    seconds = time.monotonic() - started
    return b.measure("one at a time", mark, len(targets), seconds)


async def main(args: argparse.Namespace) -> int:
    sim = DiscordSimulator(SimSettings(global_limit=args.sim_global_limit))
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            b = Bench(http, sim)
            async with http.put(
                f"{sim.admin_url}/faults", json={"rest": {"latency_ms": args.latency_ms}}
            ) as resp:
                resp.raise_for_status()
            traps, protected = await seed_traps(b)
            with tempfile.TemporaryDirectory() as audit_dir:
                rec, audited = await reconciler_phase(b, args, protected, audit_dir)
            seq = await one_at_a_time_phase(b, args)
            remaining = {str(c) for c in sim.state.channels}
    finally:
        await sim.stop()

    ceiling = float(args.sim_global_limit)
    budget = args.budget
    print(
        f"clearing {args.leaked} leaked channels among {len(traps)} traps; simulator latency "
        f"{args.latency_ms:g} ms, ceiling {ceiling:g} req/s; client budget {budget:g} req/s; "
        f"reconciler cap {args.cap}/run, concurrency {args.concurrency}"
    )
    print(
        f"{'phase':<14} {'seconds':>8} {'del/s':>7} {'req/s':>7} {'req/budget':>11} "
        f"{'del/budget':>11} {'del/ceiling':>12} {'429s':>5} {'max/1s':>7}"
    )
    for p in (rec, seq):
        print(
            f"{p.name:<14} {p.seconds:>8.2f} {p.delete_rate:>7.1f} {p.request_rate:>7.1f} "
            f"{p.request_rate / budget:>11.2f} {p.delete_rate / budget:>11.2f} "
            f"{p.delete_rate / ceiling:>12.2f} {p.sim_429s:>5d} {p.busiest_second:>7d}"
        )
    speedup = rec.delete_rate / seq.delete_rate
    recheck_ceiling = budget / 2  # GET + DELETE per deletion
    print(
        f"reconciler: {rec.runs} runs, {rec.requests} requests for {rec.deleted} deletions "
        f"({rec.requests / max(1, rec.deleted):.2f} per deletion: GET re-check + DELETE, "
        f"plus one listing per run); {audited} audit lines"
    )
    print(
        f"reconciler deletions/s vs its re-check ceiling (budget/2 = {recheck_ceiling:g}/s): "
        f"{rec.delete_rate / recheck_ceiling:.2f}"
    )
    print(f"speed-up of the reconciler over one at a time: {speedup:.2f}x")
    traps_ok = set(traps) <= remaining
    checks = [
        (f"request rate >= 0.8 of budget ({rec.request_rate / budget:.2f})",
         rec.request_rate >= 0.8 * budget),
        (f"deletion rate >= 0.8 of budget ({rec.delete_rate / budget:.2f})",
         rec.delete_rate >= 0.8 * budget),
        (f"zero 429s (simulator counted {rec.sim_429s + seq.sim_429s})",
         rec.sim_429s + seq.sim_429s == 0),
        (f"speed-up >= 3x ({speedup:.2f}x)", speedup >= 3.0),
        (f"no trap deleted ({len(set(traps) - remaining)} of {len(traps)} gone)", traps_ok),
        (f"one audit line per deletion ({audited} for {rec.deleted})", audited == rec.deleted),
    ]  # fmt: skip
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    print(
        f"  note: one at a time cannot beat {1000 / args.latency_ms:.0f}/s at "
        f"{args.latency_ms:g} ms latency and a re-checked deletion costs two requests, so "
        f"the speed-up is capped near budget * latency / 2 = "
        f"{budget * args.latency_ms / 2000:.1f}x"
    )
    return 0 if traps_ok and audited == rec.deleted else 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", type=float, default=40.0, help="client global budget, req/s")
    p.add_argument("--sim-global-limit", type=int, default=50, help="simulator ceiling, req/s")
    p.add_argument("--latency-ms", type=float, default=50.0, help="simulated REST latency")
    p.add_argument("--leaked", type=int, default=480, help="leaked channels per phase")
    p.add_argument("--cap", type=int, default=100, help="reconcile.max_deletes_per_run")
    p.add_argument("--concurrency", type=int, default=16, help="reconciler delete tasks")
    args = p.parse_args()
    if min(args.budget, args.leaked, args.latency_ms, args.cap, args.concurrency) <= 0:
        p.error("--budget, --leaked, --latency-ms, --cap and --concurrency must be positive")
    if args.leaked + 20 > 500:
        p.error("--leaked must leave room for the 20 traps in a 500-channel guild")
    return args


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
