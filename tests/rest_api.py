"""A real REST API for tests: ``create_app`` over a GatewayService on the live demo mesh, served by
uvicorn on a socket, sharing its ``Authenticator`` with a Flight SQL server (so tokens from either
side work on both), with users alice and bob (analysts in DE and US), carol (admin) and olivia (an
analyst who owns the logistics domain)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from gateway.audit import AuditLog
from gateway.auth import Authenticator
from gateway.cache import ResultCache
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.rest import create_app, serve_http
from gateway.service import GatewayService, Settings
from gateway.users import UsersFile, add_user
from policies.engine import PolicyEngine
from tests.http import Response, http
from tests.http import basic as http_basic
from tests.mesh import demo_clock

GOVERNED = Path(__file__).parent / "policies" / "governed"
PASSWORDS = {"alice": "alice-Pw-1", "bob": "bob-Pw-22", "carol": "carol-Pw-333", "olivia": "olivia-Pw-4444"}


def write_users(path: Path) -> None:
    add_user(path, "alice", PASSWORDS["alice"], ["analyst"], {"region": "DE", "only_succeeded": True})
    add_user(path, "bob", PASSWORDS["bob"], ["analyst"], {"region": "US", "only_succeeded": False})
    add_user(path, "carol", PASSWORDS["carol"], ["admin"], {"region": "FR"})
    add_user(path, "olivia", PASSWORDS["olivia"], ["analyst", "owner:logistics"], {"region": "DE", "only_succeeded": True})


def basic(user: str, password: str | None = None) -> str:
    return http_basic(user, password if password is not None else PASSWORDS.get(user, "wrong"))


@dataclass
class Api:
    url: str
    flight_uri: str
    service: GatewayService
    servers: list[Any] = field(default_factory=list)

    def call(self, path: str, body: Any = None, user: str | None = "alice", token: str | None = None,
             method: str | None = None, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        authorization = f"Bearer {token}" if token is not None else basic(user) if user is not None else None
        return http(self.url + path, body, authorization=authorization, method=method, raw=raw, headers=headers)

    def close(self) -> None:
        for server in self.servers:
            server.stop() if hasattr(server, "stop") else server.shutdown()
        self.service.close()


def start_api(registry: Registry, tmp: Path, policies: Path = GOVERNED, settings: Settings = Settings()) -> Api:
    write_users(tmp / "users.yaml")
    authenticator = Authenticator(UsersFile(tmp / "users.yaml"))
    service = GatewayService(registry, settings, policies=PolicyEngine.load(policies),
                             audit=AuditLog(tmp / f"audit-{uuid.uuid4().hex[:8]}.log"),
                             cache=ResultCache(settings.cache_bytes or 256 * 1024**2, clock=demo_clock(registry))
                             if settings.cache_bytes != 0 else None)  # the demo data within its SLA
    flight_server = MeshFlightServer("grpc://127.0.0.1:0", service, authenticator=authenticator)
    http = serve_http(create_app(service, authenticator), "127.0.0.1", 0)
    return Api(http.url, f"grpc://127.0.0.1:{flight_server.port}", service, [http, flight_server])


def api_fixture(api: Api) -> Iterator[Api]:
    try:
        yield api
    finally:
        api.close()
