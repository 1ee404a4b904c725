"""`cdp-monitor` command line. The only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.clock import SYSTEM_CLOCK
from monitor.errors import ConfigError, MonitorError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(MonitorError):
    """Bad command-line usage detected after parsing (exit 2)."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cdp-monitor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cdp-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run the daemon")
    _config_arg(p)
    p = sub.add_parser("check-config", help="validate a config file")
    _config_arg(p)
    p = sub.add_parser("probe", help="run every probe once and print the results")
    _config_arg(p)
    p = sub.add_parser("reconcile", help="one-shot reconcile straight against Discord")
    _config_arg(p)
    p.add_argument("--dry-run", action="store_true", help="plan and report, delete nothing")

    for name, text in (
        ("status", "show the running daemon's status"),
        ("pause", "pause channel creation (forced open)"),
        ("resume", "lift a manual pause"),
    ):
        p = sub.add_parser(name, help=text)
        _config_arg(p)
        p.add_argument("--url", help="control API base URL (default: from the config)")
        p.add_argument("--token", help="control API token (default: from the config)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the raw JSON")
        if name == "pause":
            p.add_argument("--for", dest="duration", help="e.g. 30m; default: until resumed")
            p.add_argument("--reason", default=None, help="why (shown in /status and logs)")

    p = sub.add_parser("sim", help="run the Discord simulator (and optionally the CDP emulator)")
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

    sub.add_parser("demo", help="replay a simulated Discord outage with and without cdp-monitor")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _COMMANDS[args.command]
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


def _config_path(args: argparse.Namespace) -> Path:
    from monitor.config import default_config_path

    path: Path = args.config or default_config_path(os.environ)
    return path


def _cmd_check_config(args: argparse.Namespace) -> int:
    from monitor.config import load_config

    path = _config_path(args)
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

    asyncio.run(run_daemon(_config_path(args)))
    return EXIT_OK


def _cmd_probe(args: argparse.Namespace) -> int:
    return asyncio.run(_probe_once(_config_path(args)))


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


# -- control API client commands ----------------------------------------------------------


def _control_client(args: argparse.Namespace) -> Any:
    from monitor.config import load_config
    from monitor.control import ControlClient
    from monitor.units import url_for

    url, token = args.url, args.token
    if url is None or token is None:
        path = _config_path(args)
        if url is None or path.exists():
            config = load_config(path)
            if url is None:
                url = url_for(*config.control.listen_address)
            if token is None and config.control.token is not None:
                token = config.control.token.get_secret_value()
    return ControlClient(url, token=token)


def _print_status(status: dict[str, Any]) -> None:
    breaker = status.get("breaker") or {}
    print(f"breaker:  {breaker.get('state')} since {_fmt_time(breaker.get('since'))}", end="")
    if breaker.get("retry_at"):
        print(f", next trial {_fmt_time(breaker['retry_at'])}", end="")
    print()
    paused = status.get("paused")
    if paused:
        until = _fmt_time(paused.get("until")) if paused.get("until") else "resumed"
        print(f"paused:   {paused.get('reason') or '(no reason)'} (until {until})")
    health = status.get("health")
    if health:
        print(f"health:   {health.get('reason')}")
    for name, probe in (status.get("probes") or {}).items():
        mark = "ok" if probe.get("ok") else "FAIL"
        print(f"probe:    {name:<11} {mark:<4} {probe.get('detail', '')}")


def _fmt_time(ts: Any) -> str:
    import datetime as dt

    if not isinstance(ts, int | float):
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _cmd_status(args: argparse.Namespace) -> int:
    status = asyncio.run(_control_client(args).call("GET", "/status"))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        _print_status(status)
    return EXIT_OK


def _cmd_pause(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.duration:
        from monitor.units import parse_duration

        try:
            parse_duration(args.duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
        body["for"] = args.duration
    if args.reason:
        body["reason"] = args.reason
    _print_status(asyncio.run(_control_client(args).call("POST", "/pause", body)))
    return EXIT_OK


def _cmd_resume(args: argparse.Namespace) -> int:
    _print_status(asyncio.run(_control_client(args).call("POST", "/resume", {})))
    return EXIT_OK


def _cmd_reconcile(args: argparse.Namespace) -> int:
    return asyncio.run(_reconcile_once(_config_path(args), args.dry_run))


async def _reconcile_once(path: Path, dry_run: bool) -> int:
    import aiohttp

    from monitor import USER_AGENT
    from monitor.config import load_config
    from monitor.reconcile import format_report
    from monitor.wiring import reconcile_once

    config = load_config(path)
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
        report = await reconcile_once(config, dry_run=dry_run, session=session)
    print(format_report(report))
    return EXIT_OK if report.result in ("ok", "dry_run") else EXIT_FAILURE


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    async def main() -> int:
        return await run_demo(stop=_stop_event())

    return asyncio.run(main())


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sim": _cmd_sim,
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "probe": _cmd_probe,
    "reconcile": _cmd_reconcile,
    "status": _cmd_status,
    "pause": _cmd_pause,
    "resume": _cmd_resume,
    "demo": _cmd_demo,
}
