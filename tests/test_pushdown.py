"""Pushdown, read from EXPLAIN: what each source is asked for, in its own dialect.

The demo mesh: customers.* in SQLite, orders.* in DuckDB, payments.* in Parquet, shipping.* in
PostgreSQL.  EXPLAIN returns rows (step, source, products, sql).
"""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from policies import ANONYMOUS
from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres


def explain(live: LiveMesh, sql: str) -> list[dict[str, str]]:
    with flightsql.connect(live.uri) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN " + sql)
        return cur.fetch_arrow_table().to_pylist()


def fragments(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Fragment rows keyed by the product they read (without the version)."""
    return {
        row["products"].split("@")[0]: row for row in rows if row["step"].startswith("fragment")
    }


def test_single_source_query_is_one_fragment_streamed_through(live_mesh: LiveMesh) -> None:
    rows = explain(live_mesh, "SELECT status, count(*) FROM orders.orders WHERE total_amount > 100 GROUP BY status")
    assert [r["step"] for r in rows] == ["fragment f0", "result"]
    assert rows[0]["source"].startswith("duckdb:")
    assert "GROUP BY" in rows[0]["sql"] and "total_amount\" > 100" in rows[0]["sql"]
    assert rows[1]["source"] == "passthrough"


def test_same_source_join_is_one_fragment(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT o.currency, sum(i.quantity * i.unit_price) FROM orders.order_items i "
        "JOIN orders.orders o ON o.order_id = i.order_id GROUP BY o.currency",
    )
    steps = [r for r in rows if r["step"].startswith("fragment")]
    assert len(steps) == 1
    assert "JOIN" in steps[0]["sql"] and "orders.order_items" in steps[0]["products"] and "orders.orders" in steps[0]["products"]


def test_federated_join_pushes_projections_and_each_sources_predicates(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.name, o.total_amount FROM customers.customers c JOIN orders.orders o ON o.customer_id = c.customer_id "
        "WHERE c.country = 'DE' AND o.status = 'returned' AND o.total_amount > c.lifetime_value",
    )
    by_product = fragments(rows)
    customers, orders = by_product["customers.customers"], by_product["orders.orders"]
    assert customers["source"].startswith("sqlite:") and orders["source"].startswith("duckdb:")
    # only the columns the query uses
    assert customers["sql"].startswith('SELECT "c"."customer_id", "c"."name", "c"."country", "c"."lifetime_value" FROM')
    assert "email" not in customers["sql"] and "currency" not in orders["sql"]
    # each source gets its own predicate, never the other's or the cross-source one
    assert "\"country\" = 'DE'" in customers["sql"] and "status" not in customers["sql"]
    assert "\"status\" = 'returned'" in orders["sql"] and "country" not in orders["sql"]
    assert "lifetime_value" not in orders["sql"]
    residual = next(r for r in rows if r["step"] == "residual")
    assert residual["source"] == "datafusion" and "JOIN" in residual["sql"]


def test_limit_with_order_is_pushed_into_a_single_table_scan(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.customer_id, c.name FROM customers.customers c WHERE c.country = 'FR' ORDER BY c.customer_id LIMIT 5 OFFSET 10",
    )
    scan = fragments(rows)["customers.customers"]
    assert "LIMIT 15" in scan["sql"] and "ORDER BY" in scan["sql"]


def test_limit_is_not_pushed_below_a_join(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.name, o.order_id FROM customers.customers c JOIN orders.orders o ON o.customer_id = c.customer_id LIMIT 5",
    )
    assert all("LIMIT" not in f["sql"] for f in fragments(rows).values())


def test_single_source_subquery_is_pushed_whole(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.country, t.n FROM customers.customers c JOIN "
        "(SELECT customer_id, count(*) AS n FROM orders.orders GROUP BY customer_id) t ON t.customer_id = c.customer_id",
    )
    orders = fragments(rows)["orders.orders"]
    assert "GROUP BY" in orders["sql"] and "COUNT(*)" in orders["sql"].upper()


def test_predicate_on_the_null_extended_side_of_a_left_join_is_not_pushed(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.customer_id, o.order_id FROM customers.customers c LEFT JOIN orders.orders o "
        "ON o.customer_id = c.customer_id WHERE o.status IS NULL",
    )
    assert "status" not in fragments(rows)["orders.orders"]["sql"].split("FROM")[1]


def test_left_join_condition_on_the_right_table_is_pushed(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.customer_id, count(o.order_id) FROM customers.customers c LEFT JOIN orders.orders o "
        "ON o.customer_id = c.customer_id AND o.status = 'cancelled' GROUP BY c.customer_id",
    )
    assert "\"status\" = 'cancelled'" in fragments(rows)["orders.orders"]["sql"]


def test_sqlite_gets_only_portable_predicates(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT c.name, o.order_id FROM customers.customers c JOIN orders.orders o ON o.customer_id = c.customer_id "
        "WHERE c.name LIKE 'A%' AND c.signup_date >= DATE '2020-01-01' + INTERVAL '1 year'",
    )
    customers = fragments(rows)["customers.customers"]["sql"]
    assert "LIKE" not in customers  # SQLite's LIKE ignores case: evaluated by the engine instead
    assert "DATE('2021-01-01')" in customers  # the date arithmetic is folded to a literal first


def test_postgres_fragment_is_in_postgres_dialect(live_mesh: LiveMesh) -> None:
    rows = explain(
        live_mesh,
        "SELECT s.shipment_id, c.country FROM shipping.shipments s JOIN orders.orders o ON o.order_id = s.order_id "
        "JOIN customers.customers c ON c.customer_id = o.customer_id WHERE s.shipped_on >= DATE '2024-03-01'",
    )
    shipments = fragments(rows)["shipping.shipments"]
    assert shipments["source"].startswith("postgres:")
    assert "CAST('2024-03-01' AS DATE)" in shipments["sql"]



def test_dynamic_filter_sends_the_small_sides_keys_to_the_large_source(live_mesh: LiveMesh) -> None:
    sql = (
        "SELECT c.country, count(*) AS n FROM customers.customers c JOIN orders.order_items i ON i.order_id = c.customer_id "
        "WHERE c.country = 'JP' GROUP BY c.country"
    )
    rows = explain(live_mesh, sql)
    assert any(r["step"] == "dynamic filter" and "f1.order_id IN (keys of f0.customer_id)" in r["sql"] for r in rows)
    with flightsql.connect(live_mesh.uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        answer = cur.fetch_arrow_table()
    sent = next(c for c in reversed(live_mesh.service.recent) if any("order_items" in sql for _, sql in c.sent)).sent
    items = next(sql for _, sql in sent if "order_items" in sql)
    assert '"_dynamic"."order_id" IN (' in items
    japanese = live_mesh.service.execute(
        "SELECT count(*) AS n FROM customers.customers WHERE country = 'JP'", ANONYMOUS
    ).read_all().column("n")[0].as_py()
    assert items.count(",") + 1 == japanese  # exactly the Japanese customers' ids
    assert answer.column("n")[0].as_py() > 0
