"""One base exception; typed subclasses carry the fields callers act on."""

from __future__ import annotations


class MonitorError(Exception):
    """Base of every error cdp-monitor raises on purpose."""


class ConfigError(MonitorError):
    """Invalid configuration; `problems` holds (dotted.path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(
            "\n".join(f"{path}: {reason}" if path else reason for path, reason in problems)
        )


class DiscordError(MonitorError):
    """Any failure talking to Discord."""

    def __init__(self, message: str, *, route: str = "", method: str = "") -> None:
        self.route = route
        self.method = method
        super().__init__(message)


class DiscordHTTPError(DiscordError):
    """Discord answered with a non-success status (after any retries)."""

    def __init__(
        self,
        status: int,
        *,
        code: int | None = None,
        message: str = "",
        route: str = "",
        method: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.discord_message = message
        text = f"{method} {route}: HTTP {status}"
        if code is not None:
            text += f" (code {code})"
        if message:
            text += f": {message}"
        super().__init__(text, route=route, method=method)


class DiscordNotFound(DiscordHTTPError):
    """404: the resource is gone (for a delete this usually means success)."""


class DiscordForbidden(DiscordHTTPError):
    """403: the bot lacks a permission."""


class DiscordServerError(DiscordHTTPError):
    """5xx that persisted through the bounded retries."""


class DiscordUnauthorized(DiscordHTTPError):
    """401: the token is invalid. The client refuses every later call."""


class DiscordRateLimited(DiscordHTTPError):
    """429 that could not be waited out within the caller's bound."""

    def __init__(self, *, retry_after: float, is_global: bool, scope: str, **kw: object) -> None:
        self.retry_after = retry_after
        self.is_global = is_global
        self.scope = scope
        super().__init__(429, **kw)  # type: ignore[arg-type]


class DiscordCloudflareBan(DiscordRateLimited):
    """A 429 from Cloudflare, not from Discord (text body, no ``Via``): our IP is banned.

    Every call of the client fails with it, without sending, until ``until`` (the
    client's monotonic clock); ``retry_after`` is what was left of the ban when raised.
    """

    def __init__(self, *, until: float, retry_after: float, **kw: object) -> None:
        self.until = until
        super().__init__(retry_after=retry_after, is_global=True, scope="cloudflare", **kw)


class DiscordTimeout(DiscordError):
    """No answer within the timeout, through the bounded retries."""


class DiscordConnectionError(DiscordError):
    """Connection refused/reset, through the bounded retries."""


class DiscordMalformedResponse(DiscordError):
    """Discord answered something that is not the JSON we expected."""


class TokenInvalidError(DiscordUnauthorized):
    """Raised without a request when an earlier 401 marked the token dead."""


class ControlAPIError(MonitorError):
    """The CLI could not talk to the daemon's control API."""


class StateError(MonitorError):
    """The state directory could not be created or written; `path` is the file involved."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class PauseNotPersistedError(StateError):
    """A pause (or resume) took effect in memory but could not be saved: a restart would
    undo it. The control API answers an error carrying this message."""

    def __init__(self, *, paused: bool, cause: StateError) -> None:
        self.paused = paused  # the state now in force
        undo = "lose the pause" if paused else "pause again"
        done = "paused" if paused else "resumed"
        super().__init__(f"{done}, but it could not be saved (a restart would {undo}): {cause}")
        self.path = cause.path


class ScenarioError(MonitorError):
    """The demo/bench scenario could not run (a missing dependency, a daemon not starting)."""
