"""`cdp-monitor` command line: the parser, and the only place that turns errors into exit
codes (0 ok, 1 runtime failure, 2 bad usage or config). The commands that talk to a
running daemon live in monitor.cli_daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.cli_daemon import (
    UsageError,
    cmd_pause,
    cmd_reconcile,
    cmd_resume,
    cmd_status,
    config_path,
)
from monitor.cli_files import cmd_config
from monitor.clock import SYSTEM_CLOCK
from monitor.errors import ConfigError, MonitorError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

DESCRIPTION = """\
cdp-monitor keeps a coze-discord-proxy (CDP) deployment alive when Discord gets shaky:
it probes Discord, refuses new conversations while Discord is down (the gate in front
of CDP), and deletes the channels CDP leaks."""

EPILOG = """\
first steps:
  cdp-monitor demo                            a simulated outage, with and without it
  cdp-monitor config example > monitor.yaml   the documented config, to edit
  cdp-monitor check-config -c monitor.yaml
  cdp-monitor run -c monitor.yaml
  cdp-monitor status                          ask the running daemon

`cdp-monitor COMMAND --help` shows each command's options and examples.
exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad config."""

# name -> (one-line help, description with examples)
_HELP: dict[str, tuple[str, str]] = {
    "run": (
        "run the daemon",
        "Run the daemon until SIGTERM/SIGINT; SIGHUP reloads the config.\n\n"
        "examples:\n  cdp-monitor run -c /etc/cdp-monitor/monitor.yaml\n"
        "  cdp-monitor --log-format json --log-level debug run",
    ),
    "check-config": (
        "validate a config file",
        "Validate a config file; every problem is printed as `path.to.key: message`.\n\n"
        "examples:\n  cdp-monitor check-config -c monitor.yaml",
    ),
    "config": (
        "print the example config or write the deploy files",
        "examples:\n  cdp-monitor config example > monitor.yaml\n"
        "  cdp-monitor config deploy ./deploy   # systemd, docker, Prometheus, Grafana",
    ),
    "probe": (
        "run every probe once and print the results",
        "One round of every enabled probe (Discord gateway and REST, CDP), printed;\n"
        "exits 1 when one fails.\n\n"
        "examples:\n  cdp-monitor probe -c monitor.yaml",
    ),
    "reconcile": (
        "delete leaked channels now (through the running daemon)",
        "One reconcile run. It goes through the running daemon when one answers (one rate\n"
        "limiter and one audit log for both); --direct, or no daemon, talks to Discord\n"
        "from here with the config file.\n\n"
        "examples:\n  cdp-monitor reconcile --dry-run\n"
        "  cdp-monitor reconcile --direct -c monitor.yaml   # e.g. from a systemd timer",
    ),
    "status": (
        "show the running daemon's status",
        "Breaker, pause, health, probes, channels and daily creations of the running\n"
        "daemon; exits 1 when it does not answer. Without a config file it asks\n"
        "127.0.0.1:9105.\n\n"
        "examples:\n  cdp-monitor status\n  cdp-monitor status --json | jq .breaker",
    ),
    "pause": (
        "pause channel creation (the gate refuses new conversations)",
        "examples:\n  cdp-monitor pause --for 30m --reason 'Discord maintenance'",
    ),
    "resume": ("lift a manual pause", "examples:\n  cdp-monitor resume"),
    "sim": (
        "run the Discord simulator (and optionally the CDP emulator)",
        "Prints one JSON line with the URLs once listening; runs until SIGINT/SIGTERM.\n\n"
        "examples:\n  cdp-monitor sim --cdp --port 8900",
    ),
    "demo": (
        "replay a simulated Discord outage with and without cdp-monitor",
        "Everything runs locally (a simulated Discord, an emulated CDP); no token needed.\n\n"
        "examples:\n  cdp-monitor demo",
    ),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors; keep that
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="config file (default: $CDP_MONITOR_CONFIG, else ./monitor.yaml)",
    )


def _control_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--url", help="control API URL (default: the config's, else 127.0.0.1:9105)")
    p.add_argument("--token", help="control API token (default: the config's)")


def _add(sub: Any, name: str) -> argparse.ArgumentParser:
    text, description = _HELP[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=text, description=description, formatter_class=_RAW
    )
    return parser


_RAW = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cdp-monitor", description=DESCRIPTION, epilog=EPILOG, formatter_class=_RAW
    )
    parser.add_argument("--version", action="version", version=f"cdp-monitor {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default: the config's log.level")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="default: the config's log.format"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    for name in ("run", "check-config", "probe"):
        _config_arg(_add(sub, name))
    p = _add(sub, "config")
    actions = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    actions.add_parser("example", help="print the documented example config")
    d = actions.add_parser("deploy", help="write deploy/ (systemd, docker, prometheus, grafana)")
    d.add_argument("directory", type=Path)
    d.add_argument("--force", action="store_true", help="overwrite files that exist")

    p = _add(sub, "reconcile")
    _control_args(p)
    p.add_argument("--dry-run", action="store_true", help="plan and report, delete nothing")
    p.add_argument("--direct", action="store_true", help="talk to Discord from here")
    p.add_argument("--json", action="store_true", help="print the daemon's JSON report")

    for name in ("status", "pause", "resume"):
        p = _add(sub, name)
        _control_args(p)
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the raw JSON")
        if name == "pause":
            p.add_argument("--for", dest="duration", help="e.g. 30m; default: until resumed")
            p.add_argument("--reason", default=None, help="why (shown in /status and logs)")

    p = _add(sub, "sim")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.add_argument("--cdp", action="store_true", help="also run the CDP emulator")
    p.add_argument("--cdp-port", type=int, default=0)
    p.add_argument(
        "--cdp-time-scale", type=float, default=1.0, help="divides every CDP timer (default 1)"
    )
    p.add_argument("--cdp-log-dir", type=Path, default=None, help="CDP's --log-dir")
    p.add_argument("--guild-id", type=int, default=None)
    p.add_argument("--token", default="sim-token")
    p.add_argument("--channel-limit", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heartbeat-interval-ms", type=int, default=None, help="default: Discord's")

    _add(sub, "demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _COMMANDS[args.command]
    if args.command not in ("run", "demo"):  # these set up their own logging
        from monitor.logs import setup_logging

        setup_logging(args.log_level or "warning", args.log_format or "text")
    try:
        return handler(args)
    except ConfigError as exc:
        print("cdp-monitor: invalid configuration:", file=sys.stderr)
        for path, reason in exc.problems:
            print(f"{path}: {reason}" if path else reason, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"cdp-monitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MonitorError as exc:
        print(f"cdp-monitor: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


# -- simulator ---------------------------------------------------------------------------


def _cmd_sim(args: argparse.Namespace) -> int:
    return asyncio.run(_run_sim(args))


async def _run_sim(args: argparse.Namespace) -> int:
    from monitor.sim.discord import DiscordSimulator, SimSettings

    extra = {} if args.guild_id is None else {"guild_id": args.guild_id}
    if args.heartbeat_interval_ms is not None:
        extra["heartbeat_interval_ms"] = args.heartbeat_interval_ms
    settings = SimSettings(
        token=args.token, channel_limit=args.channel_limit, seed=args.seed, **extra
    )
    stop = _stop_event()
    sim = DiscordSimulator(settings)
    try:
        await sim.start(args.host, args.port)
    except OSError as exc:
        raise MonitorError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    info = sim.urls()
    info.update(user_token=settings.user_tokens[0], coze_bot_id=str(settings.coze_bot_id))
    emulator = None
    if args.cdp:
        emulator = await _start_cdp(args, sim)
        if emulator is None:
            await sim.stop()
            return EXIT_FAILURE
        info["cdp_url"] = emulator.base_url
        info["cdp_admin_url"] = emulator.admin_url
    print(json.dumps(info), flush=True)
    if emulator is not None:
        emulator.echo()  # its lines, the start lines first, on our stdout/stderr
    await stop.wait()
    if emulator is not None:
        await emulator.stop()
    await sim.stop()
    return EXIT_OK


async def _start_cdp(args: argparse.Namespace, sim: Any) -> Any:
    """The CDP emulator, configured by CDP's own environment variables; None when it
    stops at start-up as CDP does (its `[FATAL]` line is on stderr)."""
    from monitor.sim.cdp import CdpEmulator, CdpFatal, CdpSettings

    if args.cdp_time_scale <= 0:
        raise UsageError("--cdp-time-scale must be positive")
    base = CdpSettings.for_simulator(sim, time_scale=args.cdp_time_scale, log_dir=args.cdp_log_dir)
    emulator = CdpEmulator(base.with_env(os.environ))
    # Coze thinks for longer than CDP's 1 s sleep after a prompt, after which CDP starts
    # listening for the reply; an instant Coze would answer unheard.
    sim.state.coze_faults.delay_ms = 2000.0 / args.cdp_time_scale
    try:
        await emulator.start(args.host, args.cdp_port)
    except CdpFatal:
        emulator.echo()
        return None
    except OSError as exc:
        await sim.stop()
        raise MonitorError(f"cannot listen on {args.host}:{args.cdp_port}: {exc}") from exc
    return emulator


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (signal handlers only set it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# -- config-based commands ----------------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    from monitor.config import load_config

    path = config_path(args)
    try:
        load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid", file=sys.stderr)
        for key, reason in exc.problems:
            print(f"{key}: {reason}" if key else reason, file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import run_daemon

    log = (args.log_level or "", args.log_format or "")
    asyncio.run(run_daemon(config_path(args), log=log))
    return EXIT_OK


def _cmd_probe(args: argparse.Namespace) -> int:
    return asyncio.run(_probe_once(config_path(args)))


async def _probe_once(path: Path) -> int:
    import aiohttp

    from monitor import USER_AGENT
    from monitor.config import load_config
    from monitor.wiring import probe_once

    config = load_config(path)
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
        results = await probe_once(config, session=session, clock=SYSTEM_CLOCK)
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        print(f"{mark} {result.probe:<11} {result.duration * 1000:8.1f} ms  {result.detail}")
        for key, value in result.data.items():
            print(f"     {'':<11} {key}: {value}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILURE


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    # Before the introduction: the scenario's clients are the real openai SDK.
    if find_spec("openai") is None:
        raise MonitorError(
            "the demo's clients need the openai package, a dependency of cdp-monitor that"
            " is missing here: `pip install openai` in this environment"
            " (pipx: `pipx inject cdp-monitor openai`)"
        )

    async def main() -> int:
        return await run_demo(stop=_stop_event())

    return asyncio.run(main())


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sim": _cmd_sim,
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "config": cmd_config,
    "probe": _cmd_probe,
    "reconcile": cmd_reconcile,
    "status": cmd_status,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "demo": _cmd_demo,
}
