"""The command line against a running daemon, and logging hygiene."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from monitor.config import parse_config
from monitor.logs import JsonFormatter, RedactFilter
from monitor.sim.discord import DiscordSimulator, Message
from monitor.state import StateDir
from tests.helpers.daemon import fast_config_dict, run_monitor, running_daemon


async def test_status_pause_resume_through_the_control_api(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    data = fast_config_dict(discord_sim, tmp_path / "state")
    config = parse_config(yaml.safe_dump(data))
    async with running_daemon(config) as daemon:
        # The CLI reads the API's address and token from the same config file.
        assert daemon.control_url is not None
        data["control"]["listen"] = daemon.control_url.removeprefix("http://")
        path = tmp_path / "monitor.yaml"
        path.write_text(yaml.safe_dump(data))

        rc, out, err = await run_monitor("status", "--json", "-c", str(path))
        assert rc == 0, err
        assert json.loads(out)["breaker"]["state"] == "closed"

        rc, out, err = await run_monitor(
            "pause", "--for", "10m", "--reason", "deploy", "-c", str(path)
        )
        assert rc == 0, err
        assert "forced_open" in out and "deploy" in out
        assert daemon.breaker.state == "forced_open"

        rc, out, err = await run_monitor("resume", "-c", str(path))
        assert rc == 0, err
        assert daemon.breaker.state == "closed"

        rc, out, err = await run_monitor("pause", "--for", "soon", "-c", str(path))
        assert rc == 2 and "--for" in err and "Traceback" not in err

        rc, out, err = await run_monitor("status", "-c", str(path), "--token", "wrong")
        assert rc == 1 and "HTTP 401" in err and "Traceback" not in err


async def test_status_without_a_daemon_is_a_clear_error() -> None:
    rc, _out, err = await run_monitor("status", "--url", "http://127.0.0.1:9", "--token", "x")
    assert rc == 1
    assert "cannot reach the daemon's control API" in err and "Traceback" not in err


def json_log(emit: Callable[[logging.Logger], None]) -> str:
    """What `emit` logs through a JSON handler that redacts a secret."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter(["Bot-s3cret-token"]))
    log = logging.getLogger("cdp-monitor.test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        emit(log)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


def test_json_logs_redact_secrets() -> None:
    text = json_log(lambda log: log.warning("calling with %s failed", "Bot-s3cret-token"))
    record = json.loads(text)
    assert record["level"] == "warning"
    assert record["message"] == "calling with *** failed"
    assert "s3cret" not in text


def test_tracebacks_are_redacted_too() -> None:
    def crash(log: logging.Logger) -> None:
        try:
            raise RuntimeError("refused token Bot-s3cret-token")
        except RuntimeError:
            log.exception("loop crashed")

    text = json_log(crash)
    assert "RuntimeError: refused token ***" in json.loads(text)["exception"]
    assert "s3cret" not in text


async def test_probe_and_reconcile_commands_build_from_the_config(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    """`probe` and `reconcile` run through monitor.wiring, against the simulator."""
    data = fast_config_dict(discord_sim, tmp_path / "state")
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    rc, out, err = await run_monitor("probe", "-c", str(path))
    assert rc == 0, err
    assert out.splitlines()[0] == "discord path: direct (no proxy configured)"
    assert [line.split()[:2] for line in out.splitlines()[1:] if not line.startswith(" ")] == [
        ["ok", "gateway"],
        ["ok", "rest"],
    ]
    rc, out, err = await run_monitor("reconcile", "--dry-run", "-c", str(path))
    assert rc == 0, err
    assert "dry" in out.lower()


async def test_reconcile_adopt_older_than_is_a_dry_run_until_confirmed(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    """Old leaks with messages (from before the monitor): listed, then deleted only with
    --yes, each deletion audited with reason `adopted`."""
    now = discord_sim.clock.time()
    old = discord_sim.add_channel("cdp-chat-20240101000000oldleak1", age_seconds=10 * 86400)
    old.messages.append(Message(discord_sim.new_id(now - 9 * 86400), "hi", 1, "u"))
    recent = discord_sim.add_channel("cdp-chat-20240101000000recent1", age_seconds=10 * 86400)
    recent.messages.append(Message(discord_sim.new_id(now - 3600), "hi", 1, "u"))
    data = fast_config_dict(discord_sim, tmp_path / "state")
    data["reconcile"] = {**data.get("reconcile", {}), "enabled": True}
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))

    rc, out, err = await run_monitor("reconcile", "-c", str(path))
    assert rc == 0, err
    assert "no rule can judge these 2 channels" in out and "--adopt-older-than" in out

    rc, out, err = await run_monitor("reconcile", "--adopt-older-than", "7d", "-c", str(path))
    assert rc == 0, err
    assert "dry run" in out and f"{old.id}  cdp-chat-20240101000000oldleak1  (adopted)" in out
    assert old.id in discord_sim.state.channels  # nothing deleted yet

    rc, out, err = await run_monitor(
        "reconcile", "--adopt-older-than", "7d", "--yes", "-c", str(path)
    )
    assert rc == 0, err + out
    assert old.id not in discord_sim.state.channels, out
    assert recent.id in discord_sim.state.channels
    audit = list(StateDir(tmp_path / "state").read_audit())
    assert [(r["event"], r["reason"]) for r in audit if r["channel_id"] == str(old.id)] == [
        ("dry_run", "adopted"),
        ("intent", "adopted"),
        ("deleted", "adopted"),
    ]

    rc, _, err = await run_monitor("reconcile", "--adopt-older-than", "soon", "-c", str(path))
    assert rc != 0 and "--adopt-older-than" in err
