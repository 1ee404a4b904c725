"""Gate overhead: the same load sent straight to the CDP emulator and through the gate.

Three workloads, each at concurrency 32, each sent both ways in one run:

- `models`: `GET /v1/models`; touches no Discord, so it is the pure proxy cost.
- `chat`:   `POST /v1/chat/completions` with a seeded `channelId` (no channel is
  created, so the gate passes it through after parsing the JSON body); the emulator
  posts two messages to the Discord simulator, `reply_delay` 0.
- `stream`: the same with `"stream": true`: an SSE reply in 5 chunks, 2 ms apart.

Process layout, and why. The machine has 2 cores and everything here is asyncio on one
thread per process, so the load generator, the emulator and the gate must not share an
event loop: a shared loop would charge the client's CPU to the proxy and vice versa. The
bench process runs only the client (one aiohttp session, connector limit 64). It starts
two server processes by re-running this file with `--serve`: `upstream` (the Discord
simulator with its rate limits lifted, plus the CDP emulator; together they stand in for
CDP and Discord) and `gate` (the gate alone, built as the daemon builds it). The gate
being its own process is how it runs in production: a sidecar beside CDP, not inside it.
On 2 cores the gated path has three busy processes against the direct path's two, so the
throughput ratio includes the gate's CPU competing with CDP's for the cores, which is
what a 2-core host running both would see.

Noise. Each workload gets a warm-up both ways, then `--rounds` rounds that alternate the
order (direct, gate | gate, direct | ...), so drift hits both alike; for each path the
round with the best throughput counts (noise only ever slows a run down), and its own
p50/p99 are reported. Latency is per request, from send to the last body byte, on the
client. CPU time of each server process is read from /proc around each run; `cpu/req`
is a process's own cost per request, whatever the scheduling did.

Reading the latency. Both paths run CPU-bound at concurrency 32, where latency is about
concurrency / throughput (Little's law): the p50 added at c=32 is mostly the throughput
lost to the gate's CPU, queued 32 deep. The `added p50 c=1` column (`--unloaded`
requests one at a time, each way) is the hop's own latency, with no queue.

    .venv/bin/python bench/gate_overhead.py [--requests 3000] [--rounds 2]

Targets (per workload): throughput gate/direct >= 0.7, p50 added latency <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `monitor` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

CONCURRENCY = 32
TICKS = os.sysconf("SC_CLK_TCK")
MIN_RATIO = 0.7
MAX_ADDED_P50_MS = 1.0
MESSAGES = [{"role": "user", "content": "hello there, how are you today?"}]


# -- server processes ----------------------------------------------------------------------


async def _serve_until_terminated(ready: dict[str, Any]) -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps(ready), flush=True)
    return stop


async def serve_upstream(chunk_delay: float) -> None:
    """The Discord simulator (rate limits lifted) and the CDP emulator in front of it."""
    from monitor.sim.cdp import CdpEmulator, CdpSettings
    from monitor.sim.discord import DiscordSimulator, RouteLimit, SimSettings

    # Discord's real limits (5 messages / 5 s per channel, 50/s global) would make the
    # emulator wait out 429s; this measures the proxy, not Discord's pacing.
    unlimited = {
        route: RouteLimit(limit.bucket, 10**9, limit.per)
        for route, limit in SimSettings().route_limits.items()
    }
    sim = DiscordSimulator(SimSettings(global_limit=10**9, route_limits=unlimited))
    await sim.start("127.0.0.1", 0)
    emulator = CdpEmulator(
        CdpSettings(
            discord_api_base=sim.api_base,
            guild_id=sim.settings.guild_id,
            token=sim.settings.token,
            reply_delay=0.0,
            stream_chunks=5,
            stream_chunk_delay=chunk_delay,
            auto_delete=0.0,
        )
    )
    await emulator.start("127.0.0.1", 0)
    stop = await _serve_until_terminated(
        {
            "sim_admin_url": sim.admin_url,
            "guild_id": str(sim.settings.guild_id),
            "cdp_url": emulator.base_url,
        }
    )
    await stop.wait()
    await emulator.stop()
    await sim.stop()


async def serve_gate(upstream: str) -> None:
    """The gate as the daemon runs it: same constructor, same runner options."""
    from prometheus_client import CollectorRegistry

    from monitor.clock import SYSTEM_CLOCK
    from monitor.config import parse_config
    from monitor.gate import Gate, new_upstream_session
    from monitor.health.owner import Health
    from monitor.metrics import Metrics

    config = parse_config(
        "discord: {token: sim-token, guild_id: '1100000000000000001'}\n"
        f"gate: {{listen: '127.0.0.1:0', upstream: '{upstream}'}}\n"
    )
    health = Health.from_config(config, clock=SYSTEM_CLOCK)  # never evaluated: closed
    session = new_upstream_session()
    gate = Gate(
        config.gate,
        health=health,
        metrics=Metrics(CollectorRegistry()),
        clock=SYSTEM_CLOCK,
        logger=logging.getLogger("bench.gate"),
        session=session,
        samples=False,  # as measured before: the proxy path, not the window's appends
    )
    runner = web.AppRunner(gate.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    stop = await _serve_until_terminated({"gate_url": f"http://127.0.0.1:{port}"})
    await stop.wait()
    await runner.cleanup()
    await session.close()


@dataclass
class Server:
    proc: subprocess.Popen[str]
    info: dict[str, Any]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


def start_server(*args: str, script: Path = Path(__file__)) -> Server:
    proc = subprocess.Popen(
        [sys.executable, str(script), "--serve", *args], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"server {args[0]} exited before it was ready")
    return Server(proc, json.loads(line))


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@contextmanager
def servers(chunk_delay: float, baseline: Path | None) -> Iterator[dict[str, Server]]:
    """The upstream, the gate and, with `baseline`, the baseline checkout's gate (its own
    copy of this script imports its own `monitor`)."""
    started = {"upstream": start_server("upstream", "--chunk-delay", str(chunk_delay))}
    cdp_url = started["upstream"].info["cdp_url"]
    try:
        started["gate"] = start_server("gate", "--upstream", cdp_url)
        if baseline is not None:
            script = baseline / "bench" / "gate_overhead.py"
            started["before"] = start_server("gate", "--upstream", cdp_url, script=script)
        yield started
    finally:
        for server in reversed(started.values()):
            stop_server(server)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


# -- load generator ------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    method: str
    path: str
    body: bytes | None
    stream: bool


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    latencies: list[float]  # seconds, sorted
    cpu: dict[str, float]  # seconds of CPU each server process used during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def cpu_us(self, process: str) -> float:
        return self.cpu[process] / self.requests * 1e6

    def ms(self, q: float) -> float:
        index = min(len(self.latencies) - 1, round(q * (len(self.latencies) - 1)))
        return self.latencies[index] * 1000


def workloads(channel_id: str) -> list[Workload]:
    chat = {"model": "gpt-4o", "messages": MESSAGES, "channelId": channel_id}
    stream = {**chat, "stream": True}
    return [
        Workload("models", "GET", "/v1/models", None, False),
        Workload("chat", "POST", "/v1/chat/completions", json.dumps(chat).encode(), False),
        Workload("stream", "POST", "/v1/chat/completions", json.dumps(stream).encode(), True),
    ]


async def load(
    http: aiohttp.ClientSession,
    base: str,
    work: Workload,
    n: int,
    procs: dict[str, Server],
    concurrency: int = CONCURRENCY,
) -> Run:
    """`n` requests from `concurrency` workers, each sending its next as one completes."""
    url = base + work.path
    headers = {"Content-Type": "application/json"} if work.body is not None else {}
    latencies: list[float] = []
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            async with http.request(work.method, url, data=work.body, headers=headers) as resp:
                body = await resp.read()
            latencies.append(time.perf_counter() - t0)
            if resp.status != 200 or (work.stream and not body.endswith(b"data: [DONE]\n\n")):
                raise RuntimeError(f"{work.name} {url}: HTTP {resp.status}: {body[:200]!r}")

    cpu0 = {name: p.cpu() for name, p in procs.items()}
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    cpu = {name: p.cpu() - cpu0[name] for name, p in procs.items()}
    return Run(n, seconds, sorted(latencies), cpu)


async def seed_channel(http: aiohttp.ClientSession, upstream: Server) -> str:
    url = f"{upstream.info['sim_admin_url']}/guilds/{upstream.info['guild_id']}/channels"
    async with http.post(url, json={"count": 1, "prefix": "bench-"}) as resp:
        resp.raise_for_status()
        channel_id: str = (await resp.json())["channels"][0]
        return channel_id


@dataclass(frozen=True)
class Result:
    direct: Run
    gate: Run
    direct_c1: Run  # unloaded (concurrency 1): the hop's own latency, no queueing
    gate_c1: Run
    before: Run | None = None  # the baseline's gate, measured in the same rounds
    before_c1: Run | None = None


async def bench(args: argparse.Namespace) -> dict[str, Result]:
    results: dict[str, Result] = {}
    with servers(args.chunk_delay, args.baseline) as procs:
        bases = {
            "direct": procs["upstream"].info["cdp_url"],
            "gate": procs["gate"].info["gate_url"],
        }
        if "before" in procs:
            bases["before"] = procs["before"].info["gate_url"]
        order = list(bases)
        connector = aiohttp.TCPConnector(limit=2 * CONCURRENCY)
        async with aiohttp.ClientSession(connector=connector) as http:
            channel_id = await seed_channel(http, procs["upstream"])
            for work in workloads(channel_id):
                for path in bases:
                    await load(http, bases[path], work, args.warmup, procs)
                runs: dict[str, list[Run]] = {path: [] for path in bases}
                for i in range(args.rounds):
                    # Rotate the order each round, so drift hits every path alike.
                    for path in order[i % len(order) :] + order[: i % len(order)]:
                        run = await load(http, bases[path], work, args.requests, procs)
                        runs[path].append(run)
                c1 = {
                    path: await load(http, bases[path], work, args.unloaded, procs, 1)
                    for path in bases
                }
                best = {path: max(rs, key=lambda r: r.rps) for path, rs in runs.items()}
                results[work.name] = Result(
                    best["direct"],
                    best["gate"],
                    c1["direct"],
                    c1["gate"],
                    best.get("before"),
                    c1.get("before"),
                )
                spread = {path: [round(r.rps) for r in rs] for path, rs in runs.items()}
                print(f"  {work.name}: req/s per round {spread}", file=sys.stderr, flush=True)
    return results


def report(results: dict[str, Result], args: argparse.Namespace) -> bool:
    print(
        f"\ngate overhead: concurrency {CONCURRENCY}, {args.requests} requests per run, "
        f"best of {args.rounds} alternating rounds per path, {os.cpu_count()} cores, loopback"
    )
    header = (
        f"{'workload':<8} {'direct req/s':>12} {'gate req/s':>10} {'ratio':>5}  "
        f"{'direct p50/p99':>14}  {'gate p50/p99':>13}  {'added p50/p99':>13}  "
        f"{'added p50 c=1':>13}  {'cpu/req cdp':>11} {'gate':>6}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    verdicts: list[tuple[str, bool]] = []
    for name, r in results.items():
        d, g = r.direct, r.gate
        ratio = g.rps / d.rps
        added50, added99 = g.ms(0.5) - d.ms(0.5), g.ms(0.99) - d.ms(0.99)
        added_c1 = r.gate_c1.ms(0.5) - r.direct_c1.ms(0.5)
        print(
            f"{name:<8} {d.rps:>12.0f} {g.rps:>10.0f} {ratio:>5.2f}  "
            f"{d.ms(0.5):>6.2f}/{d.ms(0.99):<7.2f}  {g.ms(0.5):>6.2f}/{g.ms(0.99):<6.2f}  "
            f"{added50:>+6.2f}/{added99:<+6.2f}  {added_c1:>+13.2f}  "
            f"{d.cpu_us('upstream'):>8.0f} µs {g.cpu_us('gate'):>3.0f} µs"
        )
        verdicts.append(
            (f"{name}: throughput gate/direct {ratio:.2f} >= {MIN_RATIO}", ratio >= MIN_RATIO)
        )
        verdicts.append(
            (
                f"{name}: p50 added {added50:+.2f} ms <= {MAX_ADDED_P50_MS:g} ms",
                added50 <= MAX_ADDED_P50_MS,
            )
        )
    if any(r.before is not None for r in results.values()):
        report_baseline(results)
    print("\n(latencies in ms; `added` = gate - direct; `c=1`: one request at a time,")
    print(f" {args.unloaded} requests per path; `cpu/req`: server process CPU per request)\n")
    for text, ok in verdicts:
        print(f"  {'met   ' if ok else 'MISSED'}  {text}")
    return all(ok for _, ok in verdicts)


def report_baseline(results: dict[str, Result]) -> None:
    """Before (the baseline's gate) and after (this gate), from the same rounds."""
    header = (
        f"{'workload':<8} {'ratio before':>12} {'after':>6}  {'gate cpu/req before':>19} "
        f"{'after':>8}  {'added p50 c=1 before':>20} {'after':>6}"
    )
    print(f"\nbefore (--baseline) and after, same run:\n{header}\n{'-' * len(header)}")
    for name, r in results.items():
        if r.before is None or r.before_c1 is None:
            continue
        d = r.direct
        print(
            f"{name:<8} {r.before.rps / d.rps:>12.2f} {r.gate.rps / d.rps:>6.2f}  "
            f"{r.before.cpu_us('before'):>16.0f} µs {r.gate.cpu_us('gate'):>5.0f} µs  "
            f"{r.before_c1.ms(0.5) - r.direct_c1.ms(0.5):>+20.2f} "
            f"{r.gate_c1.ms(0.5) - r.direct_c1.ms(0.5):>+6.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per run (default 3000)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--warmup", type=int, default=300, help="per path per workload")
    parser.add_argument("--unloaded", type=int, default=200, help="requests at concurrency 1")
    parser.add_argument("--chunk-delay", type=float, default=0.002, help="SSE chunk gap, s")
    parser.add_argument("--serve", choices=("upstream", "gate"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier version: its gate is measured in the same run",
    )
    args = parser.parse_args()
    if args.serve == "upstream":
        asyncio.run(serve_upstream(args.chunk_delay))
        return 0
    if args.serve == "gate":
        from monitor import eventloop

        eventloop.run(serve_gate(args.upstream))  # the loop `cdp-monitor run` uses
        return 0
    started = time.perf_counter()
    ok = report(asyncio.run(bench(args)), args)
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s; all targets {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
