"""`cdp-monitor demo`: the incident, replayed twice and narrated live for a first-time
reader. It runs `run_incident` (the loop `bench/incident.py` runs too) with a
`Narrator` listening to its events and ticks, then prints the two runs side by side.
Everything runs on 127.0.0.1; the daemon's own log goes to a file in a temporary
directory, so the narration stays readable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from monitor.demo.narration import Narrator
from monitor.demo.run import run_incident
from monitor.demo.settings import ScenarioSettings


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
    narrator.intro()
    with (
        tempfile.TemporaryDirectory(prefix="cdp-monitor-demo-") as tmp,
        _logs_to(Path(tmp) / "daemon.log") as logger,
    ):
        report = await run_incident(
            settings,
            workdir=Path(tmp),
            on_event=narrator.event,
            on_tick=narrator.tick,
            stop=stop,
            logger=logger,
        )
    if stop.is_set():
        narrator.stopped_early()
        if not report.runs or any(r.interrupted for r in report.runs):
            return 0
    narrator.summary(report)
    return 0
