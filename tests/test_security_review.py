"""Adversarial tests of the routes added after the governance suite: Flight SQL key metadata,
publishing (derived products' gates, source roots, secrets in errors), the SLA API, query
history, the result cache across principals, EXPLAIN, system products and lineage.

The setup is the demo mesh under ``tests/policies/governed`` (customers' name redacted, email
masked, lifetime value nulled, rows filtered to the principal's region; carriers denied to
everyone), served by a real REST API and Flight SQL server (``tests/rest_api.py``): alice is an
analyst in DE, bob an analyst in US, carol an admin, olivia an analyst who owns ``logistics``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import yaml

from gateway.cli.common import load_descriptors
from gateway.errors import InvalidQuery, PermissionDenied
from gateway.flight import FlightSql_pb2 as pb
from gateway.flight.server import pack
from gateway.registry import Registry
from policies import Principal
from tests.mesh import LiveMesh
from tests.rest_api import PASSWORDS, Api, api_fixture, start_api

pytestmark = pytest.mark.postgres

PRODUCTS = "/api/v1/data-products"
YAML = {"Content-Type": "application/yaml"}


@pytest.fixture(scope="module")
def api(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("security-review")
    registry = Registry(live_mesh.registry.path.parent / "security-review.db")  # beside the demo data: under the roots
    descriptors, errors = load_descriptors([live_mesh.mesh.products_dir])
    assert not errors
    registry.register(descriptors)
    yield from api_fixture(start_api(registry, tmp))


@pytest.fixture(scope="module")
def secrets(live_mesh: LiveMesh) -> dict[str, list[str]]:
    """Values bob and olivia must never learn: every customer's real name and email, and the
    carriers' names (carriers are denied to everyone)."""
    conn = psycopg2.connect(live_mesh.oracle_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name, email FROM customers.customers")
            people = cur.fetchall()
            cur.execute("SELECT name FROM shipping.carriers")
            carriers = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    return {"names": [n for n, _ in people], "emails": [e for _, e in people if e], "carriers": carriers}


def leaked(text: str, values: list[str]) -> list[str]:
    return [v for v in values if v and v in text]


def publish(api: Api, document: Any, user: str = "olivia", query: str = "?dry_run=true") -> Any:
    return api.call(PRODUCTS + query, raw=yaml.safe_dump(document).encode(), user=user, method="POST", headers=YAML)


def product(name: str, source: dict[str, Any], columns: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
            "metadata": {"name": name, "domain": "logistics", "owner": "logistics@example.com", "version": "1.0.0"},
            "spec": {"source": source, "schema": columns, **spec}}


# --- Flight SQL key metadata ---------------------------------------------------------------------


def flight_fetch(api: Api, user: str, command: Any) -> pa.Table:
    with flight.connect(api.flight_uri) as client:
        header = client.authenticate_basic_token(user, PASSWORDS[user])
        options = flight.FlightCallOptions(headers=[header])
        info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)), options)
        return client.do_get(info.endpoints[0].ticket, options).read_all()


def test_key_metadata_lists_only_products_the_caller_may_read(api: Api) -> None:
    """GetPrimaryKeys / GetImportedKeys / GetExportedKeys / GetCrossReference must not reveal
    shipping.carriers (denied to everyone) or its columns, as GetTables does not."""
    assert flight_fetch(api, "bob", pb.CommandGetPrimaryKeys(db_schema="shipping", table="shipments")).num_rows == 1
    assert flight_fetch(api, "bob", pb.CommandGetPrimaryKeys(db_schema="shipping", table="carriers")).num_rows == 0
    imported = flight_fetch(api, "bob", pb.CommandGetImportedKeys(db_schema="shipping", table="shipments"))
    assert "carriers" not in imported.column("pk_table_name").to_pylist()
    assert flight_fetch(api, "bob", pb.CommandGetExportedKeys(db_schema="shipping", table="carriers")).num_rows == 0
    cross = pb.CommandGetCrossReference(pk_db_schema="shipping", pk_table="carriers", fk_db_schema="shipping", fk_table="shipments")
    assert flight_fetch(api, "bob", cross).num_rows == 0


# --- publishing a derived product over data the publisher may not read --------------------------


def derived(name: str, query: str, columns: list[dict[str, Any]], quality: list[dict[str, Any]]) -> dict[str, Any]:
    return product(name, {"connector": "mesh", "query": query}, columns, quality=quality)


def test_a_derived_products_gates_do_not_reveal_masked_values_to_its_publisher(api: Api, secrets: dict[str, list[str]]) -> None:
    """olivia sees customers' names redacted; the gates of her derived product must not read them
    unmasked: neither an error quoting a value nor a count over the real values."""
    cast = derived("people", "SELECT customer_id, name FROM customers.customers",
                   [{"name": "customer_id", "type": "string"}, {"name": "name", "type": "string"}],
                   [{"name": "cast_name", "rule": "CAST(name AS integer) > 0", "severity": "error"}])
    answer = publish(api, cast)
    assert not leaked(answer.body.decode(), secrets["names"]), answer.body.decode()[:2000]
    first = secrets["names"][0]
    oracle = derived("people", "SELECT customer_id, name FROM customers.customers",
                     [{"name": "customer_id", "type": "string"}, {"name": "name", "type": "string"}],
                     [{"name": "is_first", "rule": f"name <> '{first}'", "severity": "warning"}])
    answer = publish(api, oracle)
    check = next(c for c in answer.json()["checks"] if c["name"] == "quality.is_first")
    assert "1 of" not in check["detail"] and "0 of" not in check["detail"], check  # no count over real names
    assert answer.json()["ok"] is False  # refused: fail closed


def test_a_derived_product_over_a_denied_product_is_refused_without_its_rows(api: Api, secrets: dict[str, list[str]]) -> None:
    spy = derived("carrier_spy", "SELECT carrier_id, name FROM shipping.carriers",
                  [{"name": "carrier_id", "type": "int32"}, {"name": "name", "type": "string"}],
                  [{"name": "cast_name", "rule": "CAST(name AS integer) > 0", "severity": "error"},
                   {"name": "starts_with_d", "rule": "name NOT LIKE 'D%'", "severity": "warning"}])
    answer = publish(api, spy)
    body = answer.json()
    assert body["ok"] is False
    assert not leaked(answer.body.decode(), secrets["carriers"]), answer.body.decode()[:2000]
    assert not any(c["name"].startswith("quality.") and " of " in c["detail"] for c in body["checks"]), body["checks"]
    assert any(c["name"] == "derived_inputs" and c["status"] == "failed" and "shipping.carriers" in c["detail"]
               for c in body["checks"]), body["checks"]


def test_an_admin_still_checks_a_derived_product_over_real_rows(api: Api) -> None:
    """Admins may change any governance, so their derived products' gates see the real rows."""
    first = "SELECT customer_id, name FROM customers.customers"
    document = derived("people", first, [{"name": "customer_id", "type": "string"}, {"name": "name", "type": "string"}],
                       [{"name": "not_redacted", "rule": "name <> '[REDACTED]'", "severity": "error"}])
    document["metadata"]["domain"] = "logistics"
    answer = publish(api, document, user="carol")
    assert answer.json()["ok"] is True, answer.json()["problems"]


# --- publishing: secrets of the gateway's environment, host files ---------------------------------


def test_an_environment_secret_in_a_published_uri_is_not_echoed(api: Api, live_mesh: LiveMesh) -> None:
    os.environ["MESHGATE_REVIEW_SECRET"] = "s3cr3t-Value-42"
    root = live_mesh.registry.path.parent
    for uri in (f"{root}/${{MESHGATE_REVIEW_SECRET}}/depots.sqlite", "/tmp/${MESHGATE_REVIEW_SECRET}.sqlite"):
        document = product("depots", {"connector": "sqlite", "uri": uri, "table": "depots"},
                           [{"name": "depot_id", "type": "int32"}])
        answer = publish(api, document)
        assert answer.json()["ok"] is False
        assert "s3cr3t-Value-42" not in answer.body.decode(), answer.body.decode()
    for uri in ("postgresql://${MESHGATE_REVIEW_SECRET}@127.0.0.1:1/x", "postgresql://u:${MESHGATE_REVIEW_SECRET}@127.0.0.1:1/x"):
        document = product("depots", {"connector": "postgres", "uri": uri, "table": "depots"},
                           [{"name": "depot_id", "type": "int32"}])
        answer = publish(api, document)
        assert answer.json()["ok"] is False
        assert "s3cr3t-Value-42" not in answer.body.decode(), answer.body.decode()


def test_file_sources_cannot_reach_outside_the_roots(api: Api, live_mesh: LiveMesh, tmp_path: Path) -> None:
    root = live_mesh.registry.path.parent
    link = root / "review-escape.duckdb"
    if not link.exists():
        link.symlink_to("/etc/hostname")
    attempts = [
        {"connector": "sqlite", "uri": "/etc/hostname", "table": "t"},
        {"connector": "duckdb", "uri": str(link), "table": "t"},
        {"connector": "parquet", "uri": f"{root}/../../../../etc/*", "table": "t"},
        {"connector": "parquet", "uri": f"{root}/*/../../../../../etc/*"},
        {"connector": "sqlite", "uri": str(root / "security-review.db"), "table": "products"},  # the registry itself
    ]
    duckdb_file = next(live_mesh.mesh.products_dir.parent.glob("*.duckdb"))
    attempts += [
        {"connector": "duckdb", "uri": str(duckdb_file), "query": "SELECT content AS depot_id FROM read_text('/etc/hostname')"},
        {"connector": "duckdb", "uri": str(duckdb_file), "query": "SELECT 1 AS depot_id FROM (ATTACH '/etc/hostname')"},
        {"connector": "duckdb", "uri": str(duckdb_file), "query": "SELECT * FROM glob('/etc/*') AS g(depot_id)"},
    ]
    hostname = Path("/etc/hostname").read_text().strip()
    for source in attempts:
        answer = publish(api, product("depots", source, [{"name": "depot_id", "type": "string"}]))
        body = answer.json()
        assert body["ok"] is False, (source, body)
        assert hostname not in answer.body.decode() or hostname in str(root), (source, answer.body.decode())


# --- the SLA API --------------------------------------------------------------------------------


def test_the_sla_api_does_not_confirm_products_the_caller_may_not_read(api: Api) -> None:
    denied = api.call("/api/v1/sla/shipping.carriers", user="bob")
    unknown = api.call("/api/v1/sla/shipping.nothing_here", user="bob")
    assert (denied.status, unknown.status) == (404, 404), denied.body
    assert "deny-carriers" not in denied.body.decode() and "confidential" not in denied.body.decode()
    for path in ("/api/v1/sla/shipping.carrierz", "/api/v1/sla/shipping.carriers@7", PRODUCTS + "/shipping.carrierz",
                 PRODUCTS + "/shipping.carriers@7", "/api/v1/lineage/shipping.carrierz"):
        answer = api.call(path, user="bob")
        assert answer.status == 404 and "carriers" not in answer.body.decode().replace("carriers@7", ""), (path, answer.body)
    assert "shipping.shipments" in api.call("/api/v1/sla/shipping.shipmentz", user="bob").json()["detail"]  # readable: suggested
    overview = api.call("/api/v1/sla", user="bob").json()
    assert "shipping.carriers" not in {p["product_id"] for p in overview["products"]}


# --- query history, cache, EXPLAIN -------------------------------------------------------------


def query(api: Api, user: str, sql: str) -> Any:
    answer = api.call("/api/v1/query", {"sql": sql}, user=user)
    assert answer.status == 200, answer.body
    return answer.json()


def test_history_cache_and_explain_keep_principals_apart(api: Api, secrets: dict[str, list[str]]) -> None:
    sql = "SELECT customer_id, name, email, country FROM customers.customers ORDER BY customer_id"
    alice_rows = query(api, "alice", sql)["rows"]
    bob = query(api, "bob", sql)
    assert {r["country"] for r in alice_rows} == {"DE"} and {r["country"] for r in bob["rows"]} == {"US"}
    assert not leaked(str(bob["rows"]), secrets["names"])
    assert query(api, "alice", sql)["rows"] == alice_rows and query(api, "bob", sql)["rows"] == bob["rows"]
    explain = query(api, "bob", "EXPLAIN " + sql)
    text = " ".join(r["sql"] for r in explain["rows"])
    assert "'US'" in text and "'DE'" not in text, text
    # bob's history and mesh.queries: his own queries only, never alice's SQL sent to sources
    history = api.call("/api/v1/queries?limit=1000", user="bob").json()["queries"]
    assert history and {q["principal"] for q in history} == {"bob"}
    assert "'US'" in json.dumps(history) and "'DE'" not in json.dumps(history)
    assert api.call("/api/v1/queries?principal=alice", user="bob").status == 403
    rows = query(api, "bob", "SELECT principal, fragments, error FROM mesh.queries")["rows"]
    assert rows and {r["principal"] for r in rows} == {"bob"} and "'DE'" not in json.dumps(rows)


def test_an_error_does_not_quote_a_masked_value(api: Api, secrets: dict[str, list[str]]) -> None:
    answer = api.call("/api/v1/query", {"sql": "SELECT CAST(name AS integer) FROM customers.customers"}, user="bob")
    assert answer.status >= 400
    assert not leaked(answer.body.decode(), secrets["names"]), answer.body.decode()
    answer = api.call("/api/v1/query", {"sql": "SELECT CAST(email AS integer) FROM customers.customers"}, user="bob")
    assert not leaked(answer.body.decode(), secrets["emails"]), answer.body.decode()


# --- catalog, system products, lineage ------------------------------------------------------------


def test_catalog_routes_show_only_readable_products(api: Api) -> None:
    listed = api.call(PRODUCTS + "?limit=1000", user="bob").json()
    ids = {p.get("product_id") or p.get("id") for p in listed["products"]}
    assert "shipping.shipments" in ids and "shipping.carriers" not in ids
    assert api.call(PRODUCTS + "/shipping.carriers", user="bob").status == 404
    assert api.call(PRODUCTS + "/shipping.carriers/versions", user="bob").status == 404
    search = api.call("/api/v1/catalog/search?q=carriers", user="bob").json()
    assert "shipping.carriers" not in str(search)
    rows = query(api, "bob", "SELECT * FROM mesh.catalog")["rows"]
    assert rows and "shipping.carriers" not in str(rows)
    columns = query(api, "bob", "SELECT table_name FROM information_schema.columns WHERE table_schema = 'shipping'")["rows"]
    assert "carriers" not in {r["table_name"] for r in columns}
    graph = api.call("/api/v1/lineage/shipping.shipments?direction=both", user="bob").json()
    assert "shipping.carriers" not in {n["id"] for n in graph["nodes"]} and "shipping.carriers" not in str(graph["edges"])


# --- statements and policy errors ---------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "INSERT INTO customers.customers VALUES (1)", "DELETE FROM orders.orders", "SET search_path = x",
    "COPY customers.customers TO '/tmp/x'", "ATTACH '/etc/hostname' AS h", "PRAGMA database_list",
    "CALL something()", "SELECT 1; DROP TABLE x", "CREATE TABLE x AS SELECT 1", "LOAD httpfs",
    "INSTALL httpfs", "EXPORT DATABASE '/tmp/x'", "VACUUM", "GRANT ALL ON x TO bob",
])
def test_unknown_statement_kinds_are_rejected(api: Api, sql: str) -> None:
    with pytest.raises(InvalidQuery):
        api.service.execute(sql, Principal("bob", frozenset({"analyst"}), {"region": "US"})).read_all()


def test_a_policy_that_cannot_be_evaluated_denies(api: Api) -> None:
    nobody = Principal("nobody", frozenset({"analyst"}), {})  # no region: the row filter cannot be bound
    with pytest.raises(PermissionDenied):
        api.service.execute("SELECT count(*) FROM customers.customers", nobody).read_all()


@pytest.mark.parametrize("uri", ["postgresql://app:p@ss:w0rd@db.internal:5432/shop", "postgresql://app:pa/ss@db/shop",
                                 "postgresql://db/shop?user=app&password=p@ss:w0rd"])
def test_a_password_with_at_signs_is_redacted_whole(uri: str) -> None:
    from connectors.base import redact_uri

    shown = redact_uri(f"source {uri} failed: connection refused")
    assert "ss@" not in shown and "ss:" not in shown and "/ss" not in shown and "w0rd" not in shown, shown
    assert "db" in shown and "connection refused" in shown, shown
