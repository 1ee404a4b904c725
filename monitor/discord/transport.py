"""How the monitor reaches Discord: the one HTTP session every Discord request uses (REST,
the probes' `GET /gateway`, the gateway probe's and the session's websockets), going
through `discord.proxy` when set, else through the standard proxy environment
(`HTTPS_PROXY`, then `ALL_PROXY`, both also lower-case; `NO_PROXY` exempts hosts), else
direct. CDP users who reach Discord only through CDP's `PROXY_URL` need this: without
it every probe fails and the monitor would judge a healthy Discord unreachable.

The environment is resolved here, once, for Discord's API host, and the result is used
for the gateway's websocket too (aiohttp's own `trust_env` would look for `WSS_PROXY`
there, which nobody sets). http:// and https:// proxies are aiohttp's (HTTP CONNECT);
socks4/socks5 use the `aiohttp-socks` connector (`socks5h` resolves names at the proxy).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from monitor import USER_AGENT
from monitor.config import DiscordConfig

_SOCKS = ("socks4", "socks5", "socks5h")


@dataclass(frozen=True, slots=True)
class DiscordRoute:
    """The proxy Discord requests go through (None: direct) and why, for display."""

    proxy: str | None
    why: str

    def describe(self) -> str:
        if self.proxy is None:
            return f"direct ({self.why})"
        return f"proxy {redact_proxy(self.proxy)} ({self.why})"


def discord_route(config: DiscordConfig, environ: Mapping[str, str] | None = None) -> DiscordRoute:
    """Which way Discord requests go: `discord.proxy`, else the proxy environment."""
    if config.proxy is not None:
        return DiscordRoute(config.proxy, "discord.proxy")
    env = os.environ if environ is None else environ
    proxies = {
        name.lower().removesuffix("_proxy"): value
        for name, value in env.items()
        if value and name.lower().endswith("_proxy")
    }
    url = urlsplit(config.api_base)
    if url.hostname and _bypassed(url.hostname, proxies.get("no", "")):
        return DiscordRoute(None, "NO_PROXY")
    for key in (url.scheme, "all"):
        if key in proxies:
            return DiscordRoute(proxies[key], f"{key.upper()}_PROXY")
    return DiscordRoute(None, "no proxy configured")


def _bypassed(host: str, no_proxy: str) -> bool:
    """`NO_PROXY` as curl reads it: `*`, or hosts and domain suffixes, comma-separated."""
    host = host.lower()
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


def discord_session(
    config: DiscordConfig, environ: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """A session for Discord traffic only (not for CDP or webhooks: they must not go
    through Discord's proxy)."""
    headers = {"User-Agent": USER_AGENT}
    proxy = discord_route(config, environ).proxy
    if proxy is None:
        return aiohttp.ClientSession(headers=headers)
    scheme = urlsplit(proxy).scheme.lower()
    if scheme in _SOCKS:
        from aiohttp_socks import ProxyConnector  # only deployments with a SOCKS proxy

        url = proxy.replace("socks5h://", "socks5://", 1) if scheme == "socks5h" else proxy
        connector = ProxyConnector.from_url(url, rdns=scheme == "socks5h")
        return aiohttp.ClientSession(headers=headers, connector=connector)
    return aiohttp.ClientSession(headers=headers, proxy=proxy)


def redact_proxy(url: str) -> str:
    """A proxy URL without its user and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
