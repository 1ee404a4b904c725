"""The daemon under a Cloudflare ban: at most one request per route while it lasts, the
ban counted as scope="cloudflare", the REST probe reporting it, calls resuming after.

Discord's API is the simulator behind a small real server on a loopback port that plays
Cloudflare: it forwards every request, except while banned, when it answers 429
`error code: 1015` (text, no `Via`, `Retry-After`) on every route, as Cloudflare does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from monitor.daemon import Daemon
from monitor.sim.discord import DiscordSimulator
from tests.helpers.daemon import fast_config, running_daemon
from tests.helpers.sim import put_faults
from tests.helpers.upstream import serve_all
from tests.helpers.wait import wait_for

BAN_SECONDS = 2  # the ban's Retry-After; the daemon must sit it out, then resume


class Cloudflare:
    """Forwards to `upstream`; `ban()` answers every request with the ban until it ends."""

    def __init__(self, upstream: str, http: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.http = http
        self.ban_ends: float | None = None  # loop time; set by the first ban answer
        self.banning = False
        self.during_ban: Counter[str] = Counter()  # "METHOD /path" -> requests seen
        self.after_ban: Counter[str] = Counter()

    def ban(self) -> None:
        self.banning = True

    def banned_now(self) -> bool:
        if not self.banning:
            return False
        now = asyncio.get_running_loop().time()
        if self.ban_ends is None:
            self.ban_ends = now + BAN_SECONDS
        return now < self.ban_ends

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.path}"
        if self.banned_now():
            self.during_ban[key] += 1
            return web.Response(
                status=429,
                text="error code: 1015",
                headers={"Retry-After": str(BAN_SECONDS)},
            )
        if self.ban_ends is not None:
            self.after_ban[key] += 1
        async with self.http.request(
            request.method,
            self.upstream + request.path.removeprefix("/api/v10"),
            params=request.query,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            data=await request.read(),
        ) as resp:
            body = await resp.read()
            headers = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=resp.status, body=body, headers=headers)


def rest_probe_detail(daemon: Daemon) -> str:
    result = daemon.probe_results.get("rest")
    return "" if result is None else result.detail


@asynccontextmanager
async def cloudflare_in_front(sim: DiscordSimulator) -> AsyncIterator[tuple[Cloudflare, str]]:
    async with aiohttp.ClientSession() as http:
        front = Cloudflare(sim.api_base, http)
        async with serve_all(front.handle) as url:
            yield front, url + "/api/v10"


async def test_daemon_sits_out_a_ban_with_one_request_per_route(tmp_path: Path) -> None:
    sim = DiscordSimulator()
    await sim.start("127.0.0.1", 0)
    try:
        async with cloudflare_in_front(sim) as (front, api_base):
            config = fast_config(
                sim,
                tmp_path / "state",
                discord={"api_base": api_base},
                reconcile={"enabled": True, "census_interval": "100ms"},
            )
            async with running_daemon(config) as daemon:
                await wait_for(daemon.ready, what="ready")

                def cloudflare_429s() -> float:
                    value = daemon.metrics.registry.get_sample_value(
                        "cdpmon_discord_ratelimited_total", {"scope": "cloudflare"}
                    )
                    assert value is not None  # pre-created at 0
                    return value

                assert cloudflare_429s() == 0
                front.ban()
                await wait_for(lambda: daemon.rest.banned_for > 0, what="the ban")
                # The REST probe reports the ban without sending anything.
                probe = daemon.rest.stats.sent
                await wait_for(
                    lambda: "Cloudflare ban" in rest_probe_detail(daemon),
                    what="the probe reporting the ban",
                )
                assert daemon.rest.stats.sent == probe
                # After the ban: requests reach Discord again.
                await wait_for(
                    lambda: sum(front.after_ban.values()) >= 3, what="calls after the ban"
                )
                assert front.during_ban, "the ban was never met"
                assert max(front.during_ban.values()) == 1, front.during_ban
                assert cloudflare_429s() == sum(front.during_ban.values())
                await wait_for(
                    lambda: "Cloudflare" not in rest_probe_detail(daemon),
                    what="the probe recovering",
                )
    finally:
        await sim.stop()


async def test_daemon_under_the_simulators_cloudflare_ban_fault(
    discord_sim: DiscordSimulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # The same, with the simulator's own ban (`cloudflare_ban_s`): each route is answered
    # 429 `error code: 1015` at most once while the ban lasts, then calls resume.
    config = fast_config(
        discord_sim,
        tmp_path / "state",
        reconcile={"enabled": True, "census_interval": "100ms"},
    )
    async with running_daemon(config) as daemon:
        await wait_for(daemon.ready, what="ready")
        before = Counter(discord_sim.state.requests)
        await put_faults(http, discord_sim, rest={"cloudflare_ban_s": BAN_SECONDS})
        await wait_for(lambda: daemon.rest.banned_for > 0, what="the ban")
        await wait_for(lambda: daemon.rest.banned_for == 0, what="the end of the ban")
        await wait_for(
            lambda: (
                discord_sim.state.requests[("GET /gateway/bot", 200)]
                > before[("GET /gateway/bot", 200)]
            ),
            what="a REST call after the ban",
        )
        banned = {
            route: n - before[(route, status)]
            for (route, status), n in discord_sim.state.requests.items()
            if status == 429 and n > before[(route, status)]
        }
        assert banned and max(banned.values()) == 1, banned
        counted = daemon.metrics.registry.get_sample_value(
            "cdpmon_discord_ratelimited_total", {"scope": "cloudflare"}
        )
        assert counted == sum(banned.values())
