"""A CDP restart seen in its log (`--log-dir`, a new file on a new date) inside the daemon:
counted, the open requests of the old process marked dead, and a reconcile that deletes
their channels once their time has passed, and nothing else."""

from __future__ import annotations

import logging
from pathlib import Path

from monitor.health.cdpwire import cdp_liveness_gap
from monitor.health.probes import ProbeResult
from monitor.ledger import RequestLedger
from monitor.sim.discord import DiscordSimulator, Message
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.metrics import sample_or_zero
from tests.helpers.wait import wait_for

BOUND = 20.0


async def test_restart_line_kills_open_requests_and_a_reconcile_follows(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    logs = tmp_path / "cdp-logs"
    logs.mkdir()
    (logs / "log-20240501.log").write_text("[SYS] 2024/05/01 - 09:00:00 | old process \n")
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        signals={"cdp_log": {"enabled": True, "glob": str(logs / "log-*.log")}},
        # A request is over 3 x 100 ms + 500 ms after it started (compressed CDP timers).
        # CDP deletes finished channels an hour later: the completed one is not due.
        cdp={"auto_delete": "1h", "request_timeout": "500ms", "create_attempt_timeout": "100ms"},
        reconcile={
            "enabled": True,
            "interval": "1h",
            "settle_delay": "0s",
            "census_interval": "200ms",
            "list_spacing": "200ms",
        },
    )
    now = discord_sim.clock.time()
    dying = discord_sim.add_channel("cdp-chat-20240501120000dying001")
    dying.messages.append(Message(discord_sim.new_id(now), "prompt", 1, "u"))
    kept = discord_sim.add_channel("cdp-chat-20240501120000kept0001")
    kept.messages.append(Message(discord_sim.new_id(now), "prompt", 1, "u"))
    async with running_daemon(config) as daemon:
        daemon.ledger.opened("20240501120000dying001", daemon.clock.time())
        daemon.ledger.opened("20240501120000kept0001", daemon.clock.time())
        daemon.ledger.completed("20240501120000kept0001", daemon.clock.time())
        await wait_for(
            lambda: daemon.reconciler is not None and daemon.reconciler.last_report is not None,
            what="the startup run",
            bound=BOUND,
        )
        # CDP restarts on another day: a new file in --log-dir.
        (logs / "log-20240502.log").write_text(
            "[SYS] 2024/05/02 - 00:10:00 | COZE-DISCORD-PROXY v4.6.5 started \n"
            "[SYS] 2024/05/02 - 00:10:01 | Bot is now running. Enjoy It. \n"
        )
        entry = "20240501120000dying001"
        await wait_for(
            lambda: (e := daemon.ledger.get(entry)) is not None and e.state == "dead",
            what="the open request marked dead",
            bound=BOUND,
        )
        assert sample_or_zero(daemon.registry, "cdpmon_cdp_restarts_total") == 1
        await wait_for(
            lambda: dying.id not in discord_sim.state.channels,
            what="the dead request's channel deleted",
            bound=BOUND,
        )
        rec = daemon.reconciler
        assert rec is not None
        await wait_for(
            lambda: rec.last_report is not None and rec.last_report.trigger == "cdp_restart",
            what="the cdp_restart run's report",
            bound=BOUND,
        )
        report = rec.last_report
        assert report is not None
        assert [d["reason"] for d in report.deleted] == ["cdp_restart"]
        assert kept.id in discord_sim.state.channels


def refused(at: float) -> ProbeResult:
    detail = (
        "ClientConnectorError: Cannot connect to host 127.0.0.1:7078 ssl:default "
        "[Connect call failed ('127.0.0.1', 7078)]"
    )
    return ProbeResult("cdp", False, 0.001, detail, {"status": None}, at)


def test_a_liveness_gap_is_a_restart_only_when_cdp_was_gone() -> None:
    ledger = RequestLedger(state_dir=None)
    ledger.opened("before", 100.0)
    observe = cdp_liveness_gap(ledger, logging.getLogger("test.gap"))
    answered = ProbeResult("cdp", True, 0.01, "HTTP 200", {"status": 200}, 200.0)
    # Slow or failing, not gone: timeouts and 5xx are never a restart.
    for at in (110.0, 120.0, 130.0, 140.0):
        observe(ProbeResult("cdp", False, 5.0, "timed out after 5.0s", {}, at))
    observe(ProbeResult("cdp", False, 0.01, "HTTP 502", {"status": 502}, 150.0))
    observe(answered)
    # Two refusals: a blip, not yet evidence.
    observe(refused(160.0))
    observe(refused(170.0))
    observe(answered)
    assert ledger.restarts == () and ledger.get("before") is not None
    # Three in a row, then an answer: the process was gone since the first refusal.
    for at in (180.0, 190.0, 195.0):
        observe(refused(at))
    ledger.opened("during", 185.0)  # through a gate that could not reach it anyway
    observe(ProbeResult("cdp", True, 0.01, "HTTP 200", {"status": 200}, 210.0))
    assert ledger.restarts == (180.0,)
    states = [e.state if (e := ledger.get(r)) else None for r in ("before", "during")]
    assert states == ["dead", "open"]
    observe(ProbeResult("rest", False, 0.01, "Connect call failed", {}, 220.0))  # not CDP's
    assert ledger.restarts == (180.0,)
