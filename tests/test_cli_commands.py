"""The command line as a user meets it: help texts, the packaged files, `status` for
people, `reconcile` through the daemon, one daemon per state directory, a port in use."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from monitor.cli import _HELP, build_parser
from monitor.config import parse_config
from monitor.sim.discord import DiscordSimulator
from monitor.state import StateDir
from tests.helpers.daemon import fast_config_dict, run_monitor, running_daemon
from tests.helpers.wait import wait_for

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_top_level_help_speaks_to_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "turns errors into exit codes" not in out  # the module docstring is for developers
    assert "coze-discord-proxy" in out and "cdp-monitor demo" in out
    for name, (text, _) in _HELP.items():
        assert name in out and " ".join(text.split()[:3]) in out


@pytest.mark.parametrize("command", sorted(_HELP))
def test_every_subcommand_has_a_description_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"cdp-monitor {command}" in out


async def test_config_example_prints_the_documented_config() -> None:
    rc, out, err = await run_monitor("config", "example")
    assert rc == 0, err
    assert out == (REPO_ROOT / "monitor.yaml").read_text()


async def test_config_deploy_writes_the_deploy_files(tmp_path: Path) -> None:
    target = tmp_path / "deploy"
    rc, out, err = await run_monitor("config", "deploy", str(target))
    assert rc == 0, err
    source = REPO_ROOT / "deploy"
    expected = sorted(
        str(p.relative_to(source))
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == expected
    for name in expected:
        assert (target / name).read_bytes() == (source / name).read_bytes()
    assert len(out.splitlines()) == len(expected)
    # A second time refuses to overwrite (exit 2), unless --force.
    rc, _, err = await run_monitor("config", "deploy", str(target))
    assert rc == 2 and "--force" in err and "Traceback" not in err
    rc, _, err = await run_monitor("config", "deploy", str(target), "--force")
    assert rc == 0, err


async def test_status_without_a_config_file_asks_the_default_address(tmp_path: Path) -> None:
    """No -c, no ./monitor.yaml, no $CDP_MONITOR_CONFIG: the default 127.0.0.1:9105."""
    env = {k: v for k, v in os.environ.items() if k != "CDP_MONITOR_CONFIG"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        import asyncio

        from tests.helpers.daemon import MONITOR

        proc = await asyncio.create_subprocess_exec(
            *MONITOR,
            "status",
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err_bytes = await proc.communicate()
    finally:
        os.chdir(cwd)
    err = err_bytes.decode()
    if proc.returncode == 0:
        pytest.fail("a daemon answers on 127.0.0.1:9105 on this machine; cannot test")
    assert proc.returncode == 1
    assert "http://127.0.0.1:9105" in err and "config file not found" not in err


async def test_human_status_shows_breaker_pause_health_channels_and_creations(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    data = fast_config_dict(discord_sim, tmp_path / "state")
    config = parse_config(yaml.safe_dump(data))
    async with running_daemon(config) as daemon:
        assert daemon.control_url is not None
        url = ("--url", daemon.control_url, "--token", "control-secret")
        await run_monitor("reconcile", "--dry-run", *url)  # a census for `channels`

        async def counted() -> dict[str, str] | None:
            rc, out, err = await run_monitor("status", *url)
            assert rc == 0, err
            lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
            return lines if "in the last 24 h" in lines.get("created", "") else None

        # The gateway session counts the day's creations once it has synced the guild.
        lines = await wait_for(counted, what="status shows the day's creations")
        assert "closed" in lines["breaker"]
        assert lines["paused"].endswith("no")
        assert "health" in lines
        assert "/500" in lines["channels"]
        assert "daily cap 500" in lines["created"]


async def test_reconcile_goes_through_the_running_daemon(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    data = fast_config_dict(discord_sim, tmp_path / "state")
    async with running_daemon(parse_config(yaml.safe_dump(data))) as daemon:
        assert daemon.control_url is not None
        data["control"]["listen"] = daemon.control_url.removeprefix("http://")
        path = tmp_path / "monitor.yaml"
        path.write_text(yaml.safe_dump(data))
        rc, out, err = await run_monitor("reconcile", "--dry-run", "-c", str(path))
        assert rc == 0, err
        assert "by the daemon" in out
        rc, out, err = await run_monitor("reconcile", "--dry-run", "--json", "-c", str(path))
        assert rc == 0, err
        assert json.loads(out)["trigger"] == "api"
        # --direct talks to Discord from the CLI: no "by the daemon".
        direct = dict(data, state_dir=str(tmp_path / "direct"))
        direct_path = tmp_path / "direct.yaml"
        direct_path.write_text(yaml.safe_dump(direct))
        rc, out, err = await run_monitor(
            "reconcile", "--dry-run", "--direct", "-c", str(direct_path)
        )
        assert rc == 0, err
        assert "by the daemon" not in out and "dry run" in out


async def test_reconcile_without_a_daemon_runs_directly(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    data = fast_config_dict(discord_sim, tmp_path / "state")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        data["control"]["listen"] = f"127.0.0.1:{sock.getsockname()[1]}"
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    rc, out, err = await run_monitor("reconcile", "--dry-run", "-c", str(path))
    assert rc == 0, err
    assert "no daemon answers" in out and "reconciling directly" in out


async def test_a_second_run_on_the_same_state_dir_fails_clearly(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    data = fast_config_dict(discord_sim, tmp_path / "state")
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data))
    held = StateDir(tmp_path / "state")
    held.lock()
    try:
        rc, _out, err = await run_monitor("run", "-c", str(path))
    finally:
        held.unlock()
    assert rc == 1
    assert "another cdp-monitor" in err and str(os.getpid()) in err
    assert "Traceback" not in err and "Unclosed" not in err


async def test_port_in_use_is_one_clear_error(
    discord_sim: DiscordSimulator, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        data = fast_config_dict(discord_sim, tmp_path / "state")
        data["control"]["listen"] = f"127.0.0.1:{busy.getsockname()[1]}"
        path = tmp_path / "monitor.yaml"
        path.write_text(yaml.safe_dump(data))
        rc, _out, err = await run_monitor("run", "-c", str(path))
    assert rc == 1
    assert "control.listen" in err
    assert "Unclosed" not in err and "Traceback" not in err


async def test_log_level_and_format_flags(discord_sim: DiscordSimulator, tmp_path: Path) -> None:
    """`--log-format json --log-level debug` win over the config's `log` section."""
    data = fast_config_dict(discord_sim, tmp_path / "state")
    with socket.socket() as busy:  # `run` logs its start, then stops on the busy port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        data["control"]["listen"] = f"127.0.0.1:{busy.getsockname()[1]}"
        path = tmp_path / "monitor.yaml"
        path.write_text(yaml.safe_dump(data))
        rc, _out, err = await run_monitor(
            "--log-format", "json", "--log-level", "debug", "run", "-c", str(path)
        )
    assert rc == 1
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and records[0]["message"].startswith("cdp-monitor starting")
    rc, _out, err = await run_monitor("--log-level", "loud", "status")
    assert rc == 2 and "--log-level" in err
