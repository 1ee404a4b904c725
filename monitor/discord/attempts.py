"""One request, one attempt: aiohttp resends an idempotent request (GET, PUT, DELETE) once,
by itself, when its connection is reset. That resend never passes our rate limiter
(DELETEs peaked at 45/s against a configured 25/s), so it is refused here and the REST
client's own retry, paced and counted, decides instead."""

from __future__ import annotations

import aiohttp
from aiohttp import ClientHandlerType, ClientMiddlewareType


def no_hidden_resend() -> ClientMiddlewareType:
    """A per-request middleware (aiohttp calls it once per attempt) refusing a second one."""
    sent = False

    async def once(
        req: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        nonlocal sent
        if sent:
            raise aiohttp.ServerDisconnectedError("connection lost (not resent unpaced)")
        sent = True
        return await handler(req)

    return once
