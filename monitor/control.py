"""Control API (DESIGN section 6): the status page, health, readiness, metrics, status,
pause/resume, reconcile. The page's HTML lives in monitor.statuspage.

The app talks to the daemon through the small `ControlTarget` protocol so tests can drive
it with aiohttp's test client and the real daemon pieces.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.errors import ControlAPIError, MonitorError, PauseNotPersistedError
from monitor.httpserve import LIMITS, BodyTimeout, Limits, descriptor_pressure, read_body
from monitor.statuspage import History, render_page
from monitor.units import HostPort, is_loopback_host, parse_duration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_PAUSE = 30 * 86400.0  # a longer `for` is a typo, and its `until` overflows dates
MAX_REASON = 500
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# The page runs its own inline script against this origin only, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


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
    raw = await read_body(request)
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


def _host_name(value: str) -> str:
    """The host of a Host header or an Origin's authority, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _origin_host(origin: str) -> str:
    return _host_name(origin.split("://", 1)[-1].split("/", 1)[0])


def _browser_refusal(request: web.Request, hosts: frozenset[str]) -> str | None:
    """Why a request without a token looks browser-borne (None: it does not).

    Every route: the Host must name this listener (a DNS-rebinding page names its own
    domain). State changes also need a JSON body and no foreign Origin: a page cannot
    send `application/json` cross-origin without a CORS preflight we never answer."""
    host = request.headers.get("Host")
    if host is not None and _host_name(host) not in hosts:
        return "Host does not name this listener"
    if request.method in ("GET", "HEAD"):
        return None
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request"
    origin = request.headers.get("Origin")
    if origin is not None and _origin_host(origin) not in hosts:
        return "foreign Origin"
    if request.content_type != "application/json":
        return "Content-Type must be application/json"
    return None


def _guard(token: str | None, hosts: frozenset[str]) -> Middleware:
    """Middleware: without a token, loopback clients only and nothing browser-borne;
    control errors become 400/503 and HTTP errors JSON."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None:
            if not _is_loopback(request.remote):
                # Without a token the API serves loopback only (config also refuses such a listen).
                return _error(403, "control API without a token serves loopback clients only")
            refusal = _browser_refusal(request, hosts)
            if refusal is not None:
                return _error(403, refusal)
        try:
            return await handler(request)
        except (BadRequest, BodyTimeout) as exc:
            return _error(400, str(exc))
        except Unavailable as exc:
            return _error(503, str(exc))
        except PauseNotPersistedError as exc:
            # In force now, lost on a restart: the caller must hear it, not get a 200.
            return _error(500, str(exc))
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)
        except (ConnectionError, aiohttp.ClientPayloadError):
            return _error(400, "the client went away")  # nobody left to read it

    return guard


def _needs_token(token: str | None, fn: Handler) -> Handler:
    """`fn` behind the bearer token (if one is configured)."""
    expected = f"Bearer {token}".encode()

    async def wrapper(request: web.Request) -> web.StreamResponse:
        # surrogateescape: a non-ASCII header is a wrong token, not a crash.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
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

    def __init__(
        self, target: ControlTarget, registry: CollectorRegistry, history: History | None
    ) -> None:
        self._target = target
        self._registry = registry
        self._history = history

    async def page(self, request: web.Request) -> web.Response:
        page = render_page(self._target.status(), self._history, time.time())
        return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)

    async def healthz(self, request: web.Request) -> web.Response:
        alive, detail = self._target.liveness()
        body = {"ok": alive, **detail, "descriptors": descriptor_pressure()}
        return web.json_response(body, status=200 if alive else 503)

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
            if duration > MAX_PAUSE:
                raise BadRequest("for: at most 30d")
        reason = body.get("reason")
        if reason is not None and (
            len(reason) > MAX_REASON or any(not ch.isprintable() for ch in reason)
        ):
            raise BadRequest(f"reason: one line of printable text, at most {MAX_REASON} characters")
        await self._target.pause(duration, reason)
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
    target: ControlTarget,
    *,
    registry: CollectorRegistry,
    token: str | None,
    listen: HostPort | None = None,
    limits: Limits | None = None,
    history: History | None = None,
) -> web.Application:
    """The aiohttp app of the control API; `listen` adds its host to the Host names
    accepted without a token (besides the loopback names); `history` feeds the page's chart."""
    h = _Handlers(target, registry, history)
    hosts = LOOPBACK_NAMES
    if listen is not None and is_loopback_host(listen.host):
        hosts = hosts | {listen.host.strip("[]").lower()}
    app = web.Application(middlewares=[_guard(token, hosts)], client_max_size=64 * 1024)
    app[LIMITS] = limits or Limits()
    app.router.add_get("/", h.page)
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
                # A JSON body on every change: the API wants application/json.
                session.request(
                    method,
                    self.base_url + path,
                    json=None if method == "GET" else body or {},
                    headers=headers,
                ) as resp,
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
