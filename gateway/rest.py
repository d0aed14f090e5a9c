"""The REST API: HTTP in, service use cases out. No SQL or policy logic lives here.

``create_app(service, users)`` builds a FastAPI app over a ``GatewayService``; it knows nothing of
the Flight SQL server, so later routes (catalog search, metrics) are added to the same app.
``serve_http(app, host, port)`` runs it with uvicorn in a background thread.

Routes:

- ``GET /healthz``: ``{"status": "ok"}``, no authentication.
- ``GET /readyz``: 200 when the registry is readable, the policies loaded without error and every
  source answers a cheap probe (its first product, ``LIMIT 0``, within 2 s); 503 otherwise.
  The body has each check and a ``sources`` list with per-source detail. No authentication.
- ``GET /metrics``: Prometheus text format (``gateway/metrics.py``), no authentication.
- ``POST /api/v1/policy/evaluate``: what governance decides for a principal, an action and a
  product (the seed design's request and response shape, ``README.md`` "Policy API and CLI").

Authentication: with ``users`` (an ``Authenticator``, or a ``UsersFile`` / path of one) every
``/api`` call needs ``Authorization: Basic <user:password>`` or ``Authorization: Bearer
<token>`` with a token the Flight SQL Handshake issued (pass the Flight server's ``Authenticator``
to share its tokens). Without ``users`` every caller is ``anonymous`` (``--insecure-no-auth``).
Evaluating for another principal than the caller needs role ``admin``.

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

from fastapi import Body, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.auth import AuthenticationFailed, Authenticator
from gateway.errors import MeshError
from gateway.users import UsersFile
from policies import ANONYMOUS, Principal
from policies.rules import ACTIONS

log = logging.getLogger(__name__)

ADMIN_ROLE = "admin"
ACTION_ALIASES = {"query": "read", "select": "read"}
"""The seed design says ``"action": "query"``; the policy engine calls it ``read``."""

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


def create_app(service: Any, users: Authenticator | UsersFile | Path | str | None = None) -> FastAPI:
    """The REST app over ``service`` (a ``GatewayService``); see the module docstring."""
    authenticator = _authenticator(users)
    app = FastAPI(title="meshgate", summary="REST API of the meshgate data-mesh gateway", docs_url="/api/docs",
                  openapi_url="/api/openapi.json", redoc_url=None)
    app.state.service = service
    app.state.authenticator = authenticator

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

    def caller(request: Request) -> Principal:
        """The authenticated principal of this request (runs in the thread pool: scrypt is slow)."""
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

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        report = readiness(service)
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/v1/policy/evaluate")
    def evaluate(body: Any = Body(...), principal: Principal = Depends(caller)) -> JSONResponse:
        started = time.perf_counter()
        request = _evaluation_request(body)
        subject = _subject(request["principal"], principal, authenticator)
        decided = service.evaluate(subject, request["product"], request["action"])
        columns = request["columns"]
        if columns is not None:
            known = {c.name for c in decided.product.columns}
            unknown = [c for c in columns if c not in known]
            if unknown:
                raise ApiError(422, "invalid request", f"{decided.product.product_id} has no column(s) "
                               f"{', '.join(map(repr, unknown))} (it has: {', '.join(sorted(known))})", "columns")
        report = decided.report(columns)
        report["principal"] = {"name": subject.name, "roles": sorted(subject.roles), "attributes": dict(subject.attributes)}
        report["evaluation_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return JSONResponse(jsonable_encoder(report, custom_encoder={frozenset: sorted}))

    return app


# --- readiness ----------------------------------------------------------------------------------


def readiness(service: Any, timeout: float = 2.0) -> dict[str, Any]:
    """The ``/readyz`` report: registry, policies and each source's probe, with ``ready``."""
    from concurrent.futures import ThreadPoolExecutor, wait

    report: dict[str, Any] = {"ready": False, "registry": {"ok": False}, "policies": {"ok": False}, "sources": []}
    try:
        catalog = service.registry.catalog()
        report["registry"] = {"ok": True, "generation": catalog.generation, "products": len(catalog.versions)}
    except Exception as err:  # noqa: BLE001 - any failure to read it means not ready
        report["registry"] = {"ok": False, "error": str(err)[:300]}
        return report
    error = service.policies.last_error
    report["policies"] = {"ok": error is None, "generation": service.policies.generation} | ({"error": error} if error else {})
    by_source: dict[tuple[str, str], Any] = {}
    for descriptor in catalog.products():
        by_source.setdefault((descriptor.source.connector, descriptor.source.uri), descriptor)
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(by_source))), thread_name_prefix="readyz")
    futures = {pool.submit(_probe, service, d): d for d in by_source.values()}
    done, _ = wait(futures, timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    for future, d in futures.items():
        detail: dict[str, Any] = {"connector": d.source.connector, "probed_product": d.product_id}
        if future not in done:
            detail |= {"ok": False, "error": f"no answer within {timeout:g} s"}
        elif future.exception() is not None:
            detail |= {"ok": False, "error": str(future.exception())[:300]}
        else:
            detail |= {"ok": True, "source": future.result()[0], "latency_ms": future.result()[1]}
        report["sources"].append(detail)
    report["ready"] = report["policies"]["ok"] and all(s["ok"] for s in report["sources"])
    return report


def _probe(service: Any, descriptor: Any) -> tuple[str, float]:
    """Ask the product's source for none of its rows; (source's display name, milliseconds)."""
    from sqlglot import exp

    started = time.perf_counter()
    connector = service.sources.connector_for(descriptor)
    relation = connector.relation(descriptor.source.table, descriptor.source.query)
    scan = connector.scan(connector.render(exp.select("*").from_(relation).limit(0)))
    try:
        scan.reader.schema
    finally:
        scan.close()
    return connector.display_name, round((time.perf_counter() - started) * 1000, 3)


# --- the evaluate request -------------------------------------------------------------------------


def _evaluation_request(body: Any) -> dict[str, Any]:
    """Normalise both accepted shapes (ours and the seed design's) to principal, action,
    product and columns; raise ApiError 422 naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid request", "the body must be a JSON object with principal, action and product", "body")
    known = {"principal", "user", "action", "product", "resource", "columns"}
    extra = sorted(set(body) - known)
    if extra:
        raise ApiError(422, "invalid request", f"unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(known))})", extra[0])
    if "principal" in body and "user" in body:
        raise ApiError(422, "invalid request", "give principal or user, not both", "user")
    resource = body.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise ApiError(422, "invalid request", "resource must be an object {data_product, columns}", "resource")
    resource = resource or {}
    product = body.get("product", resource.get("data_product", resource.get("product")))
    field = "product" if "product" in body else "resource.data_product"
    if isinstance(product, dict):
        product = product.get("id")
    if not isinstance(product, str) or not product.strip():
        raise ApiError(422, "invalid request", f"{field}: a product id (domain.product) is required", field)
    columns = body.get("columns", resource.get("columns"))
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise ApiError(422, "invalid request", "columns: expected a list of column names", "columns")
    action = body.get("action", "read")
    if not isinstance(action, str) or ACTION_ALIASES.get(action.lower(), action.lower()) not in ACTIONS:
        raise ApiError(422, "invalid request", f"action: {action!r} is not one of {', '.join(ACTIONS)} (or query)", "action")
    principal = body.get("principal", body.get("user"))
    return {
        "principal": (principal, "principal" if "principal" in body else "user"),
        "action": ACTION_ALIASES.get(action.lower(), action.lower()),
        "product": product.strip(),
        "columns": columns,
    }


def _subject(given: tuple[Any, str], caller: Principal, authenticator: Authenticator | None) -> Principal:
    """The principal to evaluate for: the caller, a user of the users file, or one described inline.
    Anyone but the caller needs the caller to have role admin."""
    value, field = given
    if value is None:
        return caller
    is_admin = ADMIN_ROLE in caller.roles
    if isinstance(value, str):
        if value == caller.name:
            return caller
        _require_admin(is_admin, caller, value)
        user = authenticator.users.get(value) if authenticator is not None else None
        if user is None:
            where = "in the users file" if authenticator is not None else "(the server has no users file: describe the principal inline)"
            raise ApiError(404, "unknown principal", f"no user '{value}' {where}", field)
        return user.principal()
    if not isinstance(value, dict):
        raise ApiError(422, "invalid request", f"{field}: a user name or an object {{name, roles, attributes}}", field)
    subject = _inline_principal(value, field)
    if subject == Principal(caller.name, frozenset(caller.roles), dict(caller.attributes)):
        return caller
    _require_admin(is_admin, caller, subject.name)
    return subject


def _inline_principal(value: dict[str, Any], field: str) -> Principal:
    """``{name, roles, attributes}``, or the seed design's ``{id, role, <attributes>...}``."""
    name = value.get("name", value.get("id"))
    if not isinstance(name, str) or not name:
        raise ApiError(422, "invalid request", f"{field}.name: a principal name is required", f"{field}.name")
    roles = value.get("roles", [])
    if "role" in value:
        roles = [value["role"], *(roles if isinstance(roles, list) else [])]
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise ApiError(422, "invalid request", f"{field}.roles: expected a list of role names", f"{field}.roles")
    attributes = value.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ApiError(422, "invalid request", f"{field}.attributes: expected an object", f"{field}.attributes")
    attributes = dict(attributes)
    for key, item in value.items():  # seed shape: attributes beside id and role
        if key not in ("name", "id", "role", "roles", "attributes"):
            attributes[key] = item
    for key, item in attributes.items():
        if not isinstance(item, (str, int, float, bool)) and item is not None:
            raise ApiError(422, "invalid request", f"{field}.attributes.{key}: expected a string, number or boolean",
                           f"{field}.attributes.{key}")
    return Principal(name, frozenset(roles), attributes)


def _require_admin(is_admin: bool, caller: Principal, other: str) -> None:
    if not is_admin:
        raise ApiError(403, "permission denied",
                       f"{caller.name} may evaluate policies only for itself; evaluating for '{other}' needs role {ADMIN_ROLE}",
                       "principal")


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
