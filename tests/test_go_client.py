"""The Apache Arrow Go Flight SQL client (github.com/apache/arrow-go/v18/arrow/flight/flightsql)
against the live mesh, over a real socket.

``tests/clients/setup go`` builds ``tests/clients/go`` (modules pinned by its go.sum, fetched from
the Go module proxy); the program logs in with Basic auth for a bearer token, runs a cross-domain
query, a prepared statement with a bound parameter, GetSqlInfo, GetDbSchemas and GetTables with
table schemas, and prints JSON that is compared here with PostgreSQL's answer and the contracts.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
from typing import Any, Iterator

import pytest

import gateway
from gateway.auth import Authenticator
from gateway.flight.server import serve
from gateway.users import UsersFile, add_user
from tests.clients.build import go_client
from tests.clients.compat import check
from tests.mesh import LiveMesh, oracle_answer

pytestmark = pytest.mark.postgres

CLIENT = "Go: arrow-go flightsql"
USER, PASSWORD = "go_analyst", "go-Pw-1"
QUERY = ("SELECT o.order_id, o.order_ts, o.total_amount, o.status, c.name, c.country, c.is_active, c.signup_date "
         "FROM orders.orders o JOIN customers.customers c ON c.customer_id = o.customer_id "
         "WHERE o.total_amount > 100 ORDER BY o.order_id LIMIT 40")
PREPARED = "SELECT s.shipment_id, s.weight_kg, s.shipped_on FROM shipping.shipments s WHERE s.order_id = ? ORDER BY 1"


@pytest.fixture(scope="module")
def gateway_port(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    users = tmp_path_factory.mktemp("go-users") / "users.yaml"
    add_user(users, USER, PASSWORD, ["analyst"], {"region": "DE"})
    with serve(live_mesh.service, "127.0.0.1", 0, authenticator=Authenticator(UsersFile(users))) as server:
        yield server.port


def run_client(port: int, *arguments: str, user: bool = True) -> subprocess.CompletedProcess:
    binary, _ = go_client()
    login = ["-user", USER, "-password", PASSWORD] if user else []
    return subprocess.run([str(binary), "-addr", f"127.0.0.1:{port}", *login, *arguments],
                          capture_output=True, text=True, timeout=120)


def as_python(text_or_value: Any, like: Any) -> Any:
    """A value from the Go client's JSON, in the type of PostgreSQL's value ``like``."""
    if text_or_value is None:
        return None
    if isinstance(like, decimal.Decimal):
        return decimal.Decimal(text_or_value)
    if isinstance(like, float):
        return float(text_or_value)
    if isinstance(like, dt.datetime):
        return dt.datetime.fromisoformat(text_or_value.replace("Z", "+00:00"))
    if isinstance(like, dt.date):
        return dt.date.fromisoformat(text_or_value)
    return text_or_value


def assert_rows(expected: list[tuple], rows: list[list[Any]], what: str) -> None:
    assert len(rows) == len(expected), f"{what}: {len(rows)} rows, PostgreSQL has {len(expected)}"
    for i, (e, r) in enumerate(zip(expected, rows)):
        got = tuple(as_python(v, like) for v, like in zip(r, e))
        assert got == e, f"{what}: row {i}: Go {got!r}, PostgreSQL {e!r}"


def test_go_client_query_prepared_statement_and_metadata(gateway_port: int, live_mesh: LiveMesh) -> None:
    _, version = go_client()
    order_id = oracle_answer(live_mesh.oracle_uri, "SELECT order_id FROM shipping.shipments "
                             "GROUP BY order_id ORDER BY count(*) DESC, 1 LIMIT 1")[2][0][0]
    with check(CLIENT, version, "Basic→Bearer login, cross-domain query (every type) equal to PostgreSQL, prepared "
               "statement with a bound parameter, GetSqlInfo, GetDbSchemas, GetTables with schemas"):
        result = run_client(gateway_port, "-query", QUERY, "-prepared", PREPARED, "-param", str(order_id),
                            "-tables-schema", "orders")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)

        names, _, expected = oracle_answer(live_mesh.oracle_uri, QUERY)
        assert [c["name"] for c in out["query"]["columns"]] == names
        types = {c["name"]: c["type"] for c in out["query"]["columns"]}
        assert types["order_id"] == "int64" and types["total_amount"] == "decimal(12, 2)"
        assert types["order_ts"].startswith("timestamp[us, tz=") and types["signup_date"] == "date32"
        assert_rows(expected, out["query"]["rows"], "query")

        assert [p["type"] for p in out["parameter_schema"]] == ["int64"]  # typed from s.order_id
        _, _, expected = oracle_answer(live_mesh.oracle_uri, PREPARED, (order_id,))
        assert expected
        assert_rows(expected, out["prepared"]["rows"], "prepared")

        assert out["sql_info"]["0"] == "meshgate" and out["sql_info"]["1"] == gateway.__version__
        assert out["sql_info"]["3"] == "true"  # read-only

        domains = {schema for catalog, schema in out["db_schemas"] if catalog == "mesh"}
        assert {"customers", "orders", "payments", "shipping"} <= domains

        tables = {t["name"]: t for t in out["tables"]}
        assert {"orders", "order_items"} <= set(tables) and {t["schema"] for t in out["tables"]} == {"orders"}
        orders = tables["orders"]
        assert (orders["catalog"], orders["type"]) == ("mesh", "TABLE")
        assert [(c["name"], c["type"]) for c in orders["columns"]] == [
            ("order_id", "int64"), ("customer_id", "int64"), ("order_ts", "timestamp[us, tz=UTC]"),
            ("status", "utf8"), ("total_amount", "decimal(12, 2)"), ("currency", "utf8")]


def test_go_client_without_credentials_is_refused(gateway_port: int) -> None:
    _, version = go_client()
    with check(CLIENT, version, "no credentials: UNAUTHENTICATED"):
        result = run_client(gateway_port, "-query", "SELECT 1", user=False)
        assert result.returncode != 0
        assert "Unauthenticated" in result.stderr, result.stderr
