"""Control API (DESIGN section 6): health, readiness, metrics, status, pause/resume, reconcile.

The app talks to the daemon through the small `ControlTarget` protocol so tests can drive
it with aiohttp's test client and the real daemon pieces.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.config import parse_duration
from monitor.errors import ControlAPIError, MonitorError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlTarget(Protocol):
    """What the control API needs from the daemon."""

    def status(self) -> dict[str, Any]: ...

    def liveness(self) -> tuple[bool, dict[str, Any]]: ...

    def ready(self) -> bool: ...

    async def pause(self, duration: float | None, reason: str | None) -> None: ...

    async def resume(self) -> None: ...

    async def reconcile(self, dry_run: bool) -> dict[str, Any]: ...


class BadRequest(MonitorError):
    """A control API body the daemon cannot accept (answered with 400)."""


class Unavailable(MonitorError):
    """The daemon cannot do this now or in this configuration (answered with 503)."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


async def _json_body(
    request: web.Request, allowed: dict[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """Parse an optional JSON object body, rejecting unknown fields and wrong types."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
    for key, value in body.items():
        if value is not None and not isinstance(value, allowed[key]):
            raise BadRequest(f"{key}: wrong type {type(value).__name__}")
    return body


def build_control_app(
    target: ControlTarget, *, registry: CollectorRegistry, token: str | None
) -> web.Application:
    """The aiohttp app of the control API."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None and not _is_loopback(request.remote):
            # Without a token the API serves loopback only (config also refuses such a listen).
            return _error(403, "control API without a token serves loopback clients only")
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(400, str(exc))
        except Unavailable as exc:
            return _error(503, str(exc))

    def authorized(request: web.Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        return hmac.compare_digest(given.encode(), expected.encode())

    def needs_token(fn: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            if not authorized(request):
                return web.json_response(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await fn(request)

        return wrapper

    async def healthz(request: web.Request) -> web.Response:
        alive, detail = target.liveness()
        return web.json_response({"ok": alive, **detail}, status=200 if alive else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready = target.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response(target.status())

    async def pause(request: web.Request) -> web.Response:
        body = await _json_body(request, {"for": str, "reason": str})
        duration = None
        if body.get("for") is not None:
            try:
                duration = parse_duration(body["for"])
            except ValueError as exc:
                raise BadRequest(f"for: {exc}") from None
            if duration <= 0:
                raise BadRequest("for: must be positive")
        await target.pause(duration, body.get("reason"))
        return web.json_response(target.status())

    async def resume(request: web.Request) -> web.Response:
        await _json_body(request, {})
        await target.resume()
        return web.json_response(target.status())

    async def reconcile(request: web.Request) -> web.Response:
        body = await _json_body(request, {"dry_run": bool})
        report = await target.reconcile(bool(body.get("dry_run", False)))
        return web.json_response(report)

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", needs_token(status))
    app.router.add_post("/pause", needs_token(pause))
    app.router.add_post("/resume", needs_token(resume))
    app.router.add_post("/reconcile", needs_token(reconcile))
    return app


class ControlClient:
    """What `cdp-monitor status|pause|resume` use to talk to a running daemon."""

    def __init__(self, base_url: str, *, token: str | None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, self.base_url + path, json=body, headers=headers) as resp,
            ):
                text = await resp.text()
                try:
                    data = json.loads(text)
                except ValueError:
                    data = {"error": text.strip()[:200]}
                if resp.status >= 400:
                    raise ControlAPIError(
                        f"{method} {path}: HTTP {resp.status}: {data.get('error', data)}"
                    )
                return data
        except aiohttp.ClientError as exc:
            raise ControlAPIError(
                f"cannot reach the daemon's control API at {self.base_url}: {exc}"
            ) from None
        except TimeoutError:
            raise ControlAPIError(
                f"no answer from {self.base_url} within {self.timeout}s"
            ) from None
