"""One reconcile run straight against Discord, without a daemon (`cdp-monitor reconcile`).
To be replaced by monitor/wiring.py."""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client import CollectorRegistry

from monitor.clock import SYSTEM_CLOCK, Clock
from monitor.config import Config
from monitor.discord.rest import DiscordRestClient
from monitor.ledger import RequestLedger
from monitor.metrics import Metrics
from monitor.reconcile.reconciler import Reconciler
from monitor.reconcile.report import ReconcileReport
from monitor.state import StateDir

_LOG = logging.getLogger("monitor.reconcile")


async def reconcile_once(
    config: Config,
    *,
    dry_run: bool,
    session: aiohttp.ClientSession,
    clock: Clock = SYSTEM_CLOCK,
    logger: logging.Logger = _LOG,
) -> ReconcileReport:
    """One run straight against Discord, without a daemon. Reads the daemon's request
    ledger (read-only) if the state directory has one; writes the audit log there."""
    metrics = Metrics(CollectorRegistry())
    rest = DiscordRestClient.from_config(
        config.discord, session=session, metrics=metrics, clock=clock, logger=logger
    )
    state_dir = StateDir(config.state_dir, logger=logger)
    ledger = RequestLedger.load_snapshot(state_dir, now=clock.time())
    reconciler = Reconciler.from_config(
        config,
        rest=rest,
        ledger=ledger,
        state_dir=state_dir,
        metrics=metrics,
        clock=clock,
        logger=logger,
    )
    return await reconciler.run(dry_run=dry_run, trigger="cli")
