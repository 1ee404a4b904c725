"""Benchmark: deleting leaked channels through the rate-limited client vs one at a time.

Starts the Discord simulator in-process on a free loopback port with REST latency, seeds
N channels and deletes them concurrently through DiscordRestClient, then seeds N more and
deletes them one at a time (sequential awaits, as CDP's `/api/channel/del/all/cdp` does),
with the same client settings. Prints both rates as fractions of the simulator's global
ceiling and of the configured budget, the 429 count, and the speed-up.

    .venv/bin/python bench/discord_client.py [--budget 40] [--latency-ms 50] [--channels 400]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry

from monitor.discord.rest import DiscordRestClient
from monitor.metrics import Metrics
from monitor.sim.discord import DiscordSimulator, SimSettings


@dataclass(frozen=True)
class PhaseResult:
    name: str
    deleted: int
    seconds: float
    client_429s: int
    sim_429s: int
    busiest_second: int  # most requests the simulator saw in any 1 s window

    @property
    def rate(self) -> float:
        return self.deleted / self.seconds


async def seed(http: aiohttp.ClientSession, sim: DiscordSimulator, count: int) -> list[str]:
    url = f"{sim.admin_url}/guilds/{sim.settings.guild_id}/channels"
    async with http.post(url, json={"count": count, "prefix": "cdp-chat-"}) as resp:
        resp.raise_for_status()
        return list((await resp.json())["channels"])


async def run_phase(
    name: str,
    http: aiohttp.ClientSession,
    sim: DiscordSimulator,
    args: argparse.Namespace,
    *,
    concurrent: bool,
) -> PhaseResult:
    ids = await seed(http, sim, args.channels)
    client = DiscordRestClient(
        session=http,
        metrics=Metrics(CollectorRegistry()),
        token=sim.settings.token,
        api_base=sim.api_base,
        global_rate=args.budget,
        max_retries=3,
        timeout=10.0,
    )
    sim_429_before = sum(sim.state.ratelimited.values())
    log_start = len(sim.state.request_log)
    started = time.monotonic()
    if concurrent:
        await asyncio.gather(*(client.delete_channel(cid) for cid in ids))
    else:
        for cid in ids:
            await client.delete_channel(cid)
    seconds = time.monotonic() - started
    remaining = {str(c) for c in sim.state.channels}
    if remaining & set(ids):
        raise RuntimeError(f"{name}: {len(remaining & set(ids))} channels were not deleted")
    return PhaseResult(
        name=name,
        deleted=len(ids),
        seconds=seconds,
        client_429s=client.stats.ratelimited,
        sim_429s=sum(sim.state.ratelimited.values()) - sim_429_before,
        busiest_second=sim.state.busiest_second(log_start),
    )


async def main(args: argparse.Namespace) -> int:
    settings = SimSettings(
        global_limit=args.sim_global_limit, channel_limit=max(500, args.channels)
    )
    sim = DiscordSimulator(settings)
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.put(
                f"{sim.admin_url}/faults", json={"rest": {"latency_ms": args.latency_ms}}
            ) as resp:
                resp.raise_for_status()
            paced = await run_phase("paced, concurrent", http, sim, args, concurrent=True)
            one = await run_phase("one at a time", http, sim, args, concurrent=False)
    finally:
        await sim.stop()

    ceiling = float(args.sim_global_limit)
    print(
        f"deleting {args.channels} channels, simulator latency {args.latency_ms:g} ms, "
        f"global ceiling {ceiling:g}/s, client budget {args.budget:g}/s"
    )
    header = f"{'phase':<18} {'seconds':>8} {'req/s':>7} {'/ceiling':>9} {'/budget':>8} "
    print(header + f"{'429s':>5} {'max in 1s':>10}")
    for r in (paced, one):
        print(
            f"{r.name:<18} {r.seconds:>8.2f} {r.rate:>7.1f} {r.rate / ceiling:>9.2f} "
            f"{r.rate / args.budget:>8.2f} {r.sim_429s:>5d} {r.busiest_second:>10d}"
        )
    speedup = paced.rate / one.rate
    print(f"speed-up of paced concurrent over one at a time: {speedup:.2f}x")
    checks = [
        (
            f"paced rate >= 0.8 of budget ({paced.rate / args.budget:.2f})",
            paced.rate >= 0.8 * args.budget,
        ),
        (
            f"zero 429s (simulator counted {paced.sim_429s + one.sim_429s})",
            paced.sim_429s + one.sim_429s == 0,
        ),
        (f"speed-up >= 3x ({speedup:.2f}x)", speedup >= 3.0),
    ]
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    # One at a time is latency-bound: at most 1000/latency_ms requests per second.
    print(
        f"  note: one at a time cannot beat {1000 / args.latency_ms:.0f}/s at "
        f"{args.latency_ms:g} ms latency, so the speed-up is capped near "
        f"{args.budget * args.latency_ms / 1000:.1f}x by the budget"
    )
    return 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", type=float, default=40.0, help="client global budget, req/s")
    p.add_argument("--sim-global-limit", type=int, default=50, help="simulator ceiling, req/s")
    p.add_argument("--latency-ms", type=float, default=50.0, help="simulated REST latency")
    p.add_argument("--channels", type=int, default=400, help="channels per phase")
    args = p.parse_args()
    if args.budget <= 0 or args.channels <= 0 or args.latency_ms <= 0:
        p.error("--budget, --channels and --latency-ms must be positive")
    return args


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
