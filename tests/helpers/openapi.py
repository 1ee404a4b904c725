"""Validate requests and responses against Discord's own OpenAPI description."""

from __future__ import annotations

import functools
import json
from typing import Any

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.conftest import OPENAPI_PATH

# The spec names Discord's real server; requests are mapped onto it so paths match.
SPEC_HOST = "https://discord.com"
SPEC_PREFIX = "/api/v10"


@functools.cache
def discord_openapi() -> OpenAPI:
    if not OPENAPI_PATH.exists():
        raise FileNotFoundError(
            f"{OPENAPI_PATH} is missing: shared/ must sit beside the project checkout"
        )
    return OpenAPI.from_file_path(str(OPENAPI_PATH))


def spec_request(
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> MockRequest:
    """`path` is the part after /api/v10, e.g. "/channels/123"."""
    data = None if body is None else json.dumps(body).encode()
    return MockRequest(
        SPEC_HOST,
        method.lower(),
        SPEC_PREFIX + path,
        args=query or {},
        data=data,
        headers=headers or {},
        content_type="application/json",
    )


def validate_exchange(
    request: MockRequest, status: int, body: bytes, headers: dict[str, str]
) -> None:
    """Raise if Discord's description does not allow this answer to this request.

    `Content-Type` is compared exactly: Discord sends `application/json` with no charset,
    and discord.py compares it literally. Inner `_errors` codes are strings on the wire
    (e.g. "BASE_TYPE_BAD_LENGTH") where the description says integer; only that known
    gap is bridged before validating."""
    content_type = headers.get("Content-Type")
    assert content_type == "application/json", f"Content-Type {content_type!r}"
    body = _bridge_inner_error_codes(body)
    response = MockResponse(body, status_code=status, headers=headers, content_type=content_type)
    discord_openapi().validate_response(request, response)


def validate_request(request: MockRequest) -> None:
    discord_openapi().validate_request(request)


def _bridge_inner_error_codes(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("errors"), dict):
        return body

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_errors" and isinstance(value, list):
                    for item in value:
                        assert isinstance(item.get("code"), str), item  # Discord's wire
                        item["code"] = 50035
                else:
                    walk(value)

    walk(data["errors"])
    return json.dumps(data).encode()
