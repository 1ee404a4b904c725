"""The incident, replayed: Discord wobbles, CDP leaks channels, and cdp-monitor (or
nothing) stands in between. Used by `cdp-monitor demo` and `bench/incident.py`.

Modules, from the bottom: `settings` (ScenarioSettings, the outage's faults, the
daemon's config), `load` (openai clients), `events` (what a run reports, as data),
`results` (RunResult, IncidentReport, summary rows), `observe` (the one module that
reads the daemon), `watch` (samples a run and records its events and result), `run`
(the one run loop: `run_once`, `run_incident`), `narration` (every English sentence),
`replay` (`run_demo`: the loop, narrated live).

    report = await run_incident(ScenarioSettings(seed=7))   # without, then with
    print(format_summary(report))
    report = await run_incident(settings, runs=COMPARE_RUNS)  # + breaker alone, + limit
"""

from monitor.demo.events import Event, Tick
from monitor.demo.narration import OUTAGE_TEXT, describe, meaning
from monitor.demo.replay import run_demo
from monitor.demo.results import IncidentReport, RunResult, format_summary, summary_rows
from monitor.demo.run import run_incident, run_once
from monitor.demo.settings import (
    COMPARE_RUNS,
    DEFAULT_RUNS,
    OUTAGE_KINDS,
    RUN_KINDS,
    SCENARIOS,
    ScenarioSettings,
    daemon_config_dict,
    outage_faults,
    outage_steps,
    prefill_settings,
    run_kinds,
)

__all__ = [
    "COMPARE_RUNS",
    "DEFAULT_RUNS",
    "OUTAGE_KINDS",
    "OUTAGE_TEXT",
    "RUN_KINDS",
    "SCENARIOS",
    "Event",
    "IncidentReport",
    "RunResult",
    "ScenarioSettings",
    "Tick",
    "daemon_config_dict",
    "describe",
    "format_summary",
    "meaning",
    "outage_faults",
    "outage_steps",
    "prefill_settings",
    "run_demo",
    "run_incident",
    "run_kinds",
    "run_once",
    "summary_rows",
]
