"""One small HTTP client for the tests of the REST API (urllib: no client library between the
tests and the server's real bytes)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def basic(user: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic for ``user``."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def http(url: str, body: Any = None, *, authorization: str | None = None, method: str | None = None,
         raw: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 60) -> Response:
    """``body`` as JSON (or ``raw`` bytes) to ``url``: POST when there is a body, else GET; any
    status comes back as a Response (4xx and 5xx are answers to check, not exceptions)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read())
