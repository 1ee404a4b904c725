"""`cdp-monitor demo`: the incident, replayed twice and narrated for a first-time reader.

Runs the scenario of `monitor.sim.scenario` without, then with cdp-monitor, printing a
status line every few seconds and a sentence for every event that matters, then the two
runs side by side. Everything runs on 127.0.0.1; the daemon's own log goes to a file in
a temporary directory, so the narration stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from monitor.sim.scenario import (
    Event,
    IncidentReport,
    RunResult,
    ScenarioSettings,
    Tick,
    describe,
    format_summary,
    run_once,
)

WIDTH = 96
LINE_EVERY = 2.5  # seconds of run time between two status lines
_COLUMNS = ("time", "phase", "breaker", "channels", "leaked", "ok", "refused", "failed")
_FORMAT = "  {:>6}  {:<9}  {:<10}  {:>8}  {:>6}  {:>4}  {:>7}  {:>6}"

INTRO = """\
cdp-monitor demo
================
coze-discord-proxy (CDP) creates a temporary Discord channel for every chat request and
deletes it a few seconds after the answer. When Discord is slow, CDP's channel creation
times out and CDP tries again, but the attempt it gave up on still creates its channel
later, with nobody left to delete it. Clients retry failed requests too. Enough of that
and the guild reaches Discord's limit of {limit} channels: every new request fails with
error 30013 and CDP is down until someone cleans up by hand.

This demo replays such an incident twice, on this machine only (127.0.0.1): a Discord
simulator, a CDP emulator that leaks exactly the way CDP does, clients using the openai
SDK and, in the second run, cdp-monitor in front of CDP. Time is compressed: CDP gives up
on a channel after {timeout:g} s here (60 s in real CDP). It takes about a minute.
"""

COLUMN_HELP = """\
Every {every:g} s a status line: the phase of the scenario, cdp-monitor's breaker (closed
lets channel-creating requests through, open refuses them), the channels in the guild,
how many of them are leaked (nobody will ever delete them), and the client requests so
far that succeeded, were refused by cdp-monitor (503 with Retry-After), or failed.
"""


class Narrator:
    """Turns the scenario's events and samples into lines of text."""

    def __init__(self, out: TextIO, settings: ScenarioSettings) -> None:
        self.out = out
        self.settings = settings
        self._next_line = 0.0
        self._last_tick: Tick | None = None
        self._printed: tuple[object, ...] | None = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def start_run(self, number: int, with_monitor: bool) -> None:
        self._next_line = 0.0
        self._last_tick = None
        self._printed = None
        title = (
            "with cdp-monitor (clients talk to its gate, which forwards to CDP)"
            if with_monitor
            else "without cdp-monitor (clients talk to CDP directly; nothing cleans up)"
        )
        self.say()
        self.say(f"Run {number} of 2: {title}")
        self.say(_FORMAT.format(*_COLUMNS))

    def tick(self, tick: Tick) -> None:
        self._last_tick = tick
        if tick.t + 1e-6 < self._next_line:
            return
        self._next_line = tick.t - (tick.t % LINE_EVERY) + LINE_EVERY
        self._line(tick)

    @staticmethod
    def _row(tick: Tick) -> tuple[object, ...]:
        breaker = (tick.breaker or "(none)").replace("_", "-")
        return (tick.phase, breaker, tick.channels, tick.leaked, tick.ok, tick.refused, tick.failed)

    def _line(self, tick: Tick) -> None:
        self._printed = self._row(tick)
        self.say(_FORMAT.format(f"{tick.t:.1f}s", *self._printed))

    def event(self, event: Event) -> None:
        head = f"  >> {event.t:.1f}s  "
        self.say(
            textwrap.fill(
                event.text,
                width=WIDTH,
                initial_indent=head,
                subsequent_indent=" " * len(head),
                break_on_hyphens=False,
            )
        )

    def end_run(self, result: RunResult) -> None:
        last = self._last_tick
        if last is not None and self._row(last) != self._printed:
            self._line(last)  # the final state, unless the last line already shows it
        if result.interrupted:
            self.say(f"  Stopped after {result.duration:.1f} s.")
            return
        self.say(f"  Run finished after {result.duration:.1f} s.")

    def summary(self, report: IncidentReport) -> None:
        self.say()
        self.say("Side by side (same seed, same load, same outage):")
        self.say()
        for line in format_summary(report).splitlines():
            self.say("  " + line)
        self.say()
        for paragraph in meaning(report):
            self.say(textwrap.fill(paragraph, width=WIDTH, break_on_hyphens=False))
            self.say()


def meaning(report: IncidentReport) -> list[str]:
    """The summary in sentences, from the numbers."""
    out: list[str] = []
    s = report.settings
    w, m = report.without, report.with_monitor
    if w is not None:
        text = (
            f"Without cdp-monitor, CDP's abandoned attempts created {w.late_channels} "
            f"channels that nobody deletes; {w.leaked_at_end} temporary channels were "
            "still in the guild at the end"
        )
        if w.errors_30013:
            text += (
                f", the guild filled up and {w.errors_30013} requests failed with 30013 "
                "(CDP is down from then on)"
            )
        text += (
            f". {w.success_ratio:.0%} of the client requests succeeded, and Discord "
            f"answered {w.discord_429} requests with 429 (every one counts toward "
            "Cloudflare's ban of 10,000 per 10 minutes)."
        )
        out.append(text)
    if m is not None:
        opened = (
            "the breaker never opened."
            if m.breaker_opened_at is None
            else (
                f"the breaker opened {m.breaker_opened_at - s.healthy:.1f} s into the outage, "
                f"with {m.inflight_at_open} channel-creating requests already in flight; "
                "from then on the gate refused new ones with 503 and Retry-After, which the "
                "clients honoured."
            )
        )
        if m.leaked_at_end == 0 and m.recovery_to_clean is not None:
            cleaned = (
                f"The requests already in flight left {m.late_channels} channels behind; "
                f"the reconciler deleted them (and nothing in use: "
                f"{m.in_use_deleted} conversations lost their channel), and the guild had "
                f"no leaked channel {m.recovery_to_clean:.1f} s after Discord recovered."
            )
        else:
            cleaned = (
                f"{m.reconcile_deleted} leaked channels were deleted; {m.leaked_at_end} "
                "were still waiting for the reconciler when the run ended."
            )
        if m.discord_429 == 0:
            limited = "Discord answered no request with 429"
        else:
            limited = (
                f"{m.monitor_429} of Discord's {m.discord_429} 429s were answers to "
                "cdp-monitor's own requests"
            )
        text = (
            f"With cdp-monitor: {opened} {cleaned} {m.errors_30013} requests failed with "
            f"30013, {m.success_ratio:.0%} of the client requests succeeded, and {limited}."
        )
        out.append(text)
    out.append(
        "Measure it with your own numbers: .venv/bin/python bench/incident.py --help "
        "(request rate, outage length and kind, CDP's attempt timeout, seed); "
        "`--scenario prefill` starts with the guild 95% full of old leaks."
    )
    return out


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[logging.Logger]:
    """Send every log record (the daemon's included) to `path` instead of the terminal."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield logging.getLogger("cdp-monitor.demo")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        handler.close()


async def run_demo(
    *,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    settings: ScenarioSettings | None = None,
) -> int:
    """Run and narrate the incident without and with cdp-monitor; 0 when done (also
    when `stop`, Ctrl-C, ended it early). Raises ScenarioError if it cannot run."""
    settings = settings or ScenarioSettings()
    stop = stop or asyncio.Event()
    narrator = Narrator(out, settings)
    narrator.say(INTRO.format(limit=settings.channel_limit, timeout=settings.attempt_timeout))
    narrator.say(
        textwrap.fill("The scenario: " + describe(settings), width=88, break_on_hyphens=False)
    )
    narrator.say()
    narrator.say(COLUMN_HELP.format(every=LINE_EVERY).rstrip())
    report = IncidentReport(settings)
    with (
        tempfile.TemporaryDirectory(prefix="cdp-monitor-demo-") as tmp,
        _logs_to(Path(tmp) / "daemon.log") as logger,
    ):
        for number, with_monitor in enumerate((False, True), start=1):
            if stop.is_set():
                break
            narrator.start_run(number, with_monitor)
            result = await run_once(
                settings,
                with_monitor=with_monitor,
                workdir=Path(tmp),
                on_event=narrator.event,
                on_tick=narrator.tick,
                stop=stop,
                logger=logger,
            )
            narrator.end_run(result)
            if with_monitor:
                report.with_monitor = result
            else:
                report.without = result
    if stop.is_set():
        narrator.say()
        narrator.say("Stopped early (Ctrl-C).")
        if not report.runs or any(r.interrupted for r in report.runs):
            return 0
    narrator.summary(report)
    return 0


__all__ = ["Narrator", "meaning", "run_demo"]
