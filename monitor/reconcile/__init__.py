"""The reconciler: find CDP's leaked temporary channels and delete them, safely.

* `plan` (pure): listing + ledger + settings + `now` → deletions, kept channels, census;
  `recheck` judges a channel again just before its deletion.
* `triggers` (pure): when to run (`next_trigger`) and when the guild fills up
  (`exhaustion_seconds`, `forecast`).
* `reconciler`: the `Reconciler` (runs, the loop's `step`, status), with `census` (the
  listing, census and gauges), `apply` (re-check, delete, pace) and `audit` (one
  fsynced line per deletion).
* `report`: the run's report and its text form.
"""

from monitor.reconcile.census import ChannelsAPI
from monitor.reconcile.plan import (
    REASONS,
    Action,
    Census,
    Plan,
    Skip,
    above_watermark,
    plan,
    recheck,
)
from monitor.reconcile.reconciler import Reconciler
from monitor.reconcile.report import ReconcileReport, format_report
from monitor.reconcile.triggers import exhaustion_seconds, next_trigger

__all__ = [
    "REASONS",
    "Action",
    "Census",
    "ChannelsAPI",
    "Plan",
    "ReconcileReport",
    "Reconciler",
    "Skip",
    "above_watermark",
    "exhaustion_seconds",
    "format_report",
    "next_trigger",
    "plan",
    "recheck",
]
