"""The gate: a streaming reverse proxy in front of CDP with admission control.

`classify` says which requests create a channel, `admission` decides whether one may go
ahead (breaker, concurrency cap, rate cap, hold), `proxy` forwards and streams, `app`
ties them into the aiohttp app.
"""

from monitor.gate.app import Gate
from monitor.gate.classify import is_create_request
from monitor.gate.proxy import new_upstream_session

__all__ = ["Gate", "is_create_request", "new_upstream_session"]
