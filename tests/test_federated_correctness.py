"""Federated answers equal PostgreSQL's over the same data, through the real ADBC Flight SQL driver.

The demo mesh spans four sources: customers in SQLite, orders in DuckDB, payments in Parquet,
shipping in PostgreSQL.  Each query runs through the gateway with ``adbc_driver_flightsql`` and,
unchanged, on the oracle database; names, type families and values must agree.
"""

from __future__ import annotations

from typing import Iterator

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from tests.mesh import LiveMesh, arrow_family, families_match, oracle_answer, rows_equal

pytestmark = pytest.mark.postgres

QUERIES: dict[str, str] = {
    "count": "SELECT count(*) FROM customers.customers",
    "group_by": "SELECT country, count(*) AS n FROM customers.customers GROUP BY country ORDER BY country",
    "three_sources": """
        SELECT c.country, count(DISTINCT o.order_id) AS orders, sum(p.amount) AS paid
        FROM customers.customers c
        JOIN orders.orders o ON o.customer_id = c.customer_id
        JOIN payments.payments p ON p.order_id = o.order_id
        WHERE p.succeeded
        GROUP BY c.country ORDER BY c.country""",
    "four_sources": """
        SELECT k.name AS carrier, count(*) AS shipments, sum(p.amount) AS paid
        FROM shipping.shipments s
        JOIN shipping.carriers k ON k.carrier_id = s.carrier_id
        JOIN orders.orders o ON o.order_id = s.order_id
        JOIN customers.customers c ON c.customer_id = o.customer_id
        JOIN payments.payments p ON p.order_id = o.order_id AND p.succeeded
        WHERE c.country IN ('DE', 'FR', 'JP')
        GROUP BY k.name ORDER BY k.name""",
    "having": """
        SELECT o.customer_id, count(*) AS n, sum(o.total_amount) AS total FROM orders.orders o
        GROUP BY o.customer_id HAVING count(*) > 3 ORDER BY total DESC, o.customer_id LIMIT 20""",
    "in_subquery": """
        SELECT customer_id, name FROM customers.customers
        WHERE customer_id IN (SELECT customer_id FROM orders.orders WHERE total_amount > 2500)
        ORDER BY customer_id""",
    "correlated_exists": """
        SELECT c.customer_id FROM customers.customers c
        WHERE EXISTS (SELECT 1 FROM orders.orders o WHERE o.customer_id = c.customer_id AND o.status = 'returned')
        ORDER BY 1 LIMIT 50""",
    "not_exists": """
        SELECT count(*) AS never_ordered FROM customers.customers c
        WHERE NOT EXISTS (SELECT 1 FROM orders.orders o WHERE o.customer_id = c.customer_id)""",
    "scalar_subquery": "SELECT count(*) FROM orders.orders WHERE total_amount > (SELECT avg(total_amount) FROM orders.orders)",
    "derived_table": """
        SELECT t.status, max(t.n) AS most FROM
          (SELECT status, customer_id, count(*) AS n FROM orders.orders GROUP BY status, customer_id) t
        GROUP BY t.status ORDER BY t.status""",
    "cte_across_sources": """
        WITH big AS (SELECT order_id, total_amount FROM orders.orders WHERE total_amount > 1000)
        SELECT p.method, count(*) AS n, sum(big.total_amount) AS total
        FROM big JOIN payments.payments p ON p.order_id = big.order_id
        GROUP BY p.method ORDER BY p.method""",
    "window_row_number": """
        SELECT customer_id, order_id, row_number() OVER (PARTITION BY customer_id ORDER BY order_ts, order_id) AS rn
        FROM orders.orders WHERE customer_id < 20 ORDER BY customer_id, rn""",
    "window_federated_rank": """
        SELECT c.country, o.order_id, rank() OVER (PARTITION BY c.country ORDER BY o.total_amount DESC, o.order_id) AS r
        FROM orders.orders o JOIN customers.customers c ON c.customer_id = o.customer_id
        WHERE o.order_id <= 300 ORDER BY c.country, r""",
    "window_running_sum": """
        SELECT payment_id, sum(amount) OVER (ORDER BY payment_id) AS running
        FROM payments.payments WHERE payment_id <= 100 ORDER BY payment_id""",
    "limit_offset": "SELECT customer_id, name FROM customers.customers ORDER BY customer_id LIMIT 10 OFFSET 5",
    "distinct": "SELECT DISTINCT method FROM payments.payments ORDER BY method",
    "union": "SELECT country FROM customers.customers UNION SELECT country FROM shipping.carriers ORDER BY 1",
    "union_all": """
        SELECT count(*) FROM (SELECT order_id FROM orders.orders UNION ALL SELECT order_id FROM payments.payments) u""",
    "case": """
        SELECT CASE WHEN total_amount >= 1000 THEN 'large' WHEN total_amount >= 100 THEN 'medium' ELSE 'small' END
               AS bucket, count(*) AS n
        FROM orders.orders GROUP BY 1 ORDER BY 1""",
    "nulls_counted": "SELECT count(*) AS n, count(email) AS with_email, count(lifetime_value) AS valued FROM customers.customers",
    "nulls_sort_last": """
        SELECT customer_id, lifetime_value FROM customers.customers WHERE customer_id <= 300
        ORDER BY lifetime_value, customer_id""",
    "nulls_sort_first_desc": """
        SELECT customer_id, lifetime_value FROM customers.customers ORDER BY lifetime_value DESC, customer_id LIMIT 30""",
    "coalesce": """
        SELECT customer_id, coalesce(email, '(none)') AS email FROM customers.customers
        WHERE customer_id <= 200 ORDER BY customer_id""",
    "dates": """
        SELECT signup_date, count(*) AS n FROM customers.customers
        WHERE signup_date BETWEEN DATE '2020-01-01' AND DATE '2020-03-31' GROUP BY signup_date ORDER BY signup_date""",
    "date_trunc_timestamptz": """
        SELECT date_trunc('month', order_ts) AS month, count(*) AS n FROM orders.orders GROUP BY 1 ORDER BY 1""",
    "timestamptz_range": """
        SELECT count(*) FROM payments.payments
        WHERE paid_at >= TIMESTAMPTZ '2024-06-01 00:00:00+00' AND paid_at < TIMESTAMPTZ '2024-07-01 00:00:00+00'""",
    "timestamptz_values": "SELECT order_id, order_ts FROM orders.orders ORDER BY order_id LIMIT 25",
    "decimal_sum_same_source_join": """
        SELECT o.currency, sum(i.quantity * i.unit_price) AS revenue
        FROM orders.order_items i JOIN orders.orders o ON o.order_id = i.order_id
        GROUP BY o.currency ORDER BY o.currency""",
    "decimal_values": "SELECT customer_id, lifetime_value FROM customers.customers ORDER BY customer_id LIMIT 40",
    "booleans": "SELECT is_active, count(*) AS n FROM customers.customers GROUP BY is_active ORDER BY is_active",
    "booleans_postgres_source": """
        SELECT k.express, count(*) AS n FROM shipping.shipments s JOIN shipping.carriers k ON k.carrier_id = s.carrier_id
        GROUP BY k.express ORDER BY k.express""",
    "unicode_and_quotes": """
        SELECT customer_id, name FROM customers.customers WHERE name LIKE '%''%' ORDER BY customer_id LIMIT 20""",
    "unicode_names": """
        SELECT name FROM customers.customers WHERE country IN ('JP', 'CN', 'DE') ORDER BY customer_id LIMIT 40""",
    "literals": "SELECT 'Grüße, 世界' AS greeting, 'it''s' AS quoted, 7 / 2 AS int_div, 7 % 3 AS modulo, NULL::text AS nothing",
    "string_functions": """
        SELECT upper(country) || '-' || lower(segment) AS k, count(*) AS n FROM customers.customers
        GROUP BY 1 ORDER BY 1""",
    "left_join_federated": """
        SELECT c.customer_id, count(o.order_id) AS cancelled
        FROM customers.customers c LEFT JOIN orders.orders o ON o.customer_id = c.customer_id AND o.status = 'cancelled'
        WHERE c.customer_id <= 60 GROUP BY c.customer_id ORDER BY c.customer_id""",
    "postgres_source_filter": """
        SELECT shipment_id, shipped_on, delivered_on, weight_kg FROM shipping.shipments
        WHERE delivered_on IS NULL ORDER BY shipment_id LIMIT 30""",
    "three_part_name": "SELECT count(*) FROM mesh.orders.orders WHERE status = 'delivered'",
    "integer_arithmetic": """
        SELECT quantity / 2 AS half, -quantity / 2 AS neg_half, quantity % 2 AS odd, count(*) AS n
        FROM orders.order_items GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
    "avg_and_round": """
        SELECT segment, avg(lifetime_value) AS avg_ltv, round(avg(lifetime_value), 2) AS rounded,
               min(signup_date) AS first, max(signup_date) AS last
        FROM customers.customers GROUP BY segment ORDER BY segment""",
    "like_is_case_sensitive": """
        SELECT count(*) AS n FROM customers.customers c JOIN orders.orders o ON o.customer_id = c.customer_id
        WHERE c.name LIKE 'a%' OR c.name LIKE '%SON'""",
    "ilike_and_nullif": """
        SELECT count(*) AS n, count(nullif(c.segment, 'consumer')) AS not_consumer
        FROM customers.customers c WHERE c.name ILIKE '%an%'""",
    "count_distinct_federated": """
        SELECT p.method, count(DISTINCT o.customer_id) AS customers
        FROM payments.payments p JOIN orders.orders o ON o.order_id = p.order_id GROUP BY p.method ORDER BY p.method""",
    "explicit_nulls_first": """
        SELECT customer_id, email FROM customers.customers WHERE customer_id <= 400
        ORDER BY email NULLS FIRST, customer_id LIMIT 30""",
    "string_concat_with_null": """
        SELECT customer_id, name || ' <' || email || '>' AS contact FROM customers.customers
        WHERE customer_id <= 100 ORDER BY customer_id""",
    "in_list_on_sqlite": """
        SELECT segment, count(*) AS n FROM customers.customers
        WHERE segment IN ('enterprise', 'partner') AND country NOT IN ('US') GROUP BY segment ORDER BY segment""",
    "pinned_major_version": "SELECT count(*) FROM orders.\"orders@1\"",
    "values": "VALUES (1, 'one'), (2, 'two')",
    "values_order_by_limit": "VALUES (1, 'one'), (3, NULL), (2, 'two') ORDER BY column1 DESC LIMIT 2",
    "values_order_by_position": "VALUES (1, 'one'), (3, NULL), (2, 'two') ORDER BY 2 NULLS FIRST, 1 DESC",
}


@pytest.fixture(scope="module")
def live(live_mesh: LiveMesh) -> LiveMesh:
    return live_mesh


@pytest.fixture(scope="module")
def cursor(live: LiveMesh) -> Iterator[flightsql.Cursor]:
    with flightsql.connect(live.uri) as conn, conn.cursor() as cur:
        yield cur


def test_there_are_at_least_thirty_queries() -> None:
    assert len(QUERIES) >= 30


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_gateway_matches_postgres(name: str, live: LiveMesh, cursor: flightsql.Cursor) -> None:
    sql = QUERIES[name]
    names, families, expected = oracle_answer(live.oracle_uri, _for_oracle(sql))
    cursor.execute(sql)
    table = cursor.fetch_arrow_table()
    assert table.column_names == names
    for column, pg_family in zip(table.schema, families):
        assert families_match(pg_family, arrow_family(column.type)), f"{column.name}: {column.type} vs PostgreSQL {pg_family}"
    actual = [tuple(row.values()) for row in table.to_pylist()]
    assert expected, "the oracle returned no rows: the query tests nothing"
    difference = rows_equal(expected, actual, ordered="ORDER BY" in sql.upper())
    assert difference is None, difference


def _for_oracle(sql: str) -> str:
    """The oracle has no catalog ``mesh`` and no version pins: same tables, plain names."""
    return sql.replace("FROM mesh.", "FROM ").replace('"orders@1"', "orders")


def test_prepared_statement_with_parameters(live: LiveMesh, cursor: flightsql.Cursor) -> None:
    sql = "SELECT order_id, total_amount FROM orders.orders WHERE customer_id = ? AND status = ? ORDER BY order_id"
    _, _, customer = oracle_answer(live.oracle_uri, "SELECT customer_id, status FROM orders.orders ORDER BY order_id LIMIT 1")
    params = customer[0]
    _, _, expected = oracle_answer(live.oracle_uri, sql, params)
    cursor.execute(sql, params)
    actual = [tuple(r.values()) for r in cursor.fetch_arrow_table().to_pylist()]
    assert rows_equal(expected, actual, ordered=True) is None
    assert expected


def test_untyped_parameter_in_the_select_list(cursor: flightsql.Cursor) -> None:
    """A ``?`` compared with nothing is text: announced and returned as a string."""
    cursor.execute("SELECT ? AS v, count(*) AS n FROM customers.segments", ("hello",))
    table = cursor.fetch_arrow_table()
    assert table.to_pylist() == [{"v": "hello", "n": 5}]
