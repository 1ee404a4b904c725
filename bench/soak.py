"""Soak: the daemon (a real `python -m monitor run` process) in front of the CDP emulator,
a steady chat load through its gate, and faults rotating for a while in compressed time:
Discord 5xx, shared 429 storms, 429s on the create route, a Cloudflare ban, gateway drops,
op 7, a CDP restart with Coze silent (the first one while the daemon is down), an
operator pause, and the daemon SIGKILLed and restarted every few minutes. Then the faults
clear, the load stops, and after a recovery period it prints the invariants and figures
in one table, measured from the simulator, the emulator, the audit log and /proc (never
from the daemon's own counters; /status only for the breaker state).

    PYTHONPATH=$PWD .venv/bin/python bench/soak.py --minutes 3 [--min-age 15] [--workdir D]

Exits 1 when an invariant fails. How each is counted is said next to it in the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from monitor import USER_AGENT
from monitor.demo.settings import CREATE_ROUTE, ScenarioSettings, daemon_config_dict
from monitor.sim.cdp import CdpEmulator, CdpSettings
from monitor.sim.discord import DiscordSimulator, SimSettings
from monitor.vocab import CHANNEL_PREFIX, OPEN_STATES

STATUS_EVERY = 0.2  # seconds between /status samples
PROC_EVERY = 1.0  # seconds between /proc samples
CHAT = "/v1/chat/completions"
SOAK_HEADER = "X-Soak-Request"  # the client request's number, to find when it was sent
# The recovery period lasts at least this many of CDP's whole create retries (an abandoned
# attempt's channel can appear that late) before the end is judged.
RECOVERY_LEAST = 3
# reconcile.min_age: its default (600 s) compressed as much as CDP's timers are here (a
# 60 s create attempt takes 1.5 s: 40x). Until CDP answers, the gate's ledger cannot
# name a request's channel, so min_age is all that protects an empty channel whose
# request is still open; the demo's 3 s (200x) is shorter than a 429 storm's retries.
MIN_AGE = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now() -> float:
    return time.monotonic()


# --- what the stand-ins saw ----------------------------------------------------------


@dataclass
class Seen:
    """Everything measured outside the daemon, with monotonic times."""

    discord: list[tuple[float, str, str, int, bool]] = field(default_factory=list)
    # (t, method, path, status, by the daemon): every REST request the simulator served
    deletes: list[tuple[float, int, str, int, bool]] = field(default_factory=list)
    # (t, channel id, name, status, by the daemon)
    cdp_uses: list[tuple[float, int, int]] = field(default_factory=list)
    # (t, channel id, status): CDP's own non-DELETE requests on a channel
    creates: list[tuple[float, int]] = field(default_factory=list)
    # (t, client request number or -1): chat requests CDP received
    sent: dict[int, float] = field(default_factory=dict)  # client request number -> t
    open_rids: dict[str, float] = field(default_factory=dict)  # CDP requests in flight
    # (request ids lowercased, as Discord stores the channel names that carry them)
    rid_spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    status: list[tuple[float, str | None, Any, bool]] = field(default_factory=list)
    # (t, breaker state or None when unreachable, since, paused)


def sim_recorder(sim: DiscordSimulator, seen: Seen) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/"):
            return await handler(request)
        t, status = now(), 500
        parts = path.split("/")
        cid = (
            int(parts[4]) if len(parts) > 4 and parts[3] == "channels" and parts[4].isdigit() else 0
        )
        channel = sim.state.channels.get(cid) if cid else None
        name = channel.name if channel is not None else ""
        mine = request.headers.get("User-Agent", "") == USER_AGENT
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            seen.discord.append((t, request.method, path, status, mine))
            if cid and request.method == "DELETE" and len(parts) == 5:
                seen.deletes.append((t, cid, name, status, mine))
            elif cid and not mine:
                seen.cdp_uses.append((t, cid, status))

    return record


def cdp_recorders(seen: Seen) -> tuple[Any, Any]:
    """Outermost: when CDP received each chat request. Innermost: its request id's span
    (the id names the channel the request creates)."""
    try:
        from monitor.sim.cdp.handlers import REQUEST_ID
    except ImportError:  # the emulator moved it: spans unknown, the 10003 check remains
        REQUEST_ID = None

    @web.middleware
    async def outer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and request.path == CHAT:
            number = request.headers.get(SOAK_HEADER, "")
            seen.creates.append((now(), int(number) if number.isdigit() else -1))
        return await handler(request)

    @web.middleware
    async def inner(request: web.Request, handler: Any) -> web.StreamResponse:
        rid = REQUEST_ID.get(None) if REQUEST_ID is not None else None
        if rid is None or request.path != CHAT:
            return await handler(request)
        rid = rid.lower()  # as in the channel's name: Discord lowercases names
        seen.open_rids[rid] = now()
        try:
            return await handler(request)
        finally:
            seen.rid_spans[rid] = (seen.open_rids.pop(rid), now())

    return outer, inner


# --- the daemon as a process ---------------------------------------------------------


@dataclass
class Incarnation:
    pid: int
    started: float
    ended: float | None = None
    ready: bool = False  # samples are taken from readiness on (imports are not the soak)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss kB, fds)


class DaemonProc:
    def __init__(self, config: Path, log: Path, control_url: str, token: str) -> None:
        self.config, self.log_path = config, log
        self.control_url, self.headers = control_url, {"Authorization": f"Bearer {token}"}
        self.proc: asyncio.subprocess.Process | None = None
        self.lives: list[Incarnation] = []

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "monitor", "run", "-c", str(self.config),
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        self.lives.append(Incarnation(self.proc.pid, now()))
        deadline = now() + 60
        while now() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: see {self.log_path}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.control_url + "/readyz") as resp:
                    if resp.status == 200:
                        self.lives[-1].ready = True
                        self.sample_proc()
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("daemon not ready within 60 s")

    async def end(self, sig: int) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.lives[-1].ended = now()

    def sample_proc(self) -> None:
        if self.proc is None or self.proc.returncode is not None or not self.lives[-1].ready:
            return
        pid = self.proc.pid
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return
        rss = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
        self.lives[-1].samples.append((now(), rss, fds))


# --- the run -------------------------------------------------------------------------


def fault_rotation(slot: float) -> list[tuple[str, dict[str, Any], str]]:
    """(name, PUT /_sim/faults body, what else: "" | "cdp" (restart CDP) | "pause" (an
    operator pause through the control API))."""
    storm = {"shared_429_rate": 0.6, "shared_429_retry_after": 2.0}
    # A 429 storm on the create route alone (scope "shared", as Discord answers a
    # route another app's load exhausted): what CDP's creates run into.
    route_429 = {"shared_429_rate": 0.9, "shared_429_retry_after": 1.0, "routes": [CREATE_ROUTE]}
    return [
        ("Discord 5xx (50%)", {"rest": {"error_rate": 0.5, "error_status": 503}}, ""),
        ("shared 429 storm", {"rest": storm}, ""),
        ("429s on the create route", {"rest": route_429}, ""),
        ("Cloudflare ban", {"rest": {"cloudflare_ban_s": slot}}, ""),
        ("gateway drops (4000)", {"gateway": {"close_code": 4000}}, ""),
        ("gateway op 7", {"gateway": {"reconnect": True}}, ""),
        ("CDP restart + Coze silent", {"coze": {"silence": True}}, "cdp"),
        ("operator pause", {}, "pause"),
    ]


class Soak:
    def __init__(
        self, minutes: float, rate: float, workdir: Path, seed: int, min_age: float
    ) -> None:
        self.total = minutes * 60
        self.min_age = min_age
        self.rate, self.workdir, self.seed = rate, workdir, seed
        self.seen = Seen()
        self.load: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []
        self.t0 = now()
        self.settings = ScenarioSettings(seed=seed, rate=rate)
        self.sim = DiscordSimulator(SimSettings(channel_limit=500, seed=seed))
        self.sim.app.middlewares.insert(0, sim_recorder(self.sim, self.seen))
        cdp_log = workdir / "cdp.log"
        cdp_log.touch()
        self.cdp_log = cdp_log
        self.cdp: CdpEmulator | None = None
        self.daemon: DaemonProc | None = None
        self.budget = 0.0
        self.end_status: tuple[float, str | None, Any, bool] | None = None
        self.leaked: list[int] = []
        self.leaked_names: dict[int, str] = {}
        self.daemon_lock = asyncio.Lock()  # one SIGKILL-and-start at a time

    def mark(self, what: str) -> None:
        self.timeline.append((now() - self.t0, what))
        print(f"[{now() - self.t0:7.1f}s] {what}", flush=True)

    async def start(self, http: aiohttp.ClientSession) -> None:
        await self.sim.start("127.0.0.1", 0)
        s = self.settings
        # As the demo: CDP's timers compressed, the simulator's Coze answering over
        # CDP's own gateway session.
        cdp_settings = CdpSettings.for_simulator(
            self.sim,
            time_scale=s.time_scale,
            reply_delay=s.reply_delay,
            auto_delete=s.auto_delete * s.time_scale,  # CHANNEL_AUTO_DEL_TIME, CDP's seconds
            stay_active_enable="0",
            log_path=self.cdp_log,
            seed=self.seed,
        )
        cdp = self.cdp = CdpEmulator(cdp_settings)
        outer, inner = cdp_recorders(self.seen)
        cdp.app.middlewares.insert(0, outer)
        cdp.app.middlewares.append(inner)
        await cdp.start("127.0.0.1", 0)
        await self.clear_sim_faults(http)
        config = daemon_config_dict(
            s, self.sim, cdp, state_dir=self.workdir / "state", cdp_log=self.cdp_log
        )
        gate_port, control_port = free_port(), free_port()
        config["gate"]["listen"] = f"127.0.0.1:{gate_port}"
        config["control"]["listen"] = f"127.0.0.1:{control_port}"
        config["reconcile"]["min_age"] = f"{self.min_age}s"
        config["reconcile"]["emergency_min_age"] = f"{min(self.min_age, 3.0)}s"
        self.budget = float(config["discord"]["global_rate"])
        self.gate_url = f"http://127.0.0.1:{gate_port}"
        path = self.workdir / "monitor.yaml"
        path.write_text(yaml.safe_dump(config))
        self.daemon = DaemonProc(
            path,
            self.workdir / "daemon.log",
            f"http://127.0.0.1:{control_port}",
            config["control"]["token"],
        )
        await self.daemon.start(http)
        self.mark(f"daemon pid {self.daemon.lives[-1].pid} ready")

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.end(signal.SIGTERM)
        if self.cdp is not None:
            await self.cdp.stop()
        await self.sim.stop()

    # -- background loops ------------------------------------------------------------

    async def one_chat(self, http: aiohttp.ClientSession, n: int) -> None:
        body = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": f"soak {n}"}],
            "stream": n % 2 == 0,
        }
        self.seen.sent[n] = now()
        try:
            async with http.post(
                self.gate_url + CHAT,
                json=body,
                headers={SOAK_HEADER: str(n)},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                await resp.read()
                self.load[str(resp.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.load[type(exc).__name__] += 1

    async def run_load(self, http: aiohttp.ClientSession, until: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while now() < until:
            task = asyncio.create_task(self.one_chat(http, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(1 / self.rate)
        if tasks:
            await asyncio.wait(tasks)

    async def watch_status(self, http: aiohttp.ClientSession) -> None:
        assert self.daemon is not None
        while True:
            if len(self.seen.status) % round(PROC_EVERY / STATUS_EVERY) == 0:
                self.daemon.sample_proc()
            t = now()
            try:
                async with http.get(
                    self.daemon.control_url + "/status",
                    headers=self.daemon.headers,
                    timeout=aiohttp.ClientTimeout(total=2),
                ) as resp:
                    data = await resp.json()
                b = data["breaker"]
                self.seen.status.append((t, b["state"], b["since"], bool(data["paused"])))
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                self.seen.status.append((t, None, None, False))
            await asyncio.sleep(STATUS_EVERY)

    async def faults(self, http: aiohttp.ClientSession, start: float, end: float) -> None:
        assert self.cdp is not None
        span = end - start
        slot = max(14.0, min(45.0, span / 8))
        on = slot * 0.7
        rotation = fault_rotation(on)
        i = cdp_restarts = 0
        # Each slot at its own time: a slow step (the daemon's restart) shifts none.
        while (at := start + i * slot) + slot <= end + 1:
            await asyncio.sleep(max(0.0, at - now()))
            name, body, extra = rotation[i % len(rotation)]
            i += 1
            async with http.put(self.sim.admin_url + "/faults", json=body) as resp:
                resp.raise_for_status()
            if extra == "cdp":
                # The first CDP restart (every other one) while the daemon is down: it
                # must learn of it from CDP's log when it is back.
                await self.restart_cdp(http, daemon_down=cdp_restarts % 2 == 0)
                cdp_restarts += 1
            elif extra == "pause":
                await self.control(http, "/pause", {"for": f"{on:.0f}s", "reason": "soak"})
            self.mark(f"fault on: {name}")
            await asyncio.sleep(max(0.0, at + on - now()))
            await self.clear_sim_faults(http)
            if extra == "pause":
                await self.control(http, "/resume", {})
            self.mark(f"fault off: {name}")

    async def clear_sim_faults(self, http: aiohttp.ClientSession) -> None:
        """No faults, and Coze answering after `reply_delay`: later than CDP's (scaled)
        1 s sleep after the prompt, after which CDP starts listening (as the demo)."""
        async with http.delete(self.sim.admin_url + "/faults") as resp:
            resp.raise_for_status()
        body = {"coze": {"delay_ms": self.settings.reply_delay * 1000}}
        async with http.put(self.sim.admin_url + "/faults", json=body) as resp:
            resp.raise_for_status()

    async def restart_cdp(self, http: aiohttp.ClientSession, *, daemon_down: bool) -> None:
        """CDP's process dies and comes back: requests dropped, delete timers and create
        goroutines gone. (Coze's silence is the simulator's: it plays Coze.) With
        `daemon_down` the daemon is SIGKILLed first and started once CDP is back."""
        assert self.cdp is not None and self.daemon is not None
        if not daemon_down:
            async with http.post(self.cdp.admin_url + "/restart") as resp:
                self.mark(f"CDP restart: {resp.status} {await resp.text()}")
            return
        async with self.daemon_lock:
            await self.daemon.end(signal.SIGKILL)
            self.mark(f"daemon pid {self.daemon.lives[-1].pid} SIGKILLed")
            async with http.post(self.cdp.admin_url + "/restart") as resp:
                self.mark(f"CDP restart (daemon down): {resp.status} {await resp.text()}")
            while not self.cdp.running:
                await asyncio.sleep(0.05)
            await self.daemon.start(http)
            self.mark(f"daemon pid {self.daemon.lives[-1].pid} ready")

    async def control(self, http: aiohttp.ClientSession, path: str, body: Any) -> None:
        """POST to the control API, again while the daemon is down (SIGKILLed)."""
        assert self.daemon is not None
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                url = self.daemon.control_url + path
                async with http.post(url, json=body, headers=self.daemon.headers) as resp:
                    self.mark(f"control {path}: {resp.status}")
                    return
            await asyncio.sleep(0.2)

    async def killer(self, http: aiohttp.ClientSession, every: float, until: float) -> None:
        assert self.daemon is not None
        t = self.t0 + every
        while t < until:
            await asyncio.sleep(max(0.0, t - now()))
            async with self.daemon_lock:
                await self.daemon.end(signal.SIGKILL)
                self.mark(f"daemon pid {self.daemon.lives[-1].pid} SIGKILLed")
                await self.daemon.start(http)
                self.mark(f"daemon pid {self.daemon.lives[-1].pid} ready")
            t += every

    async def recover(self, least: float, until: float) -> None:
        """At least `least` seconds (late channels of abandoned attempts still appear),
        then until the breaker is closed and no cdp-chat- channel is left for 3 s in a
        row, or `until`."""
        clean_since: float | None = None
        while now() < until:
            last = self.seen.status[-1] if self.seen.status else None
            closed = last is not None and last[1] == "closed" and not last[3]
            if not (closed and not self.leftover()):
                clean_since = None
            elif clean_since is None:
                clean_since = now()
            elif now() >= least and now() - clean_since >= 3.0:
                return
            await asyncio.sleep(0.5)

    def leftover(self) -> list[int]:
        open_names = {CHANNEL_PREFIX + rid for rid in self.seen.open_rids}
        return [
            c.id
            for c in self.sim.state.channels.values()
            if c.name.startswith(CHANNEL_PREFIX) and c.name not in open_names
        ]

    async def run(self) -> int:
        async with aiohttp.ClientSession() as http:
            try:
                await self.start(http)
                self.t0 = now()
                faults_start, faults_end = self.t0 + 0.08 * self.total, self.t0 + 0.7 * self.total
                load_end = self.t0 + 0.8 * self.total
                kill_every = max(40.0, self.total / 6)
                watcher = asyncio.create_task(self.watch_status(http))
                loops = [
                    self.run_load(http, load_end),
                    self.faults(http, faults_start, faults_end),
                    self.killer(http, kill_every, faults_end),
                ]
                await asyncio.gather(*loops)
                self.mark("load drained; recovery period")
                settle = RECOVERY_LEAST * self.settings.attempt_timeout * self.settings.attempts
                await self.recover(now() + settle, max(now() + 60, self.t0 + self.total))
                self.mark("recovery over")
                await asyncio.sleep(1.0)
                self.end_status = self.seen.status[-1] if self.seen.status else None
                self.leaked = self.leftover()
                self.leaked_names = {c: self.sim.state.channels[c].name for c in self.leaked}
                assert self.daemon is not None
                self.daemon.sample_proc()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            finally:
                await self.stop()
        return report(self)


# --- the table -----------------------------------------------------------------------


def audit_ids(state_dir: Path) -> set[int]:
    ids: set[int] = set()
    path = state_dir / "audit.jsonl"
    if not path.exists():
        return ids
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            if row["event"] in ("intent", "deleted"):
                ids.add(int(row["channel_id"]))
    return ids


def wrong_deletions(seen: Seen) -> tuple[set[int], set[int]]:
    """Channels the daemon deleted that CDP still used afterwards (10003 on its sends and
    edits), and those whose request (the channel's name carries its id) was still open
    at the time of the DELETE while CDP had already posted in it."""
    deleted = {cid: t for t, cid, _n, st, mine in seen.deletes if mine and st < 300}
    used_after = {cid for t, cid, _st in seen.cdp_uses if cid in deleted and t >= deleted[cid]}
    posted = {cid for t, cid, st in seen.cdp_uses if st < 300}
    open_at_delete = set()
    names = {cid: n for _t, cid, n, st, mine in seen.deletes if mine and st < 300}
    for cid, t in deleted.items():
        rid = names[cid].removeprefix(CHANNEL_PREFIX)
        span = seen.rid_spans.get(rid) or (
            (seen.open_rids[rid], float("inf")) if rid in seen.open_rids else None
        )
        if span is not None and span[0] <= t < span[1] and cid in posted:
            open_at_delete.add(cid)
    return used_after, open_at_delete


def creates_while_open(seen: Seen) -> tuple[list[str], int, float]:
    """Creates CDP received between two /status samples that both said open (or paused)
    with the same `since` (so no half-open trial in between) whose client sent them after
    the first sample of that open spell: the gate admitted them while it was open.
    Creates sent before that sample were in flight when it opened (admitted, then up to
    `gate.queue_wait` waiting for a slot, which does not look at the breaker again): they
    are counted apart. Returns (each counted one, how many in flight, the latest of
    those after the spell's first sample, in seconds)."""
    samples = [x for x in seen.status if x[1] is not None]
    counted: list[str] = []
    in_flight, lag = 0, 0.0
    j = 0
    spell_start: dict[Any, float] = {}
    for t, state, since, paused in samples:
        if state in OPEN_STATES or paused:
            spell_start.setdefault((state, since, paused), t)
    for t, number in sorted(seen.creates):
        while j + 1 < len(samples) and samples[j + 1][0] <= t:
            j += 1
        if j + 1 >= len(samples) or samples[j][0] > t:
            continue
        a, b = samples[j], samples[j + 1]
        if not (a[1] in OPEN_STATES or a[3]) or (a[1], a[2], a[3]) != (b[1], b[2], b[3]):
            continue
        start = spell_start[(a[1], a[2], a[3])]
        sent = seen.sent.get(number)
        if sent is not None and sent < start:
            in_flight += 1
            lag = max(lag, t - start)
            continue
        counted.append(
            f"request {number} sent at {sent}, reached CDP at {t:.3f}; /status said "
            f"{a[1]} (since {a[2]}, paused {a[3]}) from {start:.3f}, at {a[0]:.3f} and {b[0]:.3f}"
        )
    return counted, in_flight, lag


def per_minute(seen: Seen) -> tuple[float, int, int]:
    """The daemon's REST requests: mean per minute, the busiest 60 s, the busiest 1 s."""
    times = sorted(t for t, _m, _p, _s, mine in seen.discord if mine)
    if not times:
        return 0.0, 0, 0

    def busiest(width: float) -> int:
        best = lo = 0
        for hi, t in enumerate(times):
            while times[lo] <= t - width:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    span = max(times[-1] - times[0], 60.0)
    return len(times) / span * 60, busiest(60.0), busiest(1.0)


def shut_time(seen: Seen) -> tuple[float, float, int]:
    """Seconds the samples said open (machine) and paused, and how many open spells:
    without them the creates-while-open count would prove nothing."""
    samples = [x for x in seen.status if x[1] is not None]
    opened = paused = 0.0
    spells: set[Any] = set()
    for (t, state, since, p), (t2, *_rest) in itertools.pairwise(samples):
        if p:
            paused += t2 - t
        elif state in OPEN_STATES:
            opened += t2 - t
            spells.add(since)
    return opened, paused, len(spells)


def proc_row(life: Incarnation | None) -> str:
    if life is None or not life.samples:
        return "no samples"
    (t0, rss0, fd0), (t1, rss1, fd1) = life.samples[0], life.samples[-1]
    return (
        f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB, fds {fd0} -> {fd1} over {t1 - t0:.0f} s"
    )


def report(soak: Soak) -> int:
    seen = soak.seen
    assert soak.daemon is not None
    state_dir = soak.workdir / "state"
    daemon_deleted = {cid for _t, cid, _n, st, mine in seen.deletes if mine and st < 300}
    unaudited = daemon_deleted - audit_ids(state_dir)
    used_after, open_at_delete = wrong_deletions(seen)
    wrong = used_after | open_at_delete
    let_through, in_flight, lag = creates_while_open(seen)
    counted = len(let_through)
    end = soak.end_status
    stuck = end is None or end[1] != "closed" or end[3]
    leaked = soak.leaked
    mean_pm, peak_pm, peak_s = per_minute(seen)
    budget_pm = soak.budget * 60
    lives = soak.daemon.lives
    longest = max(lives, key=lambda lf: (lf.ended or now()) - lf.started)
    cdp_deletes = sum(1 for _t, _c, _n, st, mine in seen.deletes if not mine and st < 300)
    rows: list[tuple[str, str, str, bool | None]] = []

    def row(name: str, value: str, detail: str, ok: bool | None = None) -> None:
        rows.append((name, value, detail, ok))

    row(
        "wrong deletions",
        str(len(wrong)),
        f"{len(used_after)} used by CDP after the daemon's DELETE (10003), "
        f"{len(open_at_delete)} deleted while their request was open",
        not wrong,
    )
    row(
        "deletions without an audit line",
        str(len(unaudited)),
        f"{len(daemon_deleted)} daemon DELETEs served 2xx vs audit.jsonl intent/deleted ids",
        not unaudited,
    )
    end_text = f"{end[1]}, paused={end[3]}" if end else "unreachable"
    row("breaker stuck after faults clear", "YES" if stuck else "no", end_text, not stuck)
    row(
        "creates let through while open/paused",
        str(counted),
        f"{len(seen.creates)} creates reached CDP; {in_flight} more reached it while open "
        f"but were sent before (in flight; the latest {lag:.2f}s after the first open sample)",
        counted == 0,
    )
    row(
        "leaked channels at the end",
        str(len(leaked)),
        f"cdp-chat-* left in the simulator; {len(seen.open_rids)} requests still open",
        not leaked,
    )
    row(
        "daemon's Discord requests per minute",
        f"{mean_pm:.0f} mean, {peak_pm} busiest 60 s",
        f"budget {budget_pm:.0f}/min (global_rate {soak.budget:g}/s); busiest second {peak_s}",
        peak_pm <= budget_pm,
    )
    opened, paused, spells = shut_time(seen)
    row(
        "breaker open / paused (sampled)",
        f"{opened:.0f} s / {paused:.0f} s",
        f"{spells} open spells seen in {len(seen.status)} /status samples every {STATUS_EVERY}s",
    )
    row("RSS / fds, last incarnation", "", proc_row(lives[-1]))
    row("RSS / fds, longest-lived incarnation", "", proc_row(longest))
    row("daemon incarnations", str(len(lives)), f"{len(lives) - 1} SIGKILLed and restarted")
    cdp_requests = sum(1 for r in seen.discord if not r[4])
    row("CDP's own Discord requests", str(cdp_requests), f"{cdp_deletes} DELETEs (auto-delete)")
    outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(soak.load.items()))
    row("client requests by outcome", str(sum(soak.load.values())), outcomes)
    for line in let_through:
        print(f"create while open: {line}")
    for cid in leaked:
        print(f"leaked: {cid} {soak.leaked_names.get(cid, '?')}")
    for cid in sorted(wrong):
        name = next(n for _t, c, n, _st, mine in seen.deletes if c == cid and mine)
        print(f"wrong deletion: {cid} {name}")
    print()
    print("| measure | value | how measured / detail | holds |")
    print("|---|---|---|---|")
    for name, value, detail, ok in rows:
        verdict = "" if ok is None else ("yes" if ok else "**NO**")
        print(f"| {name} | {value} | {detail} | {verdict} |")
    return 0 if all(ok is not False for *_x, ok in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="compressed run length")
    parser.add_argument("--rate", type=float, default=3.0, help="chat requests per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--min-age",
        type=float,
        default=MIN_AGE,
        help="reconcile.min_age in seconds (the demo's 3 s is compressed 200x, CDP 40x)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the state dir and logs here")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"soak: {args.minutes:g} min, {args.rate:g} req/s, workdir {workdir}", flush=True)
        soak = Soak(args.minutes, args.rate, workdir, args.seed, args.min_age)
        return asyncio.run(soak.run())


if __name__ == "__main__":
    sys.exit(main())
