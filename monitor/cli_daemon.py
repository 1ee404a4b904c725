"""The CLI commands that talk to a running daemon through its control API: `status`,
`pause`, `resume`, and `reconcile` (which falls back to a direct run when no daemon
answers). Errors are raised as MonitorError; monitor.cli turns them into exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from monitor.config import ControlConfig, default_config_path, load_config
from monitor.control import ControlClient
from monitor.errors import ControlAPIError, MonitorError
from monitor.units import parse_duration, url_for

EXIT_OK, EXIT_FAILURE = 0, 1


class UsageError(MonitorError):
    """Bad command-line usage detected after parsing (exit 2)."""


def config_path(args: argparse.Namespace) -> Path:
    path: Path = args.config or default_config_path(os.environ)
    return path


def control_client(args: argparse.Namespace) -> ControlClient:
    """The client for `--url`/`--token`, else the config's `control` section, else (no
    config file at the default path) the default address with no token."""
    url, token = args.url, args.token
    path = config_path(args)
    if url is None or token is None:
        if args.config is not None or path.exists():
            control = load_config(path).control
        else:
            control = ControlConfig()
        if url is None:
            url = url_for(*control.listen_address)
        if token is None and control.token is not None:
            token = control.token.get_secret_value()
    return ControlClient(url, token=token)


def _fmt_time(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _channels_lines(channels: dict[str, Any] | None) -> list[str]:
    """The guild census and, when the daemon counts them, the creations of the last 24 h
    against Discord's daily cap (`channels.live`, from the gateway session)."""
    if not channels:
        return ["channels: not counted yet (first reconcile listing pending)"]
    temp = channels.get("temp") or {}
    parts = ", ".join(f"{k} {v}" for k, v in temp.items())
    lines = [
        f"channels: {channels.get('channels')}/{channels.get('limit')}"
        f" ({float(channels.get('usage') or 0) * 100:.0f}%)"
        + (f"; temporary: {parts}" if parts else "")
    ]
    live = channels.get("live") or {}
    if live.get("creates_24h") is not None:
        cap = live.get("create_limit_daily")
        lines.append(f"created:  {live['creates_24h']} in the last 24 h (daily cap {cap or 'off'})")
    else:
        lines.append("created:  - (this daemon does not count daily creations)")
    return lines


def format_status(status: dict[str, Any]) -> str:
    """`cdp-monitor status` for people: breaker, pause, health, probes, channels, creations."""
    breaker = status.get("breaker") or {}
    line = f"breaker:  {breaker.get('state')} since {_fmt_time(breaker.get('since'))}"
    if breaker.get("retry_at"):
        line += f", next trial {_fmt_time(breaker['retry_at'])}"
    lines = [line]
    paused = status.get("paused")
    if paused:
        until = _fmt_time(paused.get("until")) if paused.get("until") else "resumed"
        lines.append(f"paused:   {paused.get('reason') or '(no reason)'} (until {until})")
    else:
        lines.append("paused:   no")
    health = status.get("health")
    lines.append(f"health:   {health.get('reason') if health else 'no verdict yet'}")
    for name, probe in (status.get("probes") or {}).items():
        mark = "ok" if probe.get("ok") else "FAIL"
        lines.append(f"probe:    {name:<11} {mark:<4} {probe.get('detail', '')}")
    lines += _channels_lines(status.get("channels"))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    status = asyncio.run(control_client(args).call("GET", "/status"))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK


def cmd_pause(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.duration:
        try:
            parse_duration(args.duration)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
        body["for"] = args.duration
    if args.reason:
        body["reason"] = args.reason
    print(format_status(asyncio.run(control_client(args).call("POST", "/pause", body))))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    print(format_status(asyncio.run(control_client(args).call("POST", "/resume", {}))))
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Through the running daemon (one rate limiter, one audit log, the ledger); `--direct`,
    or no daemon answering, runs against Discord from here."""
    if not args.direct:
        try:
            report = asyncio.run(
                control_client(args).call("POST", "/reconcile", {"dry_run": args.dry_run})
            )
        except ControlAPIError as exc:
            if "cannot reach" not in str(exc):
                raise
            print(f"cdp-monitor: no daemon answers ({exc}); reconciling directly")
        else:
            print(json.dumps(report, indent=2) if args.json else _report_summary(report))
            return EXIT_OK if report.get("result") in ("ok", "dry_run") else EXIT_FAILURE
    return asyncio.run(_reconcile_direct(config_path(args), args.dry_run))


def _report_summary(report: dict[str, Any]) -> str:
    mode = "dry run" if report.get("dry_run") else "live"
    counts = ", ".join(f"{key} {len(report.get(key) or [])}" for key in _REPORT_LISTS)
    line = f"reconcile {report.get('run_id')} by the daemon ({mode}): {report.get('result')}"
    error = f"\nERROR: {report['error']}" if report.get("error") else ""
    return f"{line}; {counts}{error}\n(--json for the channels)"


_REPORT_LISTS = ("planned", "deleted", "gone", "skipped", "errors")


async def _reconcile_direct(path: Path, dry_run: bool) -> int:
    import aiohttp

    from monitor import USER_AGENT
    from monitor.reconcile import format_report
    from monitor.wiring import reconcile_once

    config = load_config(path)
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
        report = await reconcile_once(config, dry_run=dry_run, session=session)
    print(format_report(report))
    return EXIT_OK if report.result in ("ok", "dry_run") else EXIT_FAILURE
