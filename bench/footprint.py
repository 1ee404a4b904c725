"""Footprint of the daemon at default intervals, beside a bare Python baseline.

Starts the Discord simulator, then in the same run two processes side by side for the same
wall time: `cdp-monitor run` (default probe/evaluation intervals, gate off, no CDP) and a
bare `python -c "import aiohttp, prometheus_client"` that just sleeps. Prints each one's
peak RSS and CPU share of one core, read from /proc.

    python bench/footprint.py [--seconds 60]

Targets: daemon RSS <= 60 MB, CPU <= 1% of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sim = subprocess.Popen(
            [sys.executable, "-m", "monitor", "sim"], stdout=subprocess.PIPE, text=True
        )
        assert sim.stdout is not None
        urls = json.loads(sim.stdout.readline())
        config = Path(tmp) / "monitor.yaml"
        config.write_text(
            "discord:\n"
            f"  token: {urls['token']}\n"
            f'  guild_id: "{urls["guild_id"]}"\n'
            f"  api_base: {urls['api_base']}\n"
            "probes:\n  cdp: {enabled: false}\n"
            "gate: {enabled: false}\n"
            'control: {listen: "127.0.0.1:0"}\n'
            f"state_dir: {tmp}/state\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(config)],
            stderr=subprocess.DEVNULL,
        )
        bare = subprocess.Popen(
            [sys.executable, "-c", "import time, aiohttp, prometheus_client; time.sleep(10**6)"]
        )
        try:
            time.sleep(
                args.warmup
            )  # imports and the first probe round are start-up, not steady state
            procs = {"cdp-monitor run": daemon.pid, "bare python + imports": bare.pid}
            cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
            peak = {name: 0.0 for name in procs}
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                for name, pid in procs.items():
                    peak[name] = max(peak[name], rss_mb(pid))
                time.sleep(1.0)
            elapsed = time.monotonic() - start
            cpu = {name: (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in procs.items()}
            if daemon.poll() is not None:
                print("the daemon exited during the run", file=sys.stderr)
                return 1
        finally:
            for proc in (daemon, bare, sim):
                proc.terminate()
            for proc in (daemon, bare, sim):
                proc.wait(timeout=10)

    print(f"footprint over {elapsed:.0f}s at default intervals (after {args.warmup:.0f}s warm-up)")
    print(f"{'process':<24} {'peak RSS MB':>12} {'CPU s':>8} {'CPU % of a core':>16}")
    for name in procs:
        used = cpu[name] * elapsed
        print(f"{name:<24} {peak[name]:>12.1f} {used:>8.2f} {cpu[name] * 100:>16.3f}")
    d = "cdp-monitor run"
    print(
        f"daemon/bare RSS ratio {peak[d] / peak['bare python + imports']:.2f}; targets: "
        f"RSS <= 60 MB {'met' if peak[d] <= 60 else 'MISSED'}, "
        f"CPU <= 1% {'met' if cpu[d] <= 0.01 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
