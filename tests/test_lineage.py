"""Lineage: the product graph (input ports and derived queries), its REST route, the ``meshgate
lineage`` command with its PNG/SVG pictures, and the impact of a change (downstream products and
recent consumers from the audit log).

The mesh is the demo's (its derived ``orders.revenue_by_country``) plus, in a registry of this
module's own: ``finance.de_revenue`` (derived from revenue_by_country, and declaring
``payments.payments`` as an input port), ``finance.report`` (derived from de_revenue) and
``logistics.carrier_mix`` (derived from ``shipping.carriers``, which the governed policies deny
to everyone).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from gateway.audit import AuditLog
from gateway.cli import load_descriptors
from gateway.descriptor import validate
from gateway.errors import NotFound
from gateway.lineage import LineageGraph, impact, lineage
from gateway.registry import Registry
from policies import Principal
from tests.mesh import LiveMesh
from tests.rest_api import Api, api_fixture, start_api

pytestmark = pytest.mark.postgres

WORKTREE = Path(__file__).resolve().parents[1]


def derived(product: str, query: str, columns: list[tuple[str, str]], ports: list[str] = (), version: str = "1.0.0"):  # noqa: ANN201
    domain, name = product.split(".")
    spec = {"source": {"connector": "mesh", "query": query}, "schema": [{"name": n, "type": t} for n, t in columns]}
    if ports:
        spec["input_ports"] = [{"product": p} for p in ports]
    return validate({"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
                     "metadata": {"name": name, "domain": domain, "owner": f"{domain}@example.com", "version": version},
                     "spec": spec})


EXTRA = [
    derived("finance.de_revenue", "SELECT currency, revenue FROM orders.revenue_by_country WHERE country = 'DE'",
            [("currency", "string"), ("revenue", "decimal(14,2)")], ports=["payments.payments"]),
    derived("finance.report", "WITH r AS (SELECT * FROM finance.de_revenue) SELECT sum(revenue) AS total FROM r",
            [("total", "decimal(20,2)")]),
    derived("logistics.carrier_mix", "SELECT r.country, count(*) AS carriers FROM shipping.carriers k "
            "JOIN orders.revenue_by_country r ON r.country = k.country GROUP BY r.country",
            [("country", "string"), ("carriers", "int64")]),
]


@pytest.fixture(scope="module")
def registry(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    descriptors, errors = load_descriptors([live_mesh.mesh.products_dir])
    assert not errors
    registry = Registry(tmp_path_factory.mktemp("lineage") / "registry.db")
    registry.register([*descriptors, *EXTRA])
    return registry


def ids(graph) -> dict[str, int]:  # noqa: ANN001
    return {node_id: graph.distance[node_id] for node_id in graph.nodes}


def edges(graph) -> set[tuple[str, str, str]]:  # noqa: ANN001
    return {(e.upstream, e.downstream, e.kind) for e in graph.edges}


# --- the graph -------------------------------------------------------------------------------------


def test_edges_come_from_queries_and_input_ports(registry: Registry) -> None:
    graph = lineage(registry.catalog(max_age=0), "finance.de_revenue", "up", 5)
    assert ids(graph) == {"finance.de_revenue": 0, "orders.revenue_by_country": -1, "payments.payments": -1,
                          "orders.orders": -2, "customers.customers": -2}
    assert edges(graph) == {
        ("orders.revenue_by_country", "finance.de_revenue", "query"),
        ("payments.payments", "finance.de_revenue", "input_port"),
        ("orders.orders", "orders.revenue_by_country", "query"),
        ("customers.customers", "orders.revenue_by_country", "query"),
    }


def test_downstream_depth_and_both_directions(registry: Registry) -> None:
    catalog = registry.catalog(max_age=0)
    down = lineage(catalog, "orders.orders", "down", 5)
    assert ids(down) == {"orders.orders": 0, "orders.revenue_by_country": 1, "finance.de_revenue": 2,
                         "logistics.carrier_mix": 2, "finance.report": 3}
    assert set(lineage(catalog, "orders.orders", "down", 1).nodes) == {"orders.orders", "orders.revenue_by_country"}
    both = lineage(catalog, "finance.de_revenue", "both", 1)
    assert ids(both) == {"finance.de_revenue": 0, "orders.revenue_by_country": -1, "payments.payments": -1,
                         "finance.report": 1}
    assert LineageGraph(catalog).downstream_of("customers.customers") == [
        "orders.revenue_by_country", "finance.de_revenue", "logistics.carrier_mix", "finance.report"]


def test_a_cycle_in_the_registry_does_not_hang_the_walk(registry: Registry, tmp_path: Path) -> None:
    own = Registry(tmp_path / "registry.db")
    own.register([d for d in registry.catalog().products() if not d.derived])
    own.register([derived("loop.a", "SELECT order_id FROM orders.orders", [("order_id", "int64")]),
                  derived("loop.b", "SELECT order_id FROM loop.a", [("order_id", "int64")])])
    closing = derived("loop.a", "SELECT order_id FROM loop.b", [("order_id", "int64")], version="1.1.0")
    with sqlite3.connect(own.path) as conn:  # as an older gateway without the registration check could have
        conn.execute("INSERT INTO product_versions (product_id, version, major, descriptor, registered_at) VALUES (?, ?, 1, ?, 0)",
                     (closing.product_id, closing.version, json.dumps(closing.raw)))
        conn.execute("UPDATE registry_meta SET value = value + 1")
    graph = lineage(own.catalog(max_age=0), "loop.a", "both", 50)
    assert ids(graph) == {"loop.a": 0, "loop.b": 1} or ids(graph) == {"loop.a": 0, "loop.b": -1}
    assert edges(graph) == {("loop.a", "loop.b", "query"), ("loop.b", "loop.a", "query")}


def test_unknown_products_and_retired_inputs(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="unknown data product 'finance.nope'"):
        lineage(registry.catalog(), "finance.nope")
    own = Registry(tmp_path / "registry.db")
    own.register([d for d in registry.catalog().products() if d.product_id != "finance.report"])
    with sqlite3.connect(own.path) as conn:
        conn.execute("UPDATE product_versions SET status = 'retired' WHERE product_id = 'payments.payments'")
        conn.execute("UPDATE registry_meta SET value = value + 1")
    graph = lineage(own.catalog(max_age=0), "finance.de_revenue", "up", 1)
    assert graph.nodes["payments.payments"].kind == "missing"


def test_an_unreadable_product_is_an_opaque_hidden_node(registry: Registry) -> None:
    catalog = registry.catalog()
    no_carriers = lambda d: d.product_id != "shipping.carriers"  # noqa: E731
    graph = lineage(catalog, "logistics.carrier_mix", "up", 1, no_carriers)
    assert ids(graph) == {"logistics.carrier_mix": 0, "orders.revenue_by_country": -1, "hidden-1": -1}
    assert {"id": "hidden-1", "kind": "hidden", "distance": -1} in graph.as_json()["nodes"]
    assert ("hidden-1", "logistics.carrier_mix", "query") in edges(graph)
    assert "shipping.carriers" not in json.dumps(graph.as_json())
    with pytest.raises(NotFound, match="unknown data product 'shipping.carriers'"):
        lineage(catalog, "shipping.carriers", visible=no_carriers)


# --- REST ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from api_fixture(start_api(registry, tmp_path_factory.mktemp("rest-lineage")))


def test_rest_lineage(api: Api) -> None:
    response = api.call("/api/v1/lineage/orders.revenue_by_country?direction=both&depth=2")
    assert response.status == 200
    body = response.json()
    assert body["product"] == "orders.revenue_by_country" and body["direction"] == "both" and body["depth"] == 2
    nodes = {n["id"]: n for n in body["nodes"]}
    assert set(nodes) == {"orders.revenue_by_country", "orders.orders", "customers.customers", "finance.de_revenue",
                          "logistics.carrier_mix", "finance.report"}
    assert nodes["orders.orders"] | {"description": ""} == {
        "id": "orders.orders", "product_id": "orders.orders", "domain": "orders", "name": "orders", "version": "1.0.0",
        "kind": "source", "connector": "duckdb", "owner": "orders-team@example.com", "description": "", "distance": -1}
    assert {"from": "orders.orders", "to": "orders.revenue_by_country", "kind": "query"} in body["edges"]
    assert api.call("/api/v1/lineage/orders.revenue_by_country?direction=down&depth=1").json()["nodes"][1]["distance"] == 1


def test_rest_lineage_hides_what_the_caller_may_not_read(api: Api) -> None:
    """The governed policies deny shipping.carriers to everyone (admin carol too)."""
    for user in ("alice", "carol"):
        body = api.call("/api/v1/lineage/logistics.carrier_mix?direction=up&depth=1", user=user).json()
        assert {n["id"] for n in body["nodes"]} == {"logistics.carrier_mix", "orders.revenue_by_country", "hidden-1"}
        assert "carriers\"" not in json.dumps(body) and "shipping" not in json.dumps(body)
        missing = api.call("/api/v1/lineage/shipping.carriers", user=user)
        assert missing.status == 404 and missing.json()["error"]


@pytest.mark.parametrize(("query", "fields"), [
    ("direction=sideways", {"direction"}),
    ("depth=0", {"depth"}),
    ("depth=lots&direction=up", {"depth"}),
    ("deep=3&direction=x", {"deep", "direction"}),
])
def test_rest_lineage_bad_parameters_are_422_listing_every_problem(api: Api, query: str, fields: set[str]) -> None:
    response = api.call(f"/api/v1/lineage/orders.orders?{query}")
    assert response.status == 422
    body = response.json()
    assert all(f"{field}:" in body["detail"] for field in fields), body


def test_rest_lineage_unknown_product_or_no_credentials(api: Api) -> None:
    assert api.call("/api/v1/lineage/orders.nope").status == 404
    assert api.call("/api/v1/lineage/not-a-product").status == 404
    assert api.call("/api/v1/lineage/orders.orders", user=None).status == 401


# --- CLI -------------------------------------------------------------------------------------------


def meshgate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_draws_the_tree_and_writes_png_and_svg(registry: Registry, tmp_path: Path) -> None:
    png, svg = tmp_path / "graph.png", tmp_path / "graph.svg"
    result = meshgate("lineage", "finance.de_revenue", "--registry", str(registry.path), "--output", str(png))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "upstream (built from)" in out and "downstream (read by)" in out
    for name in ("orders.revenue_by_country", "orders.orders", "customers.customers", "payments.payments", "finance.report"):
        assert name in out, name
    assert "(input port)" in out and out.index("orders.revenue_by_country") < out.index("orders.orders")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    result = meshgate("lineage", "orders.orders", "--direction", "down", "--depth", "5", "--registry", str(registry.path),
                      "--output", str(svg))
    assert result.returncode == 0, result.stderr
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.count("<path") > 5
    assert "upstream" not in result.stdout and "finance.report" in result.stdout


def test_cli_json_and_errors(registry: Registry, tmp_path: Path) -> None:
    result = meshgate("lineage", "finance.report", "--direction", "up", "--depth", "1", "--json", "--registry", str(registry.path))
    assert result.returncode == 0
    assert {n["id"] for n in json.loads(result.stdout)["nodes"]} == {"finance.report", "finance.de_revenue"}
    unknown = meshgate("lineage", "finance.nope", "--registry", str(registry.path))
    assert unknown.returncode == 2 and "unknown data product 'finance.nope'" in unknown.stderr
    assert meshgate("lineage", "orders.orders", "--depth", "0", "--registry", str(registry.path)).returncode == 2
    bad = meshgate("lineage", "orders.orders", "--output", str(tmp_path / "g.jpg"), "--registry", str(registry.path))
    assert bad.returncode == 2 and ".png or .svg" in bad.stderr and not (tmp_path / "g.jpg").exists()


# --- impact ----------------------------------------------------------------------------------------


def test_impact_names_downstream_products_and_recent_consumers(registry: Registry, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    alice, bob = Principal("alice", frozenset({"analyst"}), {}), Principal("bob", frozenset({"analyst"}), {})
    log.begin(alice, "SELECT * FROM finance.report", products=[("finance.report", "1.0.0")])
    log.begin(alice, "SELECT * FROM finance.report", products=[("finance.report", "1.0.0")])
    log.begin(bob, "SELECT * FROM customers.customers", products=[("customers.customers", "1.0.0")])
    log.begin(bob, "SELECT * FROM payments.payments", products=[("payments.payments", "1.0.0")])
    log.close()
    found = impact(registry.catalog(), "customers.customers", tmp_path / "audit.log", days=30)
    assert [n.id for n in found.downstream] == [
        "orders.revenue_by_country", "finance.de_revenue", "logistics.carrier_mix", "finance.report"]
    consumers = {name: (queries, via) for name, queries, _, via in found.consumers}
    assert consumers == {"alice": (2, ["finance.report"]), "bob": (1, ["customers.customers"])}
    assert impact(registry.catalog(), "finance.report", tmp_path / "audit.log").downstream == []


def test_product_diff_names_who_a_breaking_change_would_hit(registry: Registry, live_mesh: LiveMesh, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.begin(Principal("alice", frozenset({"analyst"}), {}), "SELECT * FROM finance.report",
              products=[("finance.report", "1.0.0")])
    log.close()
    doc = yaml.safe_load((live_mesh.mesh.products_dir / "customers" / "customers.yaml").read_text())
    doc["metadata"]["version"] = "1.1.0"
    doc["spec"]["schema"] = [c for c in doc["spec"]["schema"] if c["name"] != "is_active"]  # dropping a column breaks
    path = tmp_path / "customers.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = meshgate("product", "diff", str(path), "--registry", str(registry.path), "--audit-log", str(tmp_path / "audit.log"))
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "BREAKING spec.schema.is_active" in out
    assert ("impact: downstream products (4): orders.revenue_by_country, finance.de_revenue, logistics.carrier_mix, "
            "finance.report") in out
    assert "alice: 1 query, last" in out and "via finance.report" in out
    doc = yaml.safe_load((live_mesh.mesh.products_dir / "customers" / "customers.yaml").read_text())
    doc["metadata"]["version"] = "1.1.0"
    doc["metadata"]["description"] = "Said better."  # no breaking change: no impact section
    path.write_text(yaml.safe_dump(doc))
    quiet = meshgate("product", "diff", str(path), "--registry", str(registry.path), "--audit-log", str(tmp_path / "audit.log"))
    assert quiet.returncode == 0 and "impact:" not in quiet.stdout
