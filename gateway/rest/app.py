"""The REST app: authentication, JSON errors and the routers of ``gateway/rest/``.

``create_app(service, users)`` builds a FastAPI app over a ``GatewayService``; every route lives
in a router module of this package (``ROUTERS``), which reaches the service and the caller
through ``request.app.state`` and the ``caller`` dependency. No SQL or policy logic lives here.

Authentication: with ``users`` (an ``Authenticator``, or a ``UsersFile`` / path of one) every
``/api`` call needs ``Authorization: Basic <user:password>`` or ``Authorization: Bearer
<token>`` with a token the Flight SQL Handshake issued (pass the Flight server's ``Authenticator``
to share its tokens). Without ``users`` every caller is ``anonymous`` (``--insecure-no-auth``).

Errors are JSON (``ErrorBody``): ``{"error": "...", "detail": "...", "field": "...", "problems":
[{"field", "message"}, ...]}`` with ``field`` naming the first wrong input field where there is one
and ``problems`` listing every problem where there are several (an invalid body, an invalid
descriptor), so a caller fixes a request in one round trip. Statuses: 400 (bad JSON), 401, 403,
404 (unknown product, user or route), 405, 406, 409, 422 (the body is invalid), 503, 504.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.auth import AuthenticationFailed, Authenticator
from gateway.errors import MeshError
from gateway.users import UsersFile
from policies import ANONYMOUS, Principal

log = logging.getLogger(__name__)

ADMIN_ROLE = "admin"

_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,  # a concurrent publication won (gateway.errors.Conflict)
    "FAILED_PRECONDITION": 409,  # e.g. retiring before the deprecation notice period
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 503,
    "DEADLINE_EXCEEDED": 504,
}


class Problem(BaseModel):
    """One thing wrong with a request: where (a dotted field path) and what."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error response of the API."""

    error: str = Field(description="short name of the kind of error, e.g. 'invalid request'")
    detail: str = Field(description="what was wrong, and what to do about it where that helps")
    field: str | None = Field(None, description="the (first) input field that was wrong, where one was")
    problems: list[Problem] | None = Field(None, description="every problem, where a request had several")


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((401, "not authenticated"), (422, "invalid request: every problem listed"))
}
"""The error responses every ``/api`` route can give, for the OpenAPI description."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route: ``ERRORS`` plus these statuses, all ``ErrorBody``."""
    names = {400: "bad request", 403: "permission denied", 404: "not found (or not visible to the caller)",
             406: "not acceptable: the Accept header names no supported media type", 409: "conflict",
             503: "unavailable or at capacity", 504: "timed out"}
    return {**ERRORS, **{s: {"model": ErrorBody, "description": names.get(s, "error")} for s in statuses}}


class ApiError(Exception):
    """An HTTP error with a JSON body naming what was wrong (``ErrorBody``)."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None, headers: Mapping[str, str] | None = None,
                 problems: Sequence[Problem] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field
        self.headers = dict(headers or {})
        self.problems = list(problems) if problems else None

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        if self.problems:
            body["problems"] = [p.model_dump() for p in self.problems]
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def path_problem(text: str) -> Problem:
    """A ``"path: message"`` problem (as descriptor validation writes them) as a ``Problem``."""
    path, sep, message = text.partition(": ")
    return Problem(field=path, message=message) if sep and " " not in path else Problem(field="body", message=text)


def _authenticator(users: Authenticator | UsersFile | Path | str | None) -> Authenticator | None:
    if users is None or isinstance(users, Authenticator):
        return users
    if isinstance(users, UsersFile):
        return Authenticator(users)
    return Authenticator(UsersFile(Path(users)))


def caller(request: Request) -> Principal:
    """The authenticated principal of this request (a FastAPI dependency; it runs in the thread
    pool because scrypt is slow)."""
    authenticator: Authenticator | None = request.app.state.authenticator
    if authenticator is None:
        return ANONYMOUS
    authorization = request.headers.get("authorization")
    try:
        scheme = (authorization or "").strip().partition(" ")[0].lower()
        if scheme == "basic":
            return authenticator.login(authorization).principal
        return authenticator.authenticate(authorization)
    except AuthenticationFailed as err:
        raise unauthenticated(err) from None


def unauthenticated(err: AuthenticationFailed) -> ApiError:
    """The 401 for a failed authentication, inviting Basic credentials."""
    return ApiError(401, "unauthenticated", err.message, headers={"WWW-Authenticate": 'Basic realm="meshgate", charset="UTF-8"'})


def create_app(service: Any, users: Authenticator | UsersFile | Path | str | None = None) -> FastAPI:
    """The REST app over ``service`` (a ``GatewayService``); see the module docstring."""
    from gateway.rest import ROUTERS

    app = FastAPI(title="meshgate", summary="REST API of the meshgate data-mesh gateway", docs_url="/api/docs",
                  openapi_url="/api/openapi.json", redoc_url=None)
    app.state.service = service
    app.state.authenticator = _authenticator(users)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(MeshError)
    async def _mesh_error(_request: Request, err: MeshError) -> JSONResponse:
        status = _STATUS.get(err.status, 500)
        if status == 500:
            log.error("REST call failed: %s", err.message)
        name = "conflict" if status == 409 else err.status.lower().replace("_", " ")
        return ApiError(status, name, err.message).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        found = err.errors()
        invalid_json = next((p for p in found if p.get("type") == "json_invalid"), None)
        if invalid_json is not None:
            return ApiError(400, "invalid JSON", f"the request body is not valid JSON: {invalid_json.get('msg', '')}").response()
        problems = [Problem(field=_location(p.get("loc", ())), message=p.get("msg", "invalid")) for p in found]
        if not problems:
            problems = [Problem(field="body", message="invalid")]
        detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
        return ApiError(422, "invalid request", detail, problems[0].field, problems=problems).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        names = {404: "not found", 405: "method not allowed"}
        return ApiError(err.status_code, names.get(err.status_code, "error"), str(err.detail), headers=err.headers).response()

    for router in ROUTERS:
        app.include_router(router)
    return app


def _location(loc: Sequence[Any]) -> str:
    """``("body", "columns", 2)`` as ``columns[2]``; ``("query", "limit")`` as ``limit``."""
    path = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


# --- serving --------------------------------------------------------------------------------------


class HttpServer:
    """A uvicorn server running ``app`` in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without, uvicorn's h11 writes a response's head and
        # body separately and Nagle holds the body for the client's delayed ACK (+40 ms a call).
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.host = host
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="meshgate-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()


def serve_http(app: FastAPI, host: str, port: int, log_level: str = "warning") -> HttpServer:
    """Serve ``app`` on ``host:port`` (0: a free port, see ``.port``) until ``stop()``."""
    return HttpServer(app, host, port, log_level)
