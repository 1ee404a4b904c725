"""The demo's one door into the daemon: starting it on a config dict, and every read of
its internals the run makes (breaker, gate, reconciler, metrics). The daemon's insides
move; when they do, this module is the one to adapt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from monitor.config import parse_config
from monitor.daemon import Daemon
from monitor.errors import ScenarioError

# (old state, new state, reason, now): what the breaker tells its listeners.
TransitionListener = Callable[[str, str, str, float], None]
READY_WITHIN = 15.0  # seconds


@dataclass(frozen=True)
class ReconcileRun:
    """The reconciler's last finished run, as much of it as the demo tells."""

    run_id: str
    trigger: str
    emergency: bool


class DaemonView:
    """A daemon started for one run, and what the run reads from it."""

    def __init__(self, config: dict[str, Any], *, logger: logging.Logger) -> None:
        parsed = parse_config(yaml.safe_dump(config))
        self._daemon = Daemon(
            parsed, registry=CollectorRegistry(), logger=logger, process_metrics=False
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def on_transition(self, listener: TransitionListener) -> None:
        self._daemon.breaker.listeners.append(listener)

    async def start(self) -> str:
        """Run the daemon; its gate's URL once it is ready and its gateway session is
        current. A deployed monitor has been watching long before an incident; started
        beside CDP with the same token it may wait out Discord's 5 s IDENTIFY spacing
        first (an op 9), which is most of a compressed run."""
        daemon = self._daemon
        task = self._task = asyncio.create_task(daemon.run(self._stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WITHIN
        while not (daemon.gate_url is not None and daemon.ready() and self._watching()):
            if task.done():
                task.result()  # its error, if it failed
                raise ScenarioError("the daemon stopped before it was ready")
            if loop.time() > deadline:
                raise ScenarioError(f"the daemon was not ready within {READY_WITHIN:g} s")
            await asyncio.sleep(0.05)
        return daemon.gate_url

    def _watching(self) -> bool:
        live = self._daemon.watch.live
        return live is None or live.current

    async def stop(self, timeout: float) -> None:
        if self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, timeout)

    # -- reads ---------------------------------------------------------------------------

    def breaker_state(self) -> str:
        return self._daemon.breaker.state

    def half_open_trials(self) -> int:
        return self._daemon.breaker.settings.half_open_max_trials

    def creates_let_in(self) -> int:
        """Creates in flight at CDP through the gate, plus those queued at it (they were
        admitted before whatever happens now)."""
        gate = self._daemon.gate
        if gate is None:
            return 0
        st = gate.status()
        return int(st["inflight"].get("create", 0)) + int(st["waiting"])

    def gate_decisions(self) -> dict[str, int]:
        """The gate's create decisions so far (`limited`: refused by the adaptive limit)."""
        gate = self._daemon.gate
        return {} if gate is None else {k: int(v) for k, v in gate.status()["decisions"].items()}

    def create_limit(self) -> dict[str, Any]:
        """The adaptive create limit's part of `/status` (monitor/gate/limit.py)."""
        gate = self._daemon.gate
        return {} if gate is None else dict(gate.status()["limit"])

    def gate_refused_unstable(self) -> bool:
        gate = self._daemon.gate
        return gate is not None and bool(gate.status()["decisions"].get("refused_unstable"))

    def last_reconcile(self) -> ReconcileRun | None:
        reconciler = self._daemon.reconciler
        report = reconciler.last_report if reconciler is not None else None
        if report is None:
            return None
        return ReconcileRun(report.run_id, report.trigger, report.emergency)

    def deleted_by_reason(self) -> dict[str, int]:
        """Channels the reconciler deleted so far, by reason (reasons with none left out)."""
        by_reason = _counter_by_label(self._daemon.metrics.channels_deleted, "reason")
        return {k: int(v) for k, v in sorted(by_reason.items()) if v}

    def ratelimited_total(self) -> int:
        """429s the daemon's own Discord client received."""
        return int(
            sum(_counter_by_label(self._daemon.metrics.discord_ratelimited, "scope").values())
        )

    def transitions_to(self, state: str) -> int:
        by_target = _counter_by_label(self._daemon.metrics.breaker_transitions, "to")
        return int(by_target.get(state, 0))


def _counter_by_label(counter: Any, label: str) -> dict[str, float]:
    """Sum a prometheus Counter's `_total` samples by one label."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out
