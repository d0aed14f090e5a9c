"""The policy evaluation API over a real socket: ``POST /api/v1/policy/evaluate`` and ``/healthz``.

A real uvicorn server (``gateway.rest.serve_http``) serves ``create_app`` over a GatewayService on
the live demo mesh under ``tests/policies/governed`` (customers masked and filtered by region,
payments hashed and filtered by a boolean attribute, carriers denied, small order groups
suppressed), with a users file. It shares its ``Authenticator`` with a Flight SQL server, so a
bearer token from a Flight Handshake works on the REST API. Calls go through ``urllib``.
Last, ``meshgate serve --http-port`` is started as a process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest

from gateway.audit import AuditLog
from gateway.auth import Authenticator
from gateway.flight.server import MeshFlightServer
from gateway.rest import create_app, serve_http
from gateway.service import GatewayService
from gateway.users import UsersFile
from policies.engine import PolicyEngine
from tests.http import basic, http
from tests.mesh import LiveMesh
from tests.rest_api import PASSWORDS, write_users

pytestmark = pytest.mark.postgres

MESHGATE = [sys.executable, "-m", "gateway.cli"]
POLICIES = Path(__file__).parent / "policies" / "governed"
EVALUATE = "/api/v1/policy/evaluate"


@dataclass
class Api:
    url: str
    flight_uri: str

    def call(self, path: str, body: Any = None, user: str | None = None, token: str | None = None,
             method: str | None = None, raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        authorization = f"Bearer {token}" if token is not None else basic(user, PASSWORDS.get(user, "wrong")) if user is not None else None
        response = http(self.url + path, body, authorization=authorization, method=method, raw=raw,
                        headers={"Content-Type": "application/json"} if body is None and raw is None else None)
        return response.status, response.json(), response.headers

    def evaluate(self, body: Any, user: str | None = "alice", **kwargs: Any) -> tuple[int, dict[str, Any]]:
        status, document, _ = self.call(EVALUATE, body, user=user, **kwargs)
        return status, document


@pytest.fixture(scope="module")
def api(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("rest")
    write_users(tmp / "users.yaml")
    authenticator = Authenticator(UsersFile(tmp / "users.yaml"))
    service = GatewayService(live_mesh.registry, policies=PolicyEngine.load(POLICIES),
                             audit=AuditLog(tmp / f"audit-{uuid.uuid4().hex[:8]}.log"))
    flight_server = MeshFlightServer("grpc://127.0.0.1:0", service, authenticator=authenticator)
    http = serve_http(create_app(service, authenticator), "127.0.0.1", 0)
    try:
        yield Api(http.url, f"grpc://127.0.0.1:{flight_server.port}")
    finally:
        http.stop()
        flight_server.shutdown()
        service.close()


def by_policy(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["policy_id"]: p for p in document["policies_applied"]}


# --- health and authentication ------------------------------------------------------------------


def test_healthz_needs_no_credentials(api: Api) -> None:
    assert api.call("/healthz")[:2] == (200, {"status": "ok"})


def test_the_api_needs_credentials(api: Api) -> None:
    status, body, headers = api.call(EVALUATE, {"product": "orders.orders"})
    assert status == 401 and body["error"] == "unauthenticated" and "authentication required" in body["detail"]
    assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Basic")
    status, body = api.evaluate({"product": "orders.orders"}, user="mallory")  # unknown user, wrong password alike
    assert status == 401 and "authentication failed" in body["detail"]
    status, body = api.evaluate({"product": "orders.orders"}, user=None, token="mg1.Zm9v.1.xyz")
    assert status == 401 and body["error"] == "unauthenticated"


def test_a_flight_handshake_token_works_on_the_rest_api(api: Api) -> None:
    client = flight.FlightClient(api.flight_uri)
    try:
        _, value = client.authenticate_basic_token(b"bob", PASSWORDS["bob"].encode())
    finally:
        client.close()
    token = value.decode().removeprefix("Bearer ").strip()
    status, body = api.evaluate({"product": "payments.payments"}, user=None, token=token)
    assert status == 200, body
    assert body["principal"]["name"] == "bob"
    (row_filter,) = body["transformations"]["row_filters"]
    assert row_filter["bound_values"] == {"user.only_succeeded": False} and row_filter["sql"] == "succeeded = FALSE"


# --- decisions ------------------------------------------------------------------------------------


def test_masks_and_row_filters_with_bound_values(api: Api) -> None:
    status, body = api.evaluate({"principal": "alice", "action": "read", "product": "customers.customers"})
    assert status == 200, body
    assert body["decision"] == "allow"
    assert body["product"]["id"] == "customers.customers" and body["product"]["version"]
    assert body["principal"] == {"name": "alice", "roles": ["analyst"], "attributes": {"region": "DE", "only_succeeded": True}}
    masks = {m["column"]: m for m in body["transformations"]["masks"]}
    assert {c: m["mask"] for c, m in masks.items()} == {"name": "redact", "email": "email", "lifetime_value": "null"}
    assert masks["email"]["policy_id"] == "global/governance.yaml#customer-emails"
    assert "regexp_replace" in masks["email"]["sql"].lower()
    (row_filter,) = body["transformations"]["row_filters"]
    assert row_filter == {
        "filter": "country = {user.region}", "bound_values": {"user.region": "DE"},
        "policy_id": "global/governance.yaml#own-region", "sql": "country = 'DE'",
    }
    assert body["transformations"]["min_group_size"] is None
    policies = by_policy(body)
    assert policies["global/governance.yaml#everyone-reads"]["decision"] == "allow"
    assert policies["global/governance.yaml#everyone-reads"]["reason"]
    assert policies["global/governance.yaml#own-region"]["decision"] == "transform"
    assert policies["global/governance.yaml#own-region"]["transformations"][0]["bound_values"] == {"user.region": "DE"}
    assert policies["global/governance.yaml#customer-names"]["transformations"] == [
        {"action": "mask", "column": "name", "mask": "redact", "sql": "'[REDACTED]'"}
    ]
    columns = {c["name"]: c["access"] for c in body["columns"]}
    assert columns["name"] == "masked" and columns["country"] == "visible"
    assert isinstance(body["evaluation_time_ms"], (int, float))


def test_columns_limit_the_masks_reported(api: Api) -> None:
    status, body = api.evaluate({"product": "customers.customers", "columns": ["customer_id", "email"]})
    assert status == 200, body
    assert [m["column"] for m in body["transformations"]["masks"]] == ["email"]
    assert body["columns"] == [{"name": "customer_id", "access": "visible"}, {"name": "email", "access": "masked", "mask": "email"}]
    assert "global/governance.yaml#customer-names" not in by_policy(body)
    assert body["transformations"]["row_filters"]  # row filters apply whatever the columns


def test_what_the_api_reports_is_what_a_query_returns(api: Api) -> None:
    _, body = api.evaluate({"product": "customers.customers"})
    with flightsql.connect(api.flight_uri, db_kwargs={"username": "alice", "password": PASSWORDS["alice"]}, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT country, name, lifetime_value FROM customers.customers")
            rows = cur.fetchall()
    assert body["transformations"]["row_filters"][0]["bound_values"] == {"user.region": "DE"}
    assert rows == [("DE", "[REDACTED]", None)]


def test_a_deny_names_the_policy(api: Api) -> None:
    status, body = api.evaluate({"product": "shipping.carriers"})
    assert status == 200 and body["decision"] == "deny"
    assert by_policy(body)["global/governance.yaml#deny-carriers"] == {
        "policy_id": "global/governance.yaml#deny-carriers", "decision": "deny", "reason": "carriers are confidential",
    }
    assert body["transformations"] == {"masks": [], "row_filters": [], "min_group_size": None}
    assert {c["access"] for c in body["columns"]} == {"denied"}


def test_min_group_size(api: Api) -> None:
    status, body = api.evaluate({"product": "orders.orders"})
    assert status == 200 and body["transformations"]["min_group_size"] == 5
    assert by_policy(body)["global/governance.yaml#small-order-groups"]["transformations"] == [
        {"action": "min_group_size", "min_group_size": 5}
    ]


def test_a_principal_missing_an_attribute_is_denied_fail_closed(api: Api) -> None:
    status, body = api.evaluate({"principal": {"name": "dave", "roles": ["analyst"]}, "product": "customers.customers"},
                                user="carol")
    assert status == 200 and body["decision"] == "deny"
    assert "region" in body["reasons"][0] and "dave" in body["reasons"][0]


# --- evaluating for someone else -----------------------------------------------------------------


def test_only_admins_evaluate_for_another_principal(api: Api) -> None:
    status, body = api.evaluate({"principal": "carol", "product": "orders.orders"})
    assert status == 403 and body["error"] == "permission denied" and body["field"] == "principal"
    assert "admin" in body["detail"]
    # describing oneself with more roles or other attributes is evaluating for someone else
    for principal in ({"name": "alice", "roles": ["admin"], "attributes": {"region": "DE", "only_succeeded": True}},
                      {"name": "alice", "roles": ["analyst"], "attributes": {"region": "US", "only_succeeded": True}}):
        status, body = api.evaluate({"principal": principal, "product": "customers.customers"})
        assert status == 403, body
    # describing oneself exactly is not
    itself = {"name": "alice", "roles": ["analyst"], "attributes": {"region": "DE", "only_succeeded": True}}
    assert api.evaluate({"principal": itself, "product": "customers.customers"})[0] == 200


def test_an_admin_evaluates_for_users_and_inline_principals(api: Api) -> None:
    status, body = api.evaluate({"principal": "bob", "product": "customers.customers"}, user="carol")
    assert status == 200 and body["principal"]["name"] == "bob"
    assert body["transformations"]["row_filters"][0]["bound_values"] == {"user.region": "US"}
    # the seed design's shape: user {id, role, attributes beside them}, action query, resource
    status, body = api.evaluate(
        {"user": {"id": "user_123", "role": "analyst", "region": "JP", "only_succeeded": True},
         "action": "query", "resource": {"data_product": "payments.payments", "columns": ["method", "amount"]}},
        user="carol",
    )
    assert status == 200, body
    assert body["action"] == "read" and body["principal"]["name"] == "user_123"
    assert body["principal"]["attributes"] == {"region": "JP", "only_succeeded": True}
    assert [(m["column"], m["mask"]) for m in body["transformations"]["masks"]] == [("method", "hash")]
    assert body["transformations"]["row_filters"][0]["sql"] == "succeeded = TRUE"
    status, body = api.evaluate({"principal": "nobody", "product": "orders.orders"}, user="carol")
    assert status == 404 and body["error"] == "unknown principal" and "nobody" in body["detail"]


# --- bad requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"product": "nope.nothing"}, 404, None, "unknown data product 'nope.nothing'"),
        ({"product": "customers.custmers"}, 404, None, "did you mean customers.customers"),
        ({"product": "customers"}, 404, None, "domain.product"),
        ({"product": "customers.customers", "columns": ["email", "ssn"]}, 422, "columns", "no column(s) 'ssn'"),
        ({"product": "customers.customers", "columns": "email"}, 422, "columns", "list of column names"),
        ({}, 422, "resource.data_product", "product id"),
        ({"product": 7}, 422, "product", "product id"),
        ({"product": "orders.orders", "action": "delete"}, 422, "action", "'delete'"),
        ({"product": "orders.orders", "colour": "red"}, 422, "colour", "unknown field(s) colour"),
        ({"product": "orders.orders", "principal": 5}, 422, "principal", "user name or an object"),
        ({"product": "orders.orders", "principal": {"roles": ["x"]}}, 422, "principal.name", "name"),
        ([1, 2], 422, "body", "JSON object"),
    ],
)
def test_bad_requests_say_what_was_wrong(api: Api, body: Any, status: int, field: str | None, words: str) -> None:
    got, document = api.evaluate(body)
    assert got == status, document
    assert set(document) >= {"error", "detail"}
    assert words in document["detail"], document
    assert document.get("field") == field


def test_malformed_json_and_unknown_routes(api: Api) -> None:
    status, body, _ = api.call(EVALUATE, raw=b'{"product": ', user="alice")
    assert status == 400 and body["error"] == "invalid JSON"
    status, body, _ = api.call(EVALUATE, user="alice", method="POST")  # no body at all
    assert status == 422 and body["field"] == "body"
    status, body, _ = api.call("/api/v1/nothing", user="alice")
    assert status == 404 and body["error"] == "not found"
    status, body, _ = api.call(EVALUATE, user="alice", method="GET")
    assert status == 405 and body["error"] == "method not allowed"


def test_without_a_users_file_every_caller_is_anonymous(live_mesh: LiveMesh, tmp_path: Path) -> None:
    service = GatewayService(live_mesh.registry, policies=PolicyEngine.load(POLICIES), audit=AuditLog(tmp_path / "audit.log"))
    http = serve_http(create_app(service), "127.0.0.1", 0)
    try:
        api = Api(http.url, "")
        status, body = api.evaluate({"product": "orders.orders"}, user=None)
        assert status == 200 and body["principal"]["name"] == "anonymous" and body["principal"]["roles"] == ["public"]
        status, body = api.evaluate({"principal": "alice", "product": "orders.orders"}, user=None)
        assert status == 403
    finally:
        http.stop()
        service.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(http.url + "/healthz", timeout=2)  # stopped means stopped


# --- meshgate serve --http-port --------------------------------------------------------------------


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.2)


def test_meshgate_serve_serves_the_rest_api(live_mesh: LiveMesh, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    users = tmp_path / "users.yaml"
    write_users(users)
    port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [*MESHGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
         "--registry", str(live_mesh.registry.path), "--users", str(users), "--policies", str(POLICIES),
         "--audit-log", str(tmp_path / "audit.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        _wait_for(f"http://127.0.0.1:{http_port}/healthz", process)
        api = Api(f"http://127.0.0.1:{http_port}", f"grpc://127.0.0.1:{port}")
        status, body = api.evaluate({"product": "customers.customers"}, user="bob")
        assert status == 200 and body["transformations"]["row_filters"][0]["sql"] == "country = 'US'"
        assert api.evaluate({"product": "customers.customers"}, user=None)[0] == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        stderr = process.stderr.read()
        assert f"REST API on http://127.0.0.1:{http_port}" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_meshgate_serve_refuses_a_taken_http_port(live_mesh: LiveMesh, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(
            [*MESHGATE, "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--http-port", str(taken.getsockname()[1]),
             "--registry", str(live_mesh.registry.path), "--insecure-no-auth", "--audit-log", str(tmp_path / "audit.log")],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )
    assert result.returncode == 2, result.stderr
    assert "cannot serve the REST API" in result.stderr and "--http-port" in result.stderr


def test_http_port_zero_turns_the_rest_api_off(live_mesh: LiveMesh, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    port = free_port()
    process = subprocess.Popen(
        [*MESHGATE, "serve", "--host", "127.0.0.1", "--port", str(port), "--http-port", "0",
         "--registry", str(live_mesh.registry.path), "--insecure-no-auth", "--audit-log", str(tmp_path / "audit.log")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        process.stderr.readline()  # the authentication warning
        assert "serving Flight SQL" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "REST API" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
