"""Forwarding one request to CDP: header handling, buffered or streamed answers, and a
frozen :class:`Outcome` saying what happened (the gate counts and records it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from monitor.gate.attribute import PEEK, Attribution, attribute, needs_body

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# A fixed-length upstream body up to this size is read whole and sent with the headers
# in one write (a StreamResponse sends its headers on their own first); bigger or
# chunked (SSE) bodies stream.
_BUFFER_MAX = 64 * 1024
_DROP_FORWARD = HOP_BY_HOP | {"host", "content-length"}


def new_upstream_session() -> aiohttp.ClientSession:
    """A session that changes nothing: no decompression, no cookies, no added headers."""
    return aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        connector=aiohttp.TCPConnector(limit=0),
    )


def error_response(
    status: int, code: str, message: str, retry_after: int | None = None
) -> web.Response:
    """An OpenAI-style error answer."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _strip(out: CIMultiDict[str], drop: frozenset[str], connection: str | None) -> None:
    # Copy whole (in C), then delete: cheaper per request than filtering item by item.
    for name in drop:
        if name in out:
            del out[name]
    if connection:  # headers the sender named hop-by-hop (RFC 9110 7.6.1)
        for token in connection.split(","):
            out.popall(token.strip(), None)


def forward_headers(headers: CIMultiDictProxy[str], remote: str | None) -> CIMultiDict[str]:
    out = CIMultiDict(headers)
    _strip(out, _DROP_FORWARD, headers.get("Connection"))
    if remote:
        prior = headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out = CIMultiDict(headers)
    _strip(out, HOP_BY_HOP, headers.get("Connection"))
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """What forwarding one request came to.

    `decision` is the gate metric's label; `attribution` (creates only) is the health
    sample and CDP's own error kind, if any (None: no sample, e.g. our own timeout on
    CDP); `finished` says CDP is known to be done with the request (so its ledger entry
    may close), `ok` whether it succeeded."""

    response: web.StreamResponse
    decision: str
    attribution: Attribution | None = None
    finished: bool = False
    request_id: str | None = None

    @property
    def ok(self) -> bool:
        a = self.attribution
        return self.finished and a is not None and a.sample is not False and a.kind is None


def _timed_out() -> web.Response:
    # 502, not 504: API gateways in front disable a channel on 504 (DESIGN section 7).
    return error_response(502, "upstream_timeout", "CDP (the upstream) did not answer in time")


class Proxy:
    """Forwards requests to `upstream` over `session`."""

    def __init__(
        self,
        upstream: str,
        *,
        session: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
        logger: logging.Logger,
    ) -> None:
        self.upstream = upstream
        self._base = upstream.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._log = logger

    async def forward(
        self,
        request: web.Request,
        body: bytes | aiohttp.StreamReader,
        *,
        create: str | None = None,
        on_answer: Callable[[str | None], None] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Outcome:
        """Forward `request` with `body` (read whole, or streamed from the client);
        `create` is the routed path of a channel-creating request (its answer is
        attributed), None for any other; `on_answer` hears that CDP's answer started, with
        its X-Request-Id if any, as soon as the headers arrive (before the body)."""
        try:
            upstream = await self._session.request(
                request.method,
                # The raw target, unnormalised: the path the gate classified.
                URL(self._base + request.raw_path, encoded=True),
                headers=forward_headers(request.headers, request.remote),
                data=body if body else None,  # an unread StreamReader is truthy
                allow_redirects=False,
                timeout=timeout or self._timeout,
            )
        except TimeoutError:
            # Before ClientError: aiohttp's ServerTimeoutError is both. Our own timeout
            # on CDP is no evidence about Discord: no health sample.
            return Outcome(_timed_out(), "upstream_timeout")
        except aiohttp.ClientError as exc:
            # CDP down or resetting is CDP's trouble, not Discord's: no health sample.
            return self._unavailable(exc)
        async with upstream:
            request_id = upstream.headers.get("X-Request-Id")
            if on_answer is not None:
                on_answer(request_id)
            length = upstream.content_length
            if length is not None and length <= _BUFFER_MAX:
                return await self._buffered(upstream, create, request_id)
            return await self._streamed(request, upstream, create, request_id)

    def _unavailable(self, exc: Exception) -> Outcome:
        self._log.warning("gate: upstream %s unreachable: %s", self.upstream, exc)
        response = error_response(502, "upstream_unavailable", "CDP (the upstream) is unreachable")
        return Outcome(response, "upstream_unavailable")

    async def _buffered(
        self, upstream: aiohttp.ClientResponse, create: str | None, request_id: str | None
    ) -> Outcome:
        try:
            data = await upstream.read()
        except TimeoutError:
            return Outcome(_timed_out(), "upstream_timeout", request_id=request_id)
        except aiohttp.ClientError as exc:
            return self._unavailable(exc)
        response = web.Response(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers),
            body=data,
        )
        verdict = None if create is None else attribute(create, upstream.status, data[:PEEK])
        return Outcome(response, "forwarded", verdict, finished=True, request_id=request_id)

    async def _streamed(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        create: str | None,
        request_id: str | None,
    ) -> Outcome:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers),
        )
        await response.prepare(request)
        # The first bytes of an answer that needs reading to be attributed.
        peek = bytearray() if create is not None and needs_body(create, upstream.status) else None
        try:
            async for chunk in upstream.content.iter_any():
                if peek is not None and len(peek) < PEEK:
                    peek += chunk[: PEEK - len(peek)]
                await response.write(chunk)
            await response.write_eof()
        except TimeoutError:
            # CDP went quiet mid-answer: our own timeout, no evidence about Discord (no
            # sample); CDP may still be using the channel, so the ledger keeps the
            # request open (its channel protected).
            return Outcome(response, "upstream_timeout", request_id=request_id)
        except ConnectionResetError:
            # The client went away mid-stream: not Discord's fault, no sample; CDP
            # finishes the request on its own.
            return Outcome(response, "client_disconnected", request_id=request_id)
        except aiohttp.ClientError as exc:
            # CDP broke off mid-answer (crash, reset): headers are gone, so just count
            # it; not Discord's fault.
            self._log.warning("gate: upstream broke off mid-answer: %s", exc)
            return Outcome(response, "upstream_unavailable", request_id=request_id)
        verdict = None if create is None else attribute(create, upstream.status, bytes(peek or b""))
        return Outcome(response, "forwarded", verdict, finished=True, request_id=request_id)
