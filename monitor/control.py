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
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.errors import ControlAPIError, MonitorError
from monitor.units import parse_duration

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


def _guard(token: str | None) -> Middleware:
    """Middleware: loopback only without a token; control errors become 400/503."""

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

    return guard


def _needs_token(token: str | None, fn: Handler) -> Handler:
    """`fn` behind the bearer token (if one is configured)."""
    expected = f"Bearer {token}".encode()

    async def wrapper(request: web.Request) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if token is not None and not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await fn(request)

    return wrapper


class _Handlers:
    """The control API's endpoints over one `ControlTarget`."""

    def __init__(self, target: ControlTarget, registry: CollectorRegistry) -> None:
        self._target = target
        self._registry = registry

    async def healthz(self, request: web.Request) -> web.Response:
        alive, detail = self._target.liveness()
        return web.json_response({"ok": alive, **detail}, status=200 if alive else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self._target.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._target.status())

    async def pause(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {"for": str, "reason": str})
        duration = None
        if body.get("for") is not None:
            try:
                duration = parse_duration(body["for"])
            except ValueError as exc:
                raise BadRequest(f"for: {exc}") from None
            if duration <= 0:
                raise BadRequest("for: must be positive")
        await self._target.pause(duration, body.get("reason"))
        return web.json_response(self._target.status())

    async def resume(self, request: web.Request) -> web.Response:
        await _json_body(request, {})
        await self._target.resume()
        return web.json_response(self._target.status())

    async def reconcile(self, request: web.Request) -> web.Response:
        body = await _json_body(request, {"dry_run": bool})
        report = await self._target.reconcile(bool(body.get("dry_run", False)))
        return web.json_response(report)


def build_control_app(
    target: ControlTarget, *, registry: CollectorRegistry, token: str | None
) -> web.Application:
    """The aiohttp app of the control API."""
    h = _Handlers(target, registry)
    app = web.Application(middlewares=[_guard(token)], client_max_size=64 * 1024)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/readyz", h.readyz)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/status", _needs_token(token, h.status))
    app.router.add_post("/pause", _needs_token(token, h.pause))
    app.router.add_post("/resume", _needs_token(token, h.resume))
    app.router.add_post("/reconcile", _needs_token(token, h.reconcile))
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
