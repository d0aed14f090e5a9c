"""Derived products (``source.connector: mesh``): queryable, correct, governed, never cyclic.

A registry of its own holds the demo mesh plus derived products in an ``analytics`` domain. The
oracle is PostgreSQL with each derived product as a view of its query over the same data (the
demo's ``orders.revenue_by_country`` comes with the live mesh). Governance is checked the way
``tests/test_governance_enforcement.py`` checks it: the adversarial queries of that suite run
against a derived product over ``customers.customers`` and must return exactly what PostgreSQL
returns with a derived view over the hand-written ``security_barrier`` view of the governed
customers: a masked value of an input never comes out through a derived product.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any, Iterator

import adbc_driver_flightsql.dbapi as flightsql
import psycopg2
import pyarrow as pa
import pytest

from gateway.audit import AuditLog
from gateway.cli import load_descriptors
from gateway.descriptor import Descriptor, validate
from gateway.errors import InvalidDescriptor, InvalidQuery, NotFound, PermissionDenied
from gateway.registry import Registry
from gateway.source_roots import SourceRoots
from gateway.service import GatewayService
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine
from tests.mesh import OPEN_POLICIES, LiveMesh, data_folders, oracle_answer, rows_equal, start_gateway
from tests.test_governance_enforcement import ALICE, GOVERNED_VIEW, MASKED, PER_COLUMN, POLICIES, ROW_FILTER, for_oracle

pytestmark = pytest.mark.postgres

CUSTOMER_VIEW = """SELECT c.customer_id, c.name, c.email, c.country, c.segment, c.signup_date, c.lifetime_value,
       c.is_active, s.display_name
FROM customers.customers AS c JOIN customers.segments AS s ON s.segment = c.segment"""
CUSTOMER_COLUMNS = [
    ("customer_id", "int64"), ("name", "string"), ("email", "string"), ("country", "string"), ("segment", "string"),
    ("signup_date", "date"), ("lifetime_value", "decimal(12,2)"), ("is_active", "boolean"), ("display_name", "string"),
]
ORDER_STATUS = "SELECT status, count(*) AS orders, sum(total_amount) AS total FROM orders.orders GROUP BY status"
BIG_ORDERS = """SELECT o.order_id, c.country, c.email, o.total_amount
FROM orders.orders o JOIN customers.customers c ON c.customer_id = o.customer_id WHERE o.total_amount > 500"""
DE_REVENUE = "SELECT currency, orders, revenue FROM orders.revenue_by_country WHERE country = 'DE'"


def derived(name: str, query: str, columns: list[tuple[str, str]], version: str = "1.0.0",
            policies: dict[str, Any] | None = None, domain: str = "analytics") -> Descriptor:
    spec: dict[str, Any] = {"source": {"connector": "mesh", "query": query},
                            "schema": [{"name": n, "type": t} for n, t in columns]}
    if policies:
        spec["policies"] = policies
    return validate({"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
                     "metadata": {"name": name, "domain": domain, "owner": "analytics@example.com", "version": version},
                     "spec": spec})


DERIVED = [
    derived("customer_view", CUSTOMER_VIEW, CUSTOMER_COLUMNS),
    derived("order_status", ORDER_STATUS, [("status", "string"), ("orders", "int64"), ("total", "decimal(14,2)")]),
    derived("big_orders", BIG_ORDERS, [("order_id", "int64"), ("country", "string"), ("email", "string"),
                                       ("total_amount", "decimal(12,2)")],
            policies={"masks": [{"column": "email", "mask": "redact", "unless_roles": ["support"]}],
                      "row_filters": [{"filter": "country = 'DE'", "unless_roles": ["support"]}]}),
    derived("de_revenue", DE_REVENUE, [("currency", "string"), ("orders", "int64"), ("revenue", "decimal(14,2)")]),
]


@pytest.fixture(scope="module")
def registry(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """The live mesh's products and this module's derived ones, with their oracle views."""
    descriptors, errors = load_descriptors([live_mesh.mesh.products_dir])
    assert not errors
    registry = Registry(tmp_path_factory.mktemp("derived") / "registry.db")
    registry.register([*descriptors, *DERIVED])
    conn = psycopg2.connect(live_mesh.oracle_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(GOVERNED_VIEW)
        cur.execute("CREATE SCHEMA IF NOT EXISTS analytics; CREATE SCHEMA IF NOT EXISTS governed_analytics")
        for d in DERIVED:
            cur.execute(f"CREATE OR REPLACE VIEW analytics.{d.name} AS {_typed_view(d)}")
        governed_query = CUSTOMER_VIEW.replace("customers.customers", "governed.customers")
        cur.execute(f"CREATE OR REPLACE VIEW governed_analytics.customer_view AS {_typed_view(DERIVED[0], governed_query)}")
    conn.close()
    return registry


def _typed_view(d: Descriptor, query: str | None = None) -> str:
    casts = ", ".join(f'CAST("{c.name}" AS {c.type.sql}) AS "{c.name}"' for c in d.columns)
    return f"SELECT {casts} FROM ({query or d.source.query}) AS q"


def _service(registry: Registry, policies: Path) -> GatewayService:
    audit = AuditLog(registry.path.parent / f"audit-{uuid.uuid4().hex[:8]}.log")
    return GatewayService(registry, policies=PolicyEngine.load(policies), audit=audit,
                          source_roots=SourceRoots.of([registry.path.parent, *data_folders(registry)]))


@pytest.fixture(scope="module")
def open_service(registry: Registry) -> Iterator[GatewayService]:
    service = _service(registry, OPEN_POLICIES)
    yield service
    service.close()


@pytest.fixture(scope="module")
def governed_service(registry: Registry) -> Iterator[GatewayService]:
    service = _service(registry, POLICIES)
    yield service
    service.close()


def run(service: GatewayService, sql: str, principal: Principal = ANONYMOUS) -> pa.Table:
    return service.execute(sql, principal).read_all()


def assert_like_oracle(service: GatewayService, oracle_uri: str, sql: str, oracle_sql: str | None = None,
                       principal: Principal = ANONYMOUS) -> None:
    names, _, expected = oracle_answer(oracle_uri, oracle_sql or sql)
    table = run(service, sql, principal)
    assert table.column_names == names, sql
    actual = [tuple(row.values()) for row in table.to_pylist()]
    problem = rows_equal(expected, actual, ordered="ORDER BY" in sql.upper().split(")")[-1])
    assert problem is None, f"{sql}: {problem}"


# --- answers equal PostgreSQL's --------------------------------------------------------------------

QUERIES = [
    "SELECT * FROM orders.revenue_by_country ORDER BY country, currency",
    "SELECT country, revenue FROM orders.revenue_by_country WHERE orders > 20 ORDER BY revenue DESC, country",
    "SELECT sum(orders) AS orders, sum(customers) AS customers FROM orders.revenue_by_country",
    "SELECT r.country, r.revenue, k.name FROM orders.revenue_by_country r JOIN shipping.carriers k ON k.country = r.country ORDER BY 1, 3",
    "SELECT a.country, b.country AS other FROM orders.revenue_by_country a JOIN orders.revenue_by_country b ON a.currency = b.currency AND a.country < b.country ORDER BY 1, 2",
    "WITH top AS (SELECT country FROM orders.revenue_by_country ORDER BY revenue DESC LIMIT 3) SELECT count(*) FROM customers.customers WHERE country IN (SELECT country FROM top)",
    "SELECT * FROM analytics.order_status ORDER BY status",
    "SELECT status FROM analytics.order_status WHERE total > 1000 ORDER BY 1",
    "SELECT * FROM analytics.de_revenue ORDER BY currency",
    "SELECT segment, count(*) AS n, count(email) AS emails FROM analytics.customer_view GROUP BY segment ORDER BY segment",
    "SELECT v.display_name, count(*) FROM analytics.customer_view v JOIN orders.orders o ON o.customer_id = v.customer_id GROUP BY 1 ORDER BY 1",
    'SELECT count(*) FROM analytics."customer_view@1" WHERE country = \'JP\'',
]


@pytest.mark.parametrize("sql", QUERIES)
def test_derived_answers_equal_postgres(open_service: GatewayService, live_mesh: LiveMesh, sql: str) -> None:
    assert_like_oracle(open_service, live_mesh.oracle_uri, sql, sql.replace('"customer_view@1"', "customer_view"))


def test_the_same_through_flight_sql(registry: Registry, live_mesh: LiveMesh) -> None:
    service, server, uri = start_gateway(registry)
    try:
        with flightsql.connect(uri) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT country, currency, revenue FROM orders.revenue_by_country ORDER BY 1, 2")
            rows = cursor.fetchall()
    finally:
        server.shutdown()
        service.close()
    _, _, expected = oracle_answer(live_mesh.oracle_uri, "SELECT country, currency, revenue FROM orders.revenue_by_country ORDER BY 1, 2")
    assert rows_equal(expected, rows, ordered=True) is None


def test_output_has_the_contract_types(open_service: GatewayService) -> None:
    table = run(open_service, "SELECT * FROM orders.revenue_by_country")
    assert table.schema.types == [pa.string(), pa.string(), pa.int64(), pa.int64(), pa.decimal128(14, 2)]
    prepared = open_service.prepare("SELECT * FROM analytics.order_status", ANONYMOUS)
    assert prepared.result_schema.field("total").type == pa.decimal128(14, 2)


def test_a_derived_product_over_one_source_runs_entirely_there(open_service: GatewayService) -> None:
    explain = run(open_service, "EXPLAIN SELECT status FROM analytics.order_status WHERE orders > 10").to_pylist()
    steps = [row["step"] for row in explain]
    assert steps == ["fragment f0", "result"], explain
    assert "GROUP BY" in explain[0]["sql"] and explain[0]["source"].startswith("duckdb:")


def test_audit_names_the_derived_product_and_its_inputs(open_service: GatewayService) -> None:
    reader = open_service.execute("SELECT count(*) FROM analytics.de_revenue", ANONYMOUS)
    products = reader.schema.metadata[b"meshgate.products"].decode().split(",")
    reader.read_all()
    assert set(products) == {"analytics.de_revenue@1.0.0", "orders.revenue_by_country@1.0.0",
                             "orders.orders@1.0.0", "customers.customers@1.0.0"}


# --- governance through derived products (adversarial) -----------------------------------------------

VIEW_CASES = (
    [(f"{i:02d}-{c}", t.replace("{C}", c.upper()).format(c=c)) for i, t in enumerate(PER_COLUMN) for c in MASKED]
    + [(f"filter-{i:02d}", q) for i, q in enumerate(ROW_FILTER[:15])]
)


def _through_view(sql: str) -> str:
    return sql.replace("customers.customers", "analytics.customer_view").replace("CUSTOMERS.CUSTOMERS", "ANALYTICS.CUSTOMER_VIEW")


@pytest.mark.parametrize(("name", "sql"), VIEW_CASES, ids=[n for n, _ in VIEW_CASES])
def test_input_masks_and_filters_hold_through_a_derived_product(
    governed_service: GatewayService, live_mesh: LiveMesh, name: str, sql: str
) -> None:
    query = _through_view(sql)
    oracle = for_oracle(query).replace("analytics.customer_view", "governed_analytics.customer_view").replace(
        "ANALYTICS.CUSTOMER_VIEW", "governed_analytics.customer_view")
    assert_like_oracle(governed_service, live_mesh.oracle_uri, query, oracle, principal=ALICE)


def test_no_raw_personal_value_comes_out(governed_service: GatewayService, live_mesh: LiveMesh) -> None:
    _, _, raw = oracle_answer(live_mesh.oracle_uri, "SELECT name, email FROM customers.customers")
    secrets = {v for row in raw for v in row if v}
    for sql in ("SELECT * FROM analytics.customer_view", "SELECT name, email, count(*) FROM analytics.customer_view GROUP BY 1, 2",
                "SELECT DISTINCT email FROM analytics.big_orders", "SELECT a.name FROM analytics.customer_view a "
                "JOIN analytics.customer_view b ON a.email = b.email AND a.customer_id <> b.customer_id"):
        values = {v for row in run(governed_service, sql, ALICE).to_pylist() for v in row.values()}
        assert not values & secrets, sql
    countries = {r["country"] for r in run(governed_service, "SELECT DISTINCT country FROM analytics.customer_view", ALICE).to_pylist()}
    assert countries == {"DE"}


def test_the_derived_products_own_policies_apply(open_service: GatewayService, live_mesh: LiveMesh) -> None:
    """big_orders redacts email and keeps only DE rows for everyone but role support."""
    oracle = f"SELECT order_id, country, '[REDACTED]'::text AS email, total_amount FROM ({BIG_ORDERS}) q WHERE country = 'DE' ORDER BY order_id"
    assert_like_oracle(open_service, live_mesh.oracle_uri, "SELECT * FROM analytics.big_orders ORDER BY order_id", oracle)
    support = Principal("sam", frozenset({"support"}), {})
    assert_like_oracle(open_service, live_mesh.oracle_uri, "SELECT * FROM analytics.big_orders ORDER BY order_id",
                       f"SELECT * FROM ({BIG_ORDERS}) q ORDER BY order_id", principal=support)


def test_no_query_predicate_sees_a_row_the_derived_row_filter_removes(open_service: GatewayService, live_mesh: LiveMesh) -> None:
    """The division-by-zero side channel: the row filter runs before the query's predicates."""
    sql = "SELECT count(*) AS n FROM analytics.big_orders WHERE 1 / (CASE WHEN country = 'US' THEN 0 ELSE 1 END) = 1"
    _, _, expected = oracle_answer(live_mesh.oracle_uri, f"SELECT count(*) FROM ({BIG_ORDERS}) q WHERE country = 'DE'")
    assert run(open_service, sql).to_pylist() == [{"n": expected[0][0]}]
    steps = [row["step"] for row in run(open_service, "EXPLAIN " + sql).to_pylist()]
    assert any(step.startswith("stage ") for step in steps), steps  # multi-source: computed before the query


def test_a_derived_product_over_a_denied_product_is_denied(registry: Registry, governed_service: GatewayService) -> None:
    registry.register([derived("carrier_names", "SELECT name FROM shipping.carriers", [("name", "string")])])
    registry.catalog(max_age=0)  # the service sees it now, not within its 0.5 s
    with pytest.raises(PermissionDenied, match=r"shipping\.carriers.*analytics\.carrier_names"):
        run(governed_service, "SELECT * FROM analytics.carrier_names", ALICE)


# --- what registration and planning refuse ----------------------------------------------------------


def test_registration_refuses_a_derived_product_reading_itself(registry: Registry) -> None:
    with pytest.raises(InvalidDescriptor, match=r"reads itself: analytics\.selfish -> analytics\.selfish"):
        registry.register([derived("selfish", "SELECT status FROM analytics.selfish", [("status", "string")])])
    # through others: a new version of order_status that reads de_revenue, which reads revenue_by_country ...
    loop = derived("loop_b", "SELECT status FROM analytics.loop_a", [("status", "string")])
    registry.register([derived("loop_a", "SELECT status FROM analytics.order_status", [("status", "string")])])
    registry.register([loop])
    with pytest.raises(InvalidDescriptor, match=r"analytics\.loop_a -> analytics\.loop_b -> analytics\.loop_a"):
        registry.register([derived("loop_a", "SELECT status FROM analytics.loop_b", [("status", "string")], version="1.1.0")])


def test_registration_refuses_unknown_inputs_and_missing_columns(registry: Registry) -> None:
    with pytest.raises(InvalidDescriptor) as refused:
        registry.register([derived("broken", "SELECT o.status FROM orders.nope o JOIN customers AS c ON true",
                                   [("status", "string"), ("missing", "int64")])])
    problems = " | ".join(refused.value.problems)
    assert "orders.nope" in problems and "'customers' is not a product name" in problems
    assert "no column 'missing'" in problems
    with pytest.raises(InvalidDescriptor, match="one SELECT"):
        registry.register([derived("params", "SELECT status FROM orders.orders WHERE order_id = $1", [("status", "string")])])


def test_a_cycle_or_retired_input_found_at_query_time_is_an_error(registry: Registry, tmp_path: Path) -> None:
    """A registry written without the registration checks (an older gateway, a hand edit)."""
    own = Registry(tmp_path / "registry.db")
    own.register([d for d in registry.catalog().products() if not d.derived])
    own.register([derived("ring_a", "SELECT status FROM orders.orders", [("status", "string")]),
                  derived("ring_b", "SELECT status FROM analytics.ring_a", [("status", "string")]),
                  derived("old_orders", "SELECT order_id FROM orders.order_items", [("order_id", "int64")])])
    ring = derived("ring_a", "SELECT status FROM analytics.ring_b", [("status", "string")], version="1.1.0")
    import json

    with sqlite3.connect(own.path) as conn:
        conn.execute("INSERT INTO product_versions (product_id, version, major, descriptor, registered_at) VALUES (?, ?, 1, ?, 0)",
                     (ring.product_id, ring.version, json.dumps(ring.raw)))
        conn.execute("UPDATE product_versions SET status = 'retired' WHERE product_id = 'orders.order_items'")
        conn.execute("UPDATE registry_meta SET value = value + 1")
    service = _service(own, OPEN_POLICIES)
    try:
        with pytest.raises(InvalidQuery, match=r"reads itself: analytics\.ring_\w -> analytics\.ring_\w -> analytics\.ring_\w"):
            run(service, "SELECT * FROM analytics.ring_b")
        with pytest.raises(NotFound, match=r"analytics\.old_orders 1\.0\.0: data product 'orders\.order_items' was retired"):
            run(service, "SELECT * FROM analytics.old_orders")
    finally:
        service.close()
