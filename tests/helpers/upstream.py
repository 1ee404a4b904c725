"""A handler of ours answering every method and path on a free loopback port: a stand-in
for CDP, Discord's front door or Cloudflare where the simulator and emulator do not make
the behaviour a test needs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve_all(handler: Handler, *, client_max_size: int = 1024**2) -> AsyncIterator[str]:
    """Serve `handler` for the block; yields its base URL (`http://127.0.0.1:<port>`)."""
    app = web.Application(client_max_size=client_max_size)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
