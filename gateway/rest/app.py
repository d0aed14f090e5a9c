"""The REST app: authentication, JSON errors and the routers of ``gateway/rest/``.

``create_app(service, users)`` builds a FastAPI app over a ``GatewayService``; every route lives
in a router module of this package (``ROUTERS``), which reaches the service and the caller
through ``request.app.state`` and the ``caller`` dependency. No SQL or policy logic lives here.

Authentication: with ``users`` (an ``Authenticator``, or a ``UsersFile`` / path of one) every
``/api`` call needs ``Authorization: Basic <user:password>`` or ``Authorization: Bearer
<token>`` with a token the Flight SQL Handshake issued (pass the Flight server's ``Authenticator``
to share its tokens). Without ``users`` every caller is ``anonymous`` (``--insecure-no-auth``).

Errors are JSON: ``{"error": "...", "detail": "...", "field": "..."}`` (``field`` where one
input field was wrong) with 400 (bad JSON), 401, 403, 404 (unknown product, user or route),
405 or 422 (a field of the body is invalid).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "RESOURCE_EXHAUSTED": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ApiError(Exception):
    """An HTTP error with a JSON body naming what was wrong."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=self.headers)


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
        raise ApiError(401, "unauthenticated", err.message,
                       headers={"WWW-Authenticate": 'Basic realm="meshgate", charset="UTF-8"'}) from None


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
        return ApiError(status, err.status.lower().replace("_", " "), err.message).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0] if problems else {}
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return ApiError(400, "invalid JSON", f"the request body is not valid JSON: {first.get('msg', '')}").response()
        field = ".".join(location) or "body"
        return ApiError(422, "invalid request", f"{field}: {first.get('msg', 'invalid')}", field).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        names = {404: "not found", 405: "method not allowed"}
        return ApiError(err.status_code, names.get(err.status_code, "error"), str(err.detail), headers=err.headers).response()

    for router in ROUTERS:
        app.include_router(router)
    return app


# --- serving --------------------------------------------------------------------------------------


class HttpServer:
    """A uvicorn server running ``app`` in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
