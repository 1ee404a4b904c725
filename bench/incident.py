"""Incident benchmark: the same outage without and with cdp-monitor, side by side.

Runs the scenario of `monitor.demo` (the run loop the demo narrates) twice in one
process (or once per `--runs` entry), with the same seed: clients (the openai SDK,
retrying as deployed clients do) send chat requests through CDP (the emulator, CDP
v4.6.5's real leak mechanism: creates queued on discordgo's bucket lock, 429s slept
out, a 20 s client timeout, timed-out attempts that still create their channels
later); Discord (the simulator) becomes
unstable for a while (or, `--kind tokens`, CDP runs out of user tokens while Discord is
fine), then recovers. The first run has nothing in front of CDP; the second has
cdp-monitor's gate, breaker and reconciler. Time is compressed the same way in both
(every CDP timer divided by 60 / attempt timeout: 1.5 s instead of 60 s, the 20 s
client timeout 0.5 s; probes every 250 ms), so one invocation takes about a minute.

    .venv/bin/python bench/incident.py [--rate 3] [--outage 10]
        [--kind slow|ramp|ratelimit|hung|tokens] [--attempt-timeout 1.5] [--seed 7]
        [--scenario incident|prefill] [--compare-limit | --runs without,with]
        [--keep DIR]

`--scenario prefill` starts with the guild 95% full of old leaked channels (475 of 500).
`--compare-limit` (`--runs without,breaker,limit`) runs CDP alone, cdp-monitor with its
breaker alone (`gate.adaptive_limit: false`) and with the breaker and the adaptive create
limit (`gate.adaptive_limit: true`); `--kind ramp` is the slow Discord that never fails,
`--kind ratelimit` the 429 storm. `--keep DIR` keeps each run's CDP log and state, and
the daemon's log (daemon.log, one `=== run` line before each run), in DIR.
The numbers are read from the simulator and the emulator (channels in the guild,
Discord's 429s, CDP's log), not from the daemon's view of them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from monitor.demo import (
    COMPARE_RUNS,
    DEFAULT_RUNS,
    OUTAGE_TEXT,
    RUN_KINDS,
    SCENARIOS,
    IncidentReport,
    ScenarioSettings,
    describe,
    format_summary,
    prefill_settings,
    run_incident,
    run_kinds,
)
from monitor.demo.events import Event, RunStarted
from monitor.errors import MonitorError


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def settings_from(args: argparse.Namespace) -> ScenarioSettings:
    prefilled = args.scenario == "prefill"
    prefill = args.prefill
    if prefill is None:
        prefill = round(0.95 * args.channel_limit) if prefilled else 0
    base = prefill_settings() if prefilled else ScenarioSettings()
    return replace(
        base,
        scenario=args.scenario,
        seed=args.seed,
        rate=args.rate,
        healthy=args.healthy,
        outage=args.outage,
        outage_kind=args.kind,
        after=args.after,
        attempt_timeout=args.attempt_timeout,
        client_retries=args.client_retries,
        max_concurrent_creates=args.max_concurrent_creates,
        when_open=args.when_open,
        channel_limit=args.channel_limit,
        prefill=prefill,
        tail=base.tail if args.tail is None else args.tail,
    )


def runs_from(args: argparse.Namespace) -> tuple[str, ...]:
    """The runs asked for, in order (checked: ValueError)."""
    if args.compare_limit and args.runs is not None:
        raise ValueError("--compare-limit is --runs without,breaker,limit: give one of them")
    names = COMPARE_RUNS if args.compare_limit else (args.runs or ",".join(DEFAULT_RUNS))
    return tuple(k.name for k in run_kinds(names))


async def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        runs = runs_from(args)
    except ValueError as exc:
        print(f"incident: {exc}", file=sys.stderr)
        return 2
    print(f"incident benchmark: {describe(settings)}")
    print(f"runs: {', '.join(RUN_KINDS[r].header for r in runs)}")
    print(f"machine: {machine()}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cdp-monitor-bench-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # The daemon's log would drown the table: keep it in a file.
        logging.basicConfig(
            filename=str(workdir / "daemon.log"),
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        try:
            report = await run_incident(settings, runs=runs, workdir=workdir, on_event=_mark)
        except MonitorError as exc:
            print(f"incident: {exc}", file=sys.stderr)
            return 1
    print(f"{len(report.runs)} runs took {time.monotonic() - started:.0f} s\n")
    print(format_summary(report, detail=True))
    for line in breaker_timing(report):
        print(line)
    if args.keep:
        print(f"logs and state: {args.keep}/<run>/ and {args.keep}/daemon.log")
    return 0


def _mark(event: Event) -> None:
    """A line in the daemon's log where each run starts, to tell the runs apart."""
    if isinstance(event, RunStarted):
        logging.getLogger("bench.incident").info("=== run %d: %s", event.number, event.run)


def breaker_timing(report: IncidentReport) -> list[str]:
    """When the breaker first opened, against the outage's wall-clock window (a timing
    figure: the tests only check it opened between the outage and recovery events),
    one line per run with cdp-monitor."""
    s = report.settings
    lines = []
    for m in report.runs:
        if not m.with_monitor:
            continue
        name = RUN_KINDS[m.run].header
        if m.breaker_opened_at is None:
            lines.append(f"breaker ({name}): never opened")
            continue
        inside = s.healthy < m.breaker_opened_at < s.recovery_at
        lines.append(
            f"breaker ({name}): first opened {m.breaker_opened_at - s.healthy:.1f} s into "
            f"the {s.outage:g} s outage ({'inside' if inside else 'OUTSIDE'} the outage window)"
        )
    return lines


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    d = ScenarioSettings()
    p.add_argument("--scenario", choices=SCENARIOS, default=d.scenario)
    p.add_argument("--rate", type=float, default=d.rate, help="client requests per second")
    p.add_argument("--healthy", type=float, default=d.healthy, help="seconds before the outage")
    p.add_argument("--outage", type=float, default=d.outage, help="outage length, seconds")
    p.add_argument(
        "--kind",
        choices=sorted(OUTAGE_TEXT),
        default=d.outage_kind,
        help="\n".join(f"{k}: {v}" for k, v in OUTAGE_TEXT.items()),
    )
    p.add_argument("--after", type=float, default=d.after, help="seconds of load after recovery")
    p.add_argument(
        "--tail",
        type=float,
        default=None,
        help="at most this long after the load, waiting for a clean guild\n"
        f"(default {d.tail:g} s, {prefill_settings().tail:g} s for prefill)",
    )
    p.add_argument(
        "--attempt-timeout",
        type=float,
        default=d.attempt_timeout,
        help="CDP's per-attempt create timeout, seconds (60 in real CDP); every CDP\n"
        "timer is divided by the same factor",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--client-retries", type=int, default=d.client_retries)
    p.add_argument("--max-concurrent-creates", type=int, default=d.max_concurrent_creates)
    p.add_argument(
        "--when-open",
        choices=("reject", "hold"),
        default=d.when_open,
        help=f"gate.when_open: refuse creates at once, or hold them up to {d.hold_max:g} s",
    )
    p.add_argument("--channel-limit", type=int, default=d.channel_limit)
    p.add_argument(
        "--runs",
        default=None,
        help=f"comma-separated runs, in order, among {', '.join(RUN_KINDS)}\n"
        f"(default {','.join(DEFAULT_RUNS)}; with: cdp-monitor's default gate)",
    )
    p.add_argument(
        "--compare-limit",
        action="store_true",
        help=f"--runs {','.join(COMPARE_RUNS)}: CDP alone, the breaker alone\n"
        "(gate.adaptive_limit: false), the breaker and the adaptive create limit",
    )
    p.add_argument("--keep", default=None, help="keep the runs' logs and state in this directory")
    p.add_argument(
        "--prefill",
        type=int,
        default=None,
        help="old leaked channels seeded first (default: 95%% of the limit for prefill)",
    )
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
