"""A real Prometheus server (Debian's `prometheus` binary) for tests, on a free loopback port.

    async with running_prometheus(tmp_path, scrape_configs=[...], rule_files=[...]) as prom:
        await prom.wait_for_series('up{job="x"} == 1')
        series = await prom.query("some_metric")

Everything lives in the given directory: the config, copies of the rule files, the TSDB
and the server's log (quoted when something goes wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.helpers.wait import wait_for

DEBIAN_PROMETHEUS = "/usr/bin/prometheus"
READY_BOUND = 30.0  # seconds; only keeps a broken setup from hanging the test run


class PrometheusQueryError(AssertionError):
    """The server refused a query (bad PromQL, bad parameters)."""


def prometheus_binary() -> str:
    """The server binary, or a test failure saying how to get it (CI installs it)."""
    found = shutil.which("prometheus") or (
        DEBIAN_PROMETHEUS if Path(DEBIAN_PROMETHEUS).exists() else None
    )
    if found is None:
        pytest.fail(
            "the prometheus server is missing: install Debian's `prometheus` package "
            "(`make test` does when run as root)",
            pytrace=False,
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrometheusServer:
    url: str
    workdir: Path
    session: aiohttp.ClientSession

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusQueryError on an error answer."""
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json(content_type=None)
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    async def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; each result is {"metric": {labels}, "value": [ts, "text"]}."""
        params = {"query": expr}
        if at is not None:
            params["time"] = repr(at)
        data = await self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        data = await self.api("alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts

    async def rule_groups(self) -> list[dict[str, Any]]:
        data = await self.api("rules")
        groups: list[dict[str, Any]] = data["groups"]
        return groups

    async def wait_for_series(
        self, expr: str, *, bound: float = READY_BOUND
    ) -> list[dict[str, Any]]:
        """Poll until `expr` returns at least one series (scrapes happen on their own clock)."""

        async def targets() -> str:
            return f"; targets: {await self.api('targets')}\n{self.log()}"

        return await wait_for(
            lambda: self.query(expr),
            what=f"a series for {expr!r}",
            bound=bound,
            interval=0.1,
            detail=targets,
        )


def write_config(
    workdir: Path,
    *,
    scrape_configs: Sequence[dict[str, Any]],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Path:
    """prometheus.yml in `workdir`, with the rule files copied next to it."""
    names = []
    for index, rule_file in enumerate(rule_files):
        name = f"rules-{index}-{rule_file.name}"
        shutil.copyfile(rule_file, workdir / name)
        names.append(name)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": names,
        "scrape_configs": list(scrape_configs),
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def static_job(name: str, target: str, *, metrics_path: str = "/metrics") -> dict[str, Any]:
    """A scrape config for one `host:port` target."""
    return {
        "job_name": name,
        "metrics_path": metrics_path,
        "static_configs": [{"targets": [target]}],
    }


@contextlib.asynccontextmanager
async def running_prometheus(
    workdir: Path,
    *,
    scrape_configs: Sequence[dict[str, Any]],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> AsyncIterator[PrometheusServer]:
    """Start Prometheus on a free loopback port, wait until /-/ready, stop it afterwards."""
    binary = prometheus_binary()

    def prepare() -> Path:
        workdir.mkdir(parents=True, exist_ok=True)
        return write_config(
            workdir,
            scrape_configs=scrape_configs,
            rule_files=rule_files,
            scrape_interval=scrape_interval,
            evaluation_interval=evaluation_interval,
        )

    config = await asyncio.to_thread(prepare)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        # The port is picked before the server binds it; another process may take it in
        # between, so a start that fails is retried on a new port.
        for _attempt in range(3):
            server = PrometheusServer(
                url=f"http://127.0.0.1:{free_port()}", workdir=workdir, session=session
            )
            proc = await _start(binary, config, server)
            if await _wait_ready(proc, server):
                break
            await _stop(proc)
            if "address already in use" not in server.log():
                raise AssertionError(f"prometheus did not become ready:\n{server.log()}")
        else:
            raise AssertionError(f"prometheus found no free port:\n{server.log()}")
        try:
            yield server
        finally:
            await _stop(proc)


async def _start(binary: str, config: Path, server: PrometheusServer) -> asyncio.subprocess.Process:
    log = await asyncio.to_thread(server.log_path.open, "ab")
    try:
        return await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={server.workdir / 'data'}",
            f"--web.listen-address={server.url.removeprefix('http://')}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        log.close()  # the child has its own copy of the descriptor


async def _wait_ready(proc: asyncio.subprocess.Process, server: PrometheusServer) -> bool:
    """True once /-/ready answers 200; False if the process exits or never gets there."""

    async def settled() -> str | None:
        if proc.returncode is not None:
            return "exited"
        try:
            async with server.session.get(f"{server.url}/-/ready") as resp:
                return "ready" if resp.status == 200 else None
        except aiohttp.ClientError:
            return None

    try:
        outcome = await wait_for(
            settled, what="prometheus /-/ready", bound=READY_BOUND, interval=0.05
        )
    except AssertionError:
        return False  # the caller reports it with the server's log
    return outcome == "ready"


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
