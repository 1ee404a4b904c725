"""Every English sentence of the demo and the benchmark: what the scenario does
(`describe`), each event of a run (`event_text`; cdp-monitor's own in
`narration_monitor`), what the numbers mean (`meaning`),
and the `Narrator` that prints a run live from its events and ticks (the side-by-side
table, labels included, is `results.summary_rows` and `results.format_summary`)."""

from __future__ import annotations

import textwrap
from typing import TextIO

from monitor.demo.events import (
    CdpTrouble,
    ChannelsLeaked,
    CreateErrored,
    CreateTimedOut,
    Draining,
    Event,
    GuildFull,
    OutageStarted,
    Recovered,
    RunFinished,
    RunStarted,
    Tick,
    UnderWatermark,
)
from monitor.demo.narration_monitor import monitor_text, plural
from monitor.demo.results import IncidentReport, RunResult, format_summary
from monitor.demo.settings import ScenarioSettings
from monitor.vocab import CHANNEL_PREFIX

OUTAGE_TEXT: dict[str, str] = {
    "slow": "each channel creation takes 0.8 of discordgo's 20 s client timeout, "
    "GET /gateway/bot is slow and the gateway sends HELLO late",
    "ramp": "channel creation slows down over half the outage, from 2 s to just under "
    "discordgo's 20 s client timeout, and stays there (no error, no 429)",
    "ratelimit": "a 429 storm on channel creation (discordgo sleeps out every one)",
    "hung": "each channel creation takes longer than discordgo's 20 s client timeout, "
    "and the gateway refuses connections",
    "tokens": "Discord is fine, but CDP has no user token left (USER_AUTHORIZATION)",
}
_OUTAGE_EFFECT: dict[str, str] = {
    "slow": "CDP's creates queue on discordgo's bucket lock: the k-th waits about k x "
    "{latency:g}s, past CDP's {timeout:g}s attempt timeout, and CDP tries again "
    "({attempts} attempts)",
    "ramp": "CDP's creates queue on discordgo's bucket lock: as the latency rises "
    "towards {latency:g}s, the k-th waits about k x latency, past CDP's {timeout:g}s "
    "attempt timeout, and CDP tries again ({attempts} attempts)",
    "ratelimit": "discordgo sleeps out each 429 and retries, so CDP's attempts pass its "
    "{timeout:g}s timeout and it tries again ({attempts} attempts)",
    "hung": "discordgo gives up after {http:g}s: CDP fails the request at once, without "
    "a retry, while Discord still creates the channel",
    "tokens": "every chat request is a 500 before any channel is made",
}

WIDTH = 96
LINE_EVERY = 2.5  # seconds of run time between two status lines
_COLUMNS = ("time", "phase", "breaker", "channels", "leaked", "ok", "refused", "failed")
_FORMAT = "  {:>6}  {:<9}  {:<10}  {:>8}  {:>6}  {:>4}  {:>7}  {:>6}"

INTRO = """\
cdp-monitor demo
================
coze-discord-proxy (CDP) creates a temporary Discord channel for every chat request and
deletes it a few seconds after the answer. Its Discord library serialises every create of
a guild on one lock, sleeps out every 429 and gives up on a request after 20 s; CDP gives
each create 60 s and tries again, but the attempt it gave up on is never cancelled and
creates its channel later, with nobody left to delete it. Clients retry failed requests
too. Enough of that and the guild reaches Discord's limit of {limit} channels: every new
request fails with error 30013 and CDP is down until someone cleans up by hand.

This demo replays such an incident twice, on this machine only (127.0.0.1): a Discord
simulator, a CDP emulator that behaves as CDP v4.6.5 does, clients using the openai SDK
and, in the second run, cdp-monitor in front of CDP. Time is compressed: CDP gives up on
a channel after {timeout:g} s here (60 s in real CDP). It takes about a minute.
"""

COLUMN_HELP = """\
Every {every:g} s a status line: the phase of the scenario, cdp-monitor's breaker (closed
lets channel-creating requests through, open refuses them), the channels in the guild,
how many of them are leaked (nobody will ever delete them), and the client requests so
far that succeeded, were refused by cdp-monitor (503 with Retry-After), or failed.
"""


# -- events in sentences --------------------------------------------------------------------


def event_text(event: Event) -> str:
    """The sentence for one event of a run."""
    if (text := monitor_text(event)) is not None:
        return text
    match event:
        case OutageStarted():
            effect = _OUTAGE_EFFECT[event.kind].format(
                latency=event.create_latency,
                timeout=event.attempt_timeout,
                http=event.attempt_timeout / 3,
                attempts=event.attempts,
            )
            return f"The outage starts: {OUTAGE_TEXT[event.kind]}; {effect}."
        case CreateErrored():
            return (
                "CDP: a create ran into discordgo's client timeout "
                f"({event.http_timeout:g}s here, 20 s real): the request fails at once with "
                '500 "config error,check logs" and no retry, while Discord goes on '
                "creating the channel, which nobody will delete."
            )
        case CdpTrouble():
            return (
                f'CDP: 500 "{event.message}": its own trouble, not Discord\'s; no channel '
                "is made, yet a gate that counts every CDP 500 as a Discord failure sees "
                "one."
            )
        case Recovered():
            return "Discord recovers: every fault is cleared."
        case Draining():
            return "The clients stop sending; waiting for the requests still out to finish."
        case CreateTimedOut():
            return (
                'CDP: "Create channel timed out, retrying...1": its attempt gave up after '
                f"{event.attempt_timeout:g}s, but the create request is still on its way to "
                "Discord and its channel will appear later with nobody to delete it."
            )
        case ChannelsLeaked():
            return (
                f"{plural(event.count, 'channel')} appeared from abandoned create "
                f"attempts ({event.total} so far): leaked, no delete timer."
            )
        case GuildFull():
            return (
                "Discord answers 30013 (Maximum number of server channels reached): "
                "the guild is full and every new chat request through CDP now fails."
            )
        case UnderWatermark():
            return (
                f"The guild is back under the high watermark: {event.channels} channels "
                f"(watermark {event.watermark} of {event.limit})."
            )
    return type(event).__name__


# -- the scenario and its summary -----------------------------------------------------------


def describe(settings: ScenarioSettings) -> str:
    """One paragraph saying what the scenario does, for the demo and the benchmark."""
    s = settings
    text = (
        f"Clients send {s.rate:g} chat requests/s through CDP (each creates a temporary "
        f"`{CHANNEL_PREFIX}` channel; the SDK retries failures {s.client_retries}x). "
        f"After {s.healthy:g}s Discord is unstable for {s.outage:g}s ({s.outage_kind}: "
        f"{OUTAGE_TEXT[s.outage_kind]}), then recovers; the clients go on for {s.after:g}s."
    )
    if s.prefill:
        text += (
            f" Before it starts, {s.prefill} old leaked channels already fill the guild "
            f"({s.prefill / s.channel_limit:.0%} of its {s.channel_limit}-channel limit)."
        )
    return text


def meaning(report: IncidentReport) -> list[str]:
    """The summary in sentences, from the numbers."""
    out: list[str] = []
    if report.without is not None:
        out.append(_meaning_without(report.without))
    if report.with_monitor is not None:
        out.append(_meaning_with(report.with_monitor, report.settings))
    out.append(
        "Measure it with your own numbers: .venv/bin/python bench/incident.py --help "
        "(request rate, outage length and kind, CDP's attempt timeout, seed); "
        "`--scenario prefill` starts with the guild 95% full of old leaks."
    )
    return out


def _meaning_without(w: RunResult) -> str:
    text = (
        f"Without cdp-monitor, CDP's abandoned creates (timed-out attempts, and creates "
        f"Discord finished after the 20 s client timeout) made {w.late_channels} "
        f"channels that nobody deletes; {w.leaked_at_end} temporary channels were "
        "still in the guild at the end"
    )
    if w.errors_30013:
        text += (
            f", the guild filled up and {w.errors_30013} requests failed with 30013 "
            "(CDP is down from then on)"
        )
    return text + (
        f". {w.success_ratio:.0%} of the client requests succeeded, and Discord "
        f"answered {w.discord_429} requests with 429 (every one counts toward "
        "Cloudflare's ban of 10,000 per 10 minutes)."
    )


def _meaning_with(m: RunResult, s: ScenarioSettings) -> str:
    opened = (
        "the breaker never opened."
        if m.breaker_opened_at is None
        else (
            f"the breaker opened only {m.breaker_opened_at - s.recovery_at:.1f} s after "
            "Discord recovered (its samples lag behind), "
            if m.breaker_opened_at > s.recovery_at
            else f"the breaker opened {m.breaker_opened_at - s.healthy:.1f} s into the outage, "
        )
        + (
            f"with {m.inflight_at_open} channel-creating requests already in flight; "
            "from then on the gate refused new ones with 503 and Retry-After, which the "
            "clients honoured."
        )
    )
    if m.leaked_at_end == 0 and m.late_channels == 0:
        cleaned = (
            "No create attempt timed out, so nothing leaked: the adaptive create limit "
            "kept CDP's queue short enough for every create to finish within CDP's attempt "
            f"timeout ({m.limited} creates refused by it with Retry-After, "
            f"{m.in_use_deleted} conversations lost their channel)."
        )
    elif m.leaked_at_end == 0 and m.recovery_to_clean is not None:
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
    return (
        f"With cdp-monitor: {opened} {cleaned} {m.errors_30013} requests failed with "
        f"30013, {m.success_ratio:.0%} of the client requests succeeded, and {limited}."
    )


# -- live ----------------------------------------------------------------------------------


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

    def intro(self) -> None:
        s = self.settings
        self.say(INTRO.format(limit=s.channel_limit, timeout=s.attempt_timeout))
        self.say(textwrap.fill("The scenario: " + describe(s), width=88, break_on_hyphens=False))
        self.say()
        self.say(COLUMN_HELP.format(every=LINE_EVERY).rstrip())

    def stopped_early(self) -> None:
        self.say()
        self.say("Stopped early (Ctrl-C).")

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
        if isinstance(event, RunStarted):
            self.start_run(event.number, event.with_monitor)
            return
        if isinstance(event, RunFinished):
            self.end_run(event)
            return
        head = f"  >> {event.t:.1f}s  "
        self.say(
            textwrap.fill(
                event_text(event),
                width=WIDTH,
                initial_indent=head,
                subsequent_indent=" " * len(head),
                break_on_hyphens=False,
            )
        )

    def end_run(self, result: RunFinished) -> None:
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
