"""The systemd unit: verify, security exposure, lifecycle, the config it runs with."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from monitor.config import parse_config
from monitor.errors import ConfigError
from monitor.sim.discord import DiscordSimulator
from tests.deploy.files import (
    MAX_EXPOSURE,
    SYSTEMD_CONFIG,
    UNIT,
    require_tool,
    run,
)
from tests.helpers.daemon import daemon_process, fast_config_dict, wait_process_ready
from tests.helpers.prom import (
    free_port,
)


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """section → key → values, in order (keys like LoadCredential= may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return unit_directives(UNIT.read_text())["Service"]


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this venv's `cdp-monitor`.

    `systemd-analyze verify` rejects a unit whose ExecStart binary does not exist, and the
    documented /usr/local/bin/cdp-monitor exists only on a host where it was installed.
    The venv's console script is the same entry point; nothing else in the unit changes.
    """
    cli = Path(sys.executable).parent / "cdp-monitor"
    assert cli.exists(), f"{cli} missing: install the project into the venv (make does)"
    text = UNIT.read_text()
    rewritten, count = re.subn(
        r"^ExecStart=/usr/local/bin/cdp-monitor ", f"ExecStart={cli} ", text, flags=re.M
    )
    assert count == 1, "ExecStart must run /usr/local/bin/cdp-monitor (documented path)"
    path = tmp_path / UNIT.name  # same name: verify checks it against the unit's type
    path.write_text(rewritten)
    return path


def test_systemd_analyze_verify_accepts_the_unit(verifiable_unit: Path) -> None:
    tool = require_tool("systemd-analyze", "systemd")
    result = run(tool, "verify", str(verifiable_unit))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Warnings about other units on this host are not ours; any about this one are.
    ours = [line for line in output.splitlines() if UNIT.name in line]
    assert ours == [], output


def test_systemd_security_exposure_is_low(verifiable_unit: Path) -> None:
    tool = require_tool("systemd-analyze", "systemd")
    result = run(tool, "security", "--offline=true", "--no-pager", str(verifiable_unit))
    output = result.stdout + result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(UNIT.name)}: (\d+\.\d+)", output)
    assert match, f"no exposure level in the output (systemd >= 250 needed):\n{output}"
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure of {UNIT.name}: {exposure}")
    assert exposure <= MAX_EXPOSURE, output


def test_unit_lifecycle_matches_the_daemon(service: dict[str, list[str]]) -> None:
    # The daemon sends READY=1/WATCHDOG=1 from its main process (monitor/daemon.py),
    # reloads on SIGHUP, and exits 2 on a bad config (monitor/cli.py).
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["ExecStart"] == [
        "/usr/local/bin/cdp-monitor run -c /etc/cdp-monitor/monitor.yaml"
    ]
    assert service["DynamicUser"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "IPAddressDeny" not in service  # Discord must stay reachable


def test_systemd_config_loads_as_the_unit_runs_it(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    """The credential and the state directory the unit provides are what the config uses."""
    (credential,) = service["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source == f"/etc/cdp-monitor/{name}"
    (state_directory,) = service["StateDirectory"]
    text = SYSTEMD_CONFIG.read_text()
    assert f"token_file: {name}\n" in text

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / name).write_text("bot-token-from-credential\n")
    # What systemd sets for this unit.
    environ = {
        "CREDENTIALS_DIRECTORY": str(creds),
        "STATE_DIRECTORY": f"/var/lib/{state_directory}",
    }
    source_path = tmp_path / "etc" / "monitor.yaml"

    # Shipped with a placeholder the operator must replace: it fails loudly.
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source=source_path, environ=environ)
    assert [path for path, _ in exc.value.problems] == ["discord.guild_id"]

    config = parse_config(
        text.replace("REPLACE_WITH_CDP_GUILD_ID", "123456789012345678"),
        source=source_path,
        environ=environ,
    )
    assert config.discord.token.get_secret_value() == "bot-token-from-credential"
    assert config.discord.token_file == creds / name
    assert config.state_dir == Path("/var/lib/cdp-monitor")
    assert config.gate.listen_address.port == 7077
    assert config.gate.upstream == "http://127.0.0.1:7078"
    assert config.control.listen == "127.0.0.1:9105"


_MDWE_WRAPPER = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])  # the restriction survives execve
"""
_WX_MAP = """
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("refused")
"""


def _mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", _MDWE_WRAPPER, *argv]


async def test_daemon_runs_under_memory_deny_write_execute(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """MemoryDenyWriteExecute=yes: the real daemon under the kernel's form of the rule
    (PR_SET_MDWE), through probes against the simulator and a clean SIGTERM."""
    check = await asyncio.create_subprocess_exec(
        *_mdwe(sys.executable, "-c", _WX_MAP), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await check.communicate()
    if check.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert check.returncode == 0
    assert out.decode().strip() == "refused"  # the rule is in force after execve

    port = free_port()
    data = fast_config_dict(
        discord_sim, tmp_path / "state", control={"listen": f"127.0.0.1:{port}"}
    )
    config_path = tmp_path / "monitor.yaml"
    config_path.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{port}"
    async with daemon_process(config_path, wrap=_mdwe()) as proc:
        await wait_process_ready(http, url, proc)  # the first probe round is done
        async with http.get(url + "/metrics") as resp:
            metrics = await resp.text()
        assert 'cdpmon_probe_success{probe="gateway"} 1.0' in metrics
        assert 'cdpmon_probe_success{probe="rest"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        output = (await proc.stdout.read()).decode() if proc.stdout else ""
        assert "Traceback" not in output
