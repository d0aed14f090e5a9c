"""The demo data mesh: four domains in four kinds of source, with descriptors and example queries.

``meshgate demo``, the tests and the benchmarks need a mesh that looks like a real one (several
teams, several storage engines, foreign keys that line up across domains, Unicode, NULLs,
decimals, time zones) and that is identical on every machine, so results can be compared and
asserted.  Everything is generated inside an in-memory DuckDB with SQL over ``range()``:
pseudo-randomness is a hash of ``seed:salt:key``, so a row's values depend only on the seed and
its key (never on thread scheduling), and a few hundred thousand rows take seconds.

Each product is generated into a staging table named like the product (``orders.orders`` is a
DuckDB schema ``orders`` with a table ``orders``), so later products are generated from earlier
ones exactly as the example queries join them; then one writer per kind of source stores it.
A marker file written last makes the work happen once per (scale, seed, shipping source).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import adbc_driver_manager.dbapi
import adbc_driver_postgresql.dbapi
import adbc_driver_sqlite.dbapi
import duckdb
import pyarrow as pa
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["DemoMesh", "generate_demo_mesh"]

_LAYOUT_VERSION = 2
"""Bump when the generated data or descriptors change, so existing demo folders are rebuilt."""

_MARKER = ".meshgate-demo.json"
_PASSWORD_VARIABLE = "MESHGATE_DEMO_PG_PASSWORD"
_PG_SCHEMA = "public"
_BATCH_ROWS = 65_536
_BASE_CUSTOMERS = 20_000
_BASE_ORDERS = 100_000


@dataclass(frozen=True)
class DemoMesh:
    """What was generated: the descriptors to register, and what to tell the user about it."""

    products_dir: Path
    domains: list[str]
    notes: list[str]
    example_queries: list[tuple[str, str]]
    derived_products: list[str] = field(default_factory=list)  # views over other products, by id


@dataclass(frozen=True)
class _Product:
    """One data product: its descriptor fields and the DuckDB query that generates its rows.

    ``rows_sql`` may read the staging tables of products listed before it (by product name) and
    the ``demo.countries`` lookup; ``file_key`` (parquet only) is an expression over the rows
    naming the file each row goes to.
    """

    domain: str
    name: str
    description: str
    tags: tuple[str, ...]
    schema: tuple[dict[str, Any], ...]
    rows_sql: str
    sla: dict[str, Any]
    quality: tuple[dict[str, str], ...]
    file_key: str | None = None

    @property
    def product_id(self) -> str:
        return f"{self.domain}.{self.name}"

    @property
    def primary_key(self) -> list[str]:
        return [c["name"] for c in self.schema if c.get("primary_key")]


@dataclass(frozen=True)
class _Source:
    """Where a domain's tables go: what the writer opens and what the descriptor says."""

    connector: str  # sqlite | duckdb | parquet | postgres
    target: str  # a file or directory path, or a PostgreSQL URI
    descriptor_uri: str  # relative to the descriptor's folder, or the URI with its password replaced


def _col(name: str, type_: str, description: str, **keys: Any) -> dict[str, Any]:
    """A schema entry with the keys in the order people write them: name, type, flags, description."""
    return {"name": name, "type": type_, **keys, "description": description}


def _rule(name: str, rule: str, severity: str = "error") -> dict[str, str]:
    return {"name": name, "rule": rule, "severity": severity}


# --- reference data ------------------------------------------------------------------------

# code, share of customers (%), currency, e-mail domain, family name first, separator, given, family
_COUNTRIES: tuple[tuple[str, int, str, str, bool, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("US", 30, "USD", "example.com", False, " ",
     ("James", "Mary", "José", "Aaliyah", "Connor", "Sofía", "Michael", "Emily"),
     ("Smith", "Johnson", "O'Connor", "García", "Nguyen", "Williams", "Brown", "Davis")),
    ("DE", 15, "EUR", "example.de", False, " ",
     ("Lukas", "Anna", "Jürgen", "Lena", "Jörg", "Sophie", "Maximilian", "Käthe"),
     ("Müller", "Schäfer", "Groß", "Weiß", "Becker", "Krüger", "Schmidt", "Köhler")),
    ("GB", 12, "GBP", "example.co.uk", False, " ",
     ("Oliver", "Amelia", "Seán", "Siobhán", "Harry", "Isla", "George", "Niamh"),
     ("O'Brien", "Smith", "Jones", "Taylor", "O'Neill", "Davies", "Evans", "Wilson")),
    ("FR", 10, "EUR", "example.fr", False, " ",
     ("Élodie", "François", "Chloé", "Léa", "Hélène", "Benoît", "Amélie", "Jérôme"),
     ("Dubois", "Lefèvre", "D'Arcy", "Moreau", "Bérenger", "Girard", "Fournier", "Rousseau")),
    ("JP", 10, "JPY", "example.jp", True, " ",
     ("太郎", "花子", "翔太", "さくら", "健", "陽菜", "大輝", "結衣"),
     ("山田", "佐藤", "鈴木", "高橋", "田中", "渡辺", "伊藤", "中村")),
    ("ES", 8, "EUR", "example.es", False, " ",
     ("Alejandro", "Lucía", "Martín", "Inés", "Íñigo", "María José"),
     ("García", "Fernández", "López", "Núñez", "Muñoz", "Peña", "Ibáñez", "Martínez")),
    ("IT", 8, "EUR", "example.it", False, " ",
     ("Giulia", "Luca", "Niccolò", "Chiara", "Francesco", "Martina"),
     ("Rossi", "D'Angelo", "Bianchi", "Esposito", "Ricci", "De Luca", "Colombo", "Romano")),
    ("CN", 7, "CNY", "example.cn", True, "",
     ("伟", "芳", "娜", "敏", "静", "磊"),
     ("王", "李", "张", "刘", "陈", "杨")),
)
_COUNTRY_CODES = [c[0] for c in _COUNTRIES]
_CURRENCIES = sorted({c[2] for c in _COUNTRIES})
_ORDER_STATUSES = ["pending", "processing", "shipped", "delivered", "cancelled", "returned"]
_PAYMENT_METHODS = ["card", "paypal", "bank_transfer", "klarna", "apple_pay"]

_SQL_MACROS = """
CREATE MACRO rnd(salt, k) AS hash(getvariable('seed') || ':' || salt || ':' || k) / 18446744073709551616.0;
CREATE MACRO uniform(choices, salt, k) AS choices[1 + floor(rnd(salt, k) * len(choices))::BIGINT];
CREATE MACRO pick(choices, weights, salt, k) AS choices[1 + len(list_filter(
    range(1, len(weights) + 1), lambda j: list_sum(weights[1:j]) <= rnd(salt, k) * list_sum(weights)))];
"""
"""``rnd`` is a uniform number in [0, 1) for (salt, key); ``uniform`` and ``pick`` choose from a
list evenly or by integer weights. The salt keeps columns of the same row independent. It hashes
one string because DuckDB's multi-argument ``hash(a, b, c)`` mixes its arguments so weakly that
two salts gave strongly correlated columns."""


# --- the products ----------------------------------------------------------------------------

PRODUCTS: tuple[_Product, ...] = (
    _Product(
        domain="customers",
        name="segments",
        description="Customer segments used for pricing and reporting (a small dimension).",
        tags=("customer", "reference"),
        schema=(
            _col("segment", "string", "Segment code", required=True, primary_key=True),
            _col("display_name", "string", "Name shown in reports", required=True),
            _col("description", "string", "Who belongs to the segment"),
            _col("discount_pct", "decimal(5,2)", "Standard discount in percent", required=True, min=0, max=100),
            _col("priority", "int32", "Support priority, 1 is highest", required=True, min=1),
        ),
        rows_sql="""
            SELECT * FROM (VALUES
                ('consumer', 'Consumer', 'Individuals buying for themselves.', 0.00, 3),
                ('small_business', 'Small business', 'Companies with fewer than 50 employees.', 5.00, 2),
                ('enterprise', 'Enterprise', 'Large accounts on negotiated contracts.', 12.50, 1),
                ('public_sector', 'Public sector', 'Government, health and education buyers.', 8.00, 2),
                ('partner', 'Partner', 'Resellers and integration partners.', 15.00, 1)
            ) AS s(segment, display_name, description, discount_pct, priority)
        """,
        sla={"availability": 99.9},
        quality=(
            _rule("segment_present", "segment IS NOT NULL"),
            _rule("discount_in_range", "discount_pct BETWEEN 0 AND 100"),
        ),
    ),
    _Product(
        domain="customers",
        name="customers",
        description="Every customer with contact details, segment and value; one row per customer.",
        tags=("customer", "pii"),
        schema=(
            _col("customer_id", "int64", "Stable customer id", required=True, primary_key=True),
            _col("name", "string", "Full name as the customer wrote it", required=True, pii=True),
            _col("email", "string", "Contact address; missing for some imported customers", pii=True,
                 classification="restricted", pattern="^[^@]+@[^@]+$"),
            _col("country", "string", "ISO 3166-1 alpha-2 country of the billing address", required=True,
                 enum=_COUNTRY_CODES),
            _col("segment", "string", "Customer segment", required=True, references="customers.segments.segment"),
            _col("signup_date", "date", "Day the account was created", required=True),
            _col("lifetime_value", "decimal(12,2)", "Revenue to date in the customer's currency; unknown for some",
                 min=0),
            _col("is_active", "boolean", "Whether the account may place orders", required=True),
        ),
        rows_sql="""
            WITH drawn AS (
                SELECT r.i + 1 AS customer_id,
                       pick(k.codes, k.weights, 'customer.country', r.i) AS country
                FROM range(getvariable('customers')) AS r(i),
                     (SELECT list(code ORDER BY code) AS codes, list(weight ORDER BY code) AS weights
                      FROM demo.countries) AS k
            ), named AS (
                SELECT d.customer_id, d.country, c.email_domain, c.family_first, c.separator,
                       uniform(c.given_names, 'customer.given', d.customer_id) AS given,
                       uniform(c.family_names, 'customer.family', d.customer_id) AS family
                FROM drawn AS d JOIN demo.countries AS c ON c.code = d.country
            )
            SELECT customer_id,
                   CASE WHEN family_first THEN family || separator || given ELSE given || ' ' || family END AS name,
                   CASE WHEN rnd('customer.no_email', customer_id) < 0.04 THEN NULL
                        WHEN family_first THEN 'user' || customer_id || '@' || email_domain
                        ELSE regexp_replace(lower(strip_accents(replace(given || '.' || family, 'ß', 'ss'))),
                                            '[^a-z.]', '', 'g') || customer_id || '@' || email_domain
                   END AS email,
                   country,
                   pick(['consumer', 'small_business', 'enterprise', 'public_sector', 'partner'],
                        [70, 18, 5, 4, 3], 'customer.segment', customer_id) AS segment,
                   DATE '2018-01-01' + floor(rnd('customer.signup', customer_id) * 2191)::INTEGER AS signup_date,
                   CASE WHEN rnd('customer.no_ltv', customer_id) < 0.03 THEN NULL
                        ELSE round(15 + pow(rnd('customer.ltv', customer_id), 3) * 24000, 2)
                   END AS lifetime_value,
                   rnd('customer.active', customer_id) < 0.88 AS is_active
            FROM named
        """,
        sla={"availability": 99.9},
        quality=(
            _rule("customer_id_present", "customer_id IS NOT NULL"),
            _rule("email_has_at", "email IS NULL OR email LIKE '%@%'", "warning"),
            _rule("lifetime_value_not_negative", "lifetime_value IS NULL OR lifetime_value >= 0", "warning"),
        ),
    ),
    _Product(
        domain="orders",
        name="order_items",
        description="Order lines: which SKU, how many and at what price; one row per order line.",
        tags=("sales",),
        schema=(
            _col("order_id", "int64", "The order this line belongs to", required=True, primary_key=True,
                 references="orders.orders.order_id"),
            _col("line_no", "int32", "Line number within the order, from 1", required=True, primary_key=True,
                 min=1),
            _col("product_sku", "string", "Stock keeping unit", required=True, pattern="^SKU-[0-9]{5}$"),
            _col("quantity", "int32", "Units ordered", required=True, min=1),
            _col("unit_price", "decimal(10,2)", "Price per unit in the order's currency", required=True, min=0),
        ),
        rows_sql="""
            WITH lines AS (
                SELECT o.i + 1 AS order_id, l.line_no, (o.i + 1) * 8 + l.line_no AS line_key
                FROM range(getvariable('orders')) AS o(i), range(1, 8) AS l(line_no)
                WHERE l.line_no <= 1 + floor(rnd('order.lines', o.i) * 7)
            ), skus AS (
                SELECT *, 1 + floor(pow(rnd('item.sku', line_key), 1.5) * 2000)::INTEGER AS sku
                FROM lines
            )
            SELECT order_id, line_no,
                   'SKU-' || lpad(sku::VARCHAR, 5, '0') AS product_sku,
                   1 + floor(pow(rnd('item.quantity', line_key), 3) * 5)::INTEGER AS quantity,
                   round(2 + pow(rnd('sku.price', sku), 2) * 400, 2) AS unit_price
            FROM skus
        """,
        sla={"availability": 99.9},
        quality=(
            _rule("quantity_positive", "quantity > 0"),
            _rule("unit_price_not_negative", "unit_price >= 0"),
        ),
    ),
    _Product(
        domain="orders",
        name="orders",
        description="Orders placed in the web shop over the year before the demo data was made; one row per order, "
                    "totals in the order's currency.",
        tags=("sales",),
        schema=(
            _col("order_id", "int64", "Order number", required=True, primary_key=True),
            _col("customer_id", "int64", "Who ordered", required=True, references="customers.customers.customer_id"),
            _col("order_ts", "timestamptz", "When the order was placed", required=True),
            _col("status", "string", "Fulfilment state", required=True, enum=_ORDER_STATUSES),
            _col("total_amount", "decimal(12,2)", "Sum of the order's lines", required=True, min=0),
            _col("currency", "string", "ISO 4217 currency of the amounts", required=True, enum=_CURRENCIES),
        ),
        rows_sql="""
            WITH placed AS (
                SELECT r.i + 1 AS order_id,
                       1 + floor(pow(rnd('order.customer', r.i), 1.6) * getvariable('customers'))::BIGINT
                           AS customer_id,
                       getvariable('start') + to_seconds(
                           (r.i * 31622400 // getvariable('orders') + floor(rnd('order.ts', r.i) * 300))::BIGINT
                       ) AS order_ts
                FROM range(getvariable('orders')) AS r(i)
            ), totals AS (
                SELECT order_id, sum(quantity * unit_price) AS total_amount FROM orders.order_items GROUP BY order_id
            )
            SELECT p.order_id, p.customer_id, p.order_ts,
                   CASE WHEN p.order_ts >= getvariable('start') + INTERVAL 351 DAY
                        THEN pick(['pending', 'processing', 'shipped'], [15, 25, 60], 'order.status', p.order_id)
                        ELSE pick(['delivered', 'cancelled', 'returned'], [86, 8, 6], 'order.status', p.order_id)
                   END AS status,
                   t.total_amount, k.currency
            FROM placed AS p
            JOIN totals AS t USING (order_id)
            JOIN customers.customers AS c USING (customer_id)
            JOIN demo.countries AS k ON k.code = c.country
        """,
        sla={"freshness": "1d", "freshness_column": "order_ts", "availability": 99.9},
        quality=(
            _rule("order_id_present", "order_id IS NOT NULL"),
            _rule("total_not_negative", "total_amount >= 0"),
            _rule("known_status", "status IN (" + ", ".join(f"'{s}'" for s in _ORDER_STATUSES) + ")", "warning"),
        ),
    ),
    _Product(
        domain="payments",
        name="payments",
        description="Payment attempts for orders, failed ones included; one Parquet file per month.",
        tags=("finance",),
        schema=(
            _col("payment_id", "int64", "Payment attempt id", required=True, primary_key=True),
            _col("order_id", "int64", "The order being paid", required=True, references="orders.orders.order_id"),
            _col("paid_at", "timestamptz", "When the provider answered", required=True),
            _col("method", "string", "Payment method", required=True, enum=_PAYMENT_METHODS),
            _col("amount", "decimal(12,2)", "Amount in the order's currency", required=True, min=0),
            _col("succeeded", "boolean", "Whether the money was captured", required=True),
        ),
        rows_sql="""
            WITH payable AS (
                SELECT order_id, order_ts, status, total_amount, rnd('payment.retry', order_id) < 0.06 AS retried
                FROM orders.orders WHERE status <> 'pending'
            )
            SELECT row_number() OVER (ORDER BY p.order_id, a.attempt) AS payment_id,
                   p.order_id,
                   p.order_ts + to_seconds(
                       (20 + floor(rnd('payment.delay', p.order_id * 2 + a.attempt) * 900) + (a.attempt - 1) * 1800)
                       ::BIGINT) AS paid_at,
                   pick(['card', 'paypal', 'bank_transfer', 'klarna', 'apple_pay'], [55, 20, 10, 8, 7],
                        'payment.method', p.order_id * 2 + a.attempt) AS method,
                   p.total_amount AS amount,
                   NOT (p.status = 'cancelled' OR (p.retried AND a.attempt = 1)) AS succeeded
            FROM payable AS p, range(1, 3) AS a(attempt)
            WHERE a.attempt = 1 OR (p.retried AND p.status <> 'cancelled')
        """,
        sla={"freshness": "1d", "freshness_column": "paid_at", "availability": 99.5},
        quality=(
            _rule("amount_not_negative", "amount >= 0"),
            _rule("order_id_present", "order_id IS NOT NULL"),
        ),
        file_key="strftime(paid_at, '%Y-%m')",
    ),
    _Product(
        domain="shipping",
        name="carriers",
        description="Parcel carriers and the delivery time they promise.",
        tags=("logistics", "reference"),
        schema=(
            _col("carrier_id", "int32", "Carrier id", required=True, primary_key=True),
            _col("name", "string", "Carrier and service", required=True),
            _col("country", "string", "Home country of the carrier", required=True),
            _col("express", "boolean", "Whether the service is an express service", required=True),
            _col("promised_days", "int32", "Promised days from hand-over to delivery", required=True, min=1),
        ),
        rows_sql="""
            SELECT * FROM (VALUES
                (1, 'DHL Express', 'DE', true, 2),
                (2, 'UPS Standard', 'US', false, 4),
                (3, 'FedEx International Priority', 'US', true, 2),
                (4, 'La Poste Colissimo', 'FR', false, 5),
                (5, 'Yamato Transport', 'JP', false, 3),
                (6, 'Royal Mail Tracked 48', 'GB', false, 3)
            ) AS c(carrier_id, name, country, express, promised_days)
        """,
        sla={"availability": 99.9},
        quality=(_rule("promised_days_positive", "promised_days > 0"),),
    ),
    _Product(
        domain="shipping",
        name="shipments",
        description="Parcels handed to carriers; one row per shipped order, delivery date once known.",
        tags=("logistics",),
        schema=(
            _col("shipment_id", "int64", "Shipment id", required=True, primary_key=True),
            _col("order_id", "int64", "The order shipped", required=True, references="orders.orders.order_id"),
            _col("carrier_id", "int32", "Who carries it", required=True, references="shipping.carriers.carrier_id"),
            _col("shipped_on", "date", "Day the carrier took the parcel", required=True),
            _col("delivered_on", "date", "Day of delivery; empty while in transit"),
            _col("weight_kg", "double", "Parcel weight in kilograms", required=True, min=0),
        ),
        rows_sql="""
            WITH shipped AS (
                SELECT o.order_id, o.status,
                       1 + floor(rnd('shipment.carrier', o.order_id) * (SELECT count(*) FROM shipping.carriers))
                           ::INTEGER AS carrier_id,
                       least(CAST(o.order_ts AS DATE) + floor(rnd('shipment.pick', o.order_id) * 3)::INTEGER,
                             CAST(getvariable('made_at') AS DATE)) AS shipped_on
                FROM orders.orders AS o WHERE o.status IN ('shipped', 'delivered', 'returned')
            )
            SELECT row_number() OVER (ORDER BY s.order_id) AS shipment_id, s.order_id, s.carrier_id, s.shipped_on,
                   CASE WHEN s.status = 'shipped' THEN NULL
                        ELSE s.shipped_on + c.promised_days - 1
                             + floor(pow(rnd('shipment.transit', s.order_id), 2) * 5)::INTEGER
                   END AS delivered_on,
                   round(0.2 + pow(rnd('shipment.weight', s.order_id), 2) * 30, 3) AS weight_kg
            FROM shipped AS s JOIN shipping.carriers AS c USING (carrier_id)
        """,
        sla={"freshness": "2d", "freshness_column": "shipped_on", "availability": 99.5},
        quality=(
            _rule("delivered_after_shipped", "delivered_on IS NULL OR delivered_on >= shipped_on"),
            _rule("weight_positive", "weight_kg > 0", "warning"),
        ),
    ),
)

DOMAINS: list[str] = list(dict.fromkeys(p.domain for p in PRODUCTS))

DERIVED_PRODUCTS: tuple[dict[str, Any], ...] = (
    {
        "apiVersion": "datamesh.io/v1",
        "kind": "DataProduct",
        "metadata": {
            "name": "revenue_by_country",
            "domain": "orders",
            "owner": "orders-team@example.com",
            "version": "1.0.0",
            "tags": ["sales", "derived"],
            "description": "Orders and revenue per customer country and currency, cancelled orders excluded: "
                           "a derived product (a view over orders.orders and customers.customers).",
        },
        "spec": {
            "source": {
                "connector": "mesh",
                "query": "SELECT c.country, o.currency, count(DISTINCT o.order_id) AS orders,\n"
                         "       count(DISTINCT o.customer_id) AS customers, sum(o.total_amount) AS revenue\n"
                         "FROM orders.orders AS o JOIN customers.customers AS c ON c.customer_id = o.customer_id\n"
                         "WHERE o.status <> 'cancelled'\n"
                         "GROUP BY c.country, o.currency\n",
            },
            "schema": [
                _col("country", "string", "ISO 3166-1 alpha-2 country of the customers", required=True, primary_key=True),
                _col("currency", "string", "ISO 4217 currency of the revenue", required=True, primary_key=True),
                _col("orders", "int64", "Orders placed, not cancelled", required=True, min=0),
                _col("customers", "int64", "Customers with such an order", required=True, min=0),
                _col("revenue", "decimal(14,2)", "Sum of the orders' totals", required=True, min=0),
            ],
            "sla": {"availability": 99.9},
            "quality": [_rule("revenue_not_negative", "revenue >= 0")],
        },
    },
)
"""Products that are queries over the products above (``source.connector: mesh``): no data of
their own, evaluated through the gateway under the querying principal's policies."""

EXAMPLE_QUERIES: list[tuple[str, str]] = [
    (
        "Revenue by customer country (customers x orders x payments)",
        """SELECT c.country, o.currency, count(DISTINCT o.order_id) AS paid_orders, sum(p.amount) AS revenue
FROM customers.customers AS c
JOIN orders.orders AS o ON o.customer_id = c.customer_id
JOIN payments.payments AS p ON p.order_id = o.order_id
WHERE p.succeeded
GROUP BY c.country, o.currency
ORDER BY revenue DESC""",
    ),
    (
        "Delivery time and returns by carrier (shipping x orders)",
        """SELECT ca.name AS carrier, count(*) AS delivered,
       round(avg(s.delivered_on - s.shipped_on), 1) AS avg_delivery_days,
       round(100.0 * count(*) FILTER (WHERE o.status = 'returned') / count(*), 1) AS returned_pct
FROM shipping.shipments AS s
JOIN shipping.carriers AS ca ON ca.carrier_id = s.carrier_id
JOIN orders.orders AS o ON o.order_id = s.order_id
WHERE s.delivered_on IS NOT NULL
GROUP BY ca.name
ORDER BY avg_delivery_days""",
    ),
    (
        "Top customers by lifetime value, with their orders (customers x orders)",
        """SELECT c.customer_id, c.name, c.country, c.lifetime_value,
       count(o.order_id) AS orders, max(o.order_ts) AS last_order_at
FROM customers.customers AS c
LEFT JOIN orders.orders AS o ON o.customer_id = c.customer_id
WHERE c.lifetime_value IS NOT NULL
GROUP BY c.customer_id, c.name, c.country, c.lifetime_value
ORDER BY c.lifetime_value DESC
LIMIT 10""",
    ),
    (
        "Best-selling SKUs in Japan (orders x customers)",
        """SELECT i.product_sku, sum(i.quantity) AS units, sum(i.quantity * i.unit_price) AS sales_jpy
FROM orders.order_items AS i
JOIN orders.orders AS o ON o.order_id = i.order_id
JOIN customers.customers AS c ON c.customer_id = o.customer_id
WHERE c.country = 'JP' AND o.status <> 'cancelled'
GROUP BY i.product_sku
ORDER BY units DESC, i.product_sku
LIMIT 10""",
    ),
]

# Where each domain lives when no PostgreSQL server is given: (connector, name under data_dir).
_FILE_SOURCES: dict[str, tuple[str, str]] = {
    "customers": ("sqlite", "customers.sqlite"),
    "orders": ("duckdb", "orders.duckdb"),
    "payments": ("parquet", "payments"),
    "shipping": ("duckdb", "shipping.duckdb"),
}
_SIDE_FILES = ("", ".wal", "-journal", "-wal", "-shm")
"""Suffixes of a database file's companions: a stale WAL must not be replayed onto a new file."""


# --- type mapping ----------------------------------------------------------------------------

_SINK_TYPES: dict[str, dict[str, str]] = {
    "duckdb": {"string": "VARCHAR", "boolean": "BOOLEAN", "int32": "INTEGER", "int64": "BIGINT",
               "double": "DOUBLE", "decimal": "DECIMAL", "date": "DATE", "timestamp": "TIMESTAMP",
               "timestamptz": "TIMESTAMPTZ"},
    "postgres": {"string": "text", "boolean": "boolean", "int32": "integer", "int64": "bigint",
                 "double": "double precision", "decimal": "numeric", "date": "date", "timestamp": "timestamp",
                 "timestamptz": "timestamptz"},
    # SQLite has no date, decimal or boolean storage: ISO text, REAL and 0/1, as real SQLite apps do.
    "sqlite": {"string": "TEXT", "boolean": "INTEGER", "int32": "INTEGER", "int64": "INTEGER",
               "double": "REAL", "decimal": "REAL", "date": "TEXT", "timestamp": "TEXT", "timestamptz": "TEXT"},
}
_PARAMETERISED = {"DECIMAL", "numeric"}

_SQLITE_TRANSFER = {"boolean": "INTEGER", "decimal": "DOUBLE", "date": "VARCHAR", "timestamp": "VARCHAR",
                    "timestamptz": "VARCHAR"}
"""DuckDB types the staged values are cast to on their way into SQLite, so SQLite stores the
representation in ``_SINK_TYPES['sqlite']`` (ADBC binds by Arrow type, not by declared type)."""


def _sink_type(contract_type: str, sink: str) -> str:
    """The column type for a contract type in a sink's DDL (``decimal(12,2)`` -> ``numeric(12,2)``)."""
    base, paren, args = contract_type.partition("(")
    mapped = _SINK_TYPES[sink][base]
    return f"{mapped}({args}" if paren and mapped in _PARAMETERISED else mapped


def _casts(product: _Product, sink: str) -> str:
    """The product's columns as a select list, cast to the DuckDB types they travel as to ``sink``."""
    return ", ".join(f"CAST({c['name']} AS {_transfer_type(c['type'], sink)}) AS {c['name']}" for c in product.schema)


def _transfer_type(contract_type: str, sink: str) -> str:
    base = contract_type.partition("(")[0]
    if sink == "sqlite" and base in _SQLITE_TRANSFER:
        return _SQLITE_TRANSFER[base]
    return _sink_type(contract_type, "duckdb")


def _create_table_sql(product: _Product, table: str, sink: str) -> str:
    columns = [
        f"{c['name']} {_sink_type(c['type'], sink)}" + (" NOT NULL" if c.get("required") else "")
        for c in product.schema
    ]
    columns.append(f"PRIMARY KEY ({', '.join(product.primary_key)})")
    return f"CREATE TABLE {table} ({', '.join(columns)})"


def _count(con: duckdb.DuckDBPyConnection, product: _Product) -> int:
    return con.execute(f"SELECT count(*) FROM {product.product_id}").fetchall()[0][0]


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- writers: one per kind of source ---------------------------------------------------------

Advance = Callable[[int], None]


def _stored_rows(
    con: duckdb.DuckDBPyConnection, product: _Product, sink: str, advance: Advance
) -> pa.RecordBatchReader:
    """The staged rows in the sink's storage types, streamed in batches that move the progress bar."""
    reader = con.sql(f"SELECT {_casts(product, sink)} FROM {product.product_id}").to_arrow_reader(_BATCH_ROWS)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            advance(batch.num_rows)
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def _ingest(connection: adbc_driver_manager.dbapi.Connection, con: duckdb.DuckDBPyConnection, product: _Product,
            schema: str | None, sink: str, advance: Advance) -> None:
    """Drop, create (with our DDL: keys and NOT NULL) and fill a table through ADBC bulk ingest."""
    table = f"{schema}.{product.name}" if schema else product.name
    with connection, connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(_create_table_sql(product, table, sink))
        cursor.adbc_ingest(product.name, _stored_rows(con, product, sink, advance), mode="append",
                           db_schema_name=schema)
        connection.commit()


def _write_sqlite(con: duckdb.DuckDBPyConnection, product: _Product, source: _Source, advance: Advance) -> None:
    _ingest(adbc_driver_sqlite.dbapi.connect(source.target), con, product, None, "sqlite", advance)


def _write_postgres(con: duckdb.DuckDBPyConnection, product: _Product, source: _Source, advance: Advance) -> None:
    _ingest(adbc_driver_postgresql.dbapi.connect(source.target), con, product, _PG_SCHEMA, "postgres", advance)


def _write_duckdb(con: duckdb.DuckDBPyConnection, product: _Product, source: _Source, advance: Advance) -> None:
    """Copy the staged table into the domain's DuckDB file without leaving the engine."""
    con.execute(f"ATTACH {_sql_literal(source.target)} AS sink")
    try:
        con.execute(_create_table_sql(product, f"sink.main.{product.name}", "duckdb"))
        con.execute(f"INSERT INTO sink.main.{product.name} SELECT * FROM {product.product_id}")
    finally:
        con.execute("DETACH sink")
    advance(_count(con, product))


def _write_parquet(con: duckdb.DuckDBPyConnection, product: _Product, source: _Source, advance: Advance) -> None:
    """One file per value of the product's ``file_key``, as a team exporting monthly would."""
    assert product.file_key, f"{product.product_id} needs a file_key to be stored as Parquet"
    directory = Path(source.target)
    directory.mkdir(parents=True, exist_ok=True)
    keys = con.sql(f"SELECT {product.file_key} AS k, count(*) FROM {product.product_id} GROUP BY k ORDER BY k")
    for key, rows in keys.fetchall():
        path = directory / f"{product.name}-{key}.parquet"
        con.execute(
            f"COPY (SELECT * FROM {product.product_id} WHERE {product.file_key} = {_sql_literal(key)}) "
            f"TO {_sql_literal(str(path))} (FORMAT parquet, COMPRESSION zstd)"
        )
        advance(rows)


_WRITERS: dict[str, Callable[[duckdb.DuckDBPyConnection, _Product, _Source, Advance], None]] = {
    "sqlite": _write_sqlite,
    "duckdb": _write_duckdb,
    "parquet": _write_parquet,
    "postgres": _write_postgres,
}


# --- descriptors -------------------------------------------------------------------------------


def _descriptor(product: _Product, source: _Source) -> dict[str, Any]:
    """The product's ``data-product.yaml`` in the DESIGN.md format (no policies: governance is separate)."""
    source_doc: dict[str, Any] = {"connector": source.connector, "uri": source.descriptor_uri}
    if source.connector == "postgres":
        source_doc["table"] = f"{_PG_SCHEMA}.{product.name}"
    elif source.connector != "parquet":
        source_doc["table"] = product.name
    return {
        "apiVersion": "datamesh.io/v1",
        "kind": "DataProduct",
        "metadata": {
            "name": product.name,
            "domain": product.domain,
            "owner": f"{product.domain}-team@example.com",
            "version": "1.0.0",
            "tags": list(product.tags),
            "description": product.description,
        },
        "spec": {
            "source": source_doc,
            "schema": [dict(c) for c in product.schema],
            "sla": dict(product.sla),
            "quality": [dict(q) for q in product.quality],
        },
    }


class _DescriptorDumper(yaml.SafeDumper):
    """Writes multi-line SQL as a literal block (``query: |``), as people write it by hand."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


def _represent_mapping(dumper: yaml.SafeDumper, mapping: dict[str, Any]) -> yaml.MappingNode:
    block = any(isinstance(v, str) and "\n" in v for v in mapping.values())  # a block scalar needs a block mapping
    return dumper.represent_mapping("tag:yaml.org,2002:map", mapping, flow_style=False if block else None)


_DescriptorDumper.add_representer(str, _represent_text)
_DescriptorDumper.add_representer(dict, _represent_mapping)


def _write_descriptor(products_dir: Path, product: _Product, source: _Source) -> None:
    _write_document(products_dir, _descriptor(product, source))


def _write_document(products_dir: Path, document: dict[str, Any]) -> None:
    meta = document["metadata"]
    path = products_dir / meta["domain"] / f"{meta['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(document, Dumper=_DescriptorDumper, sort_keys=False, allow_unicode=True, default_flow_style=None,
                     width=120)
    path.write_text(f"# Generated by meshgate's demo (gateway/demo_data.py).\n{text}", encoding="utf-8")


# --- orchestration -----------------------------------------------------------------------------


def _with_password_variable(uri: str) -> str:
    """The URI for descriptors: an inline password becomes ``${MESHGATE_DEMO_PG_PASSWORD}``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:${{{_PASSWORD_VARIABLE}}}@{hostinfo}").geturl()


def _sources(data_dir: Path, postgres_uri: str | None) -> dict[str, _Source]:
    sources = {
        domain: _Source(connector, str(data_dir / name), f"../../{name}")
        for domain, (connector, name) in _FILE_SOURCES.items()
    }
    if postgres_uri:
        sources["shipping"] = _Source("postgres", postgres_uri, _with_password_variable(postgres_uri))
    return sources


def _notes(postgres_uri: str | None) -> list[str]:
    if not postgres_uri:
        return ["shipping: no PostgreSQL server given; served from DuckDB instead"]
    if urlsplit(postgres_uri).password is not None:
        return [f"shipping: the PostgreSQL password is not written to the descriptors; "
                f"export {_PASSWORD_VARIABLE} before serving them"]
    return []


def _is_complete(data_dir: Path, stamp: dict[str, Any], postgres_uri: str | None) -> bool:
    """True when an earlier run with the same stamp finished (and its PostgreSQL tables still exist)."""
    try:
        if json.loads((data_dir / _MARKER).read_text(encoding="utf-8")) != stamp:
            return False
    except (OSError, ValueError):
        return False
    if not postgres_uri:
        return True
    exists = " AND ".join(
        f"to_regclass({_sql_literal(f'{_PG_SCHEMA}.{p.name}')}) IS NOT NULL" for p in PRODUCTS if p.domain == "shipping"
    )
    with adbc_driver_postgresql.dbapi.connect(postgres_uri) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT {exists}")
        return bool(cursor.fetchone()[0])


def _remove_outputs(data_dir: Path) -> None:
    """Delete what an earlier (possibly interrupted) run wrote, and nothing else in ``data_dir``."""
    (data_dir / _MARKER).unlink(missing_ok=True)
    shutil.rmtree(data_dir / "products", ignore_errors=True)
    for _, name in _FILE_SOURCES.values():
        for suffix in _SIDE_FILES:
            path = data_dir / (name + suffix)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _generator(seed: int, scale: float) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the seed, row counts, random macros and lookup tables set up."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET VARIABLE seed = $1", [seed])
    con.execute("SET VARIABLE customers = $1", [max(1, round(_BASE_CUSTOMERS * scale))])
    con.execute("SET VARIABLE orders = $1", [max(1, round(_BASE_ORDERS * scale))])
    # The data covers the 366 days up to two hours before it is made, so a fresh demo meets its
    # freshness SLAs (and its cache serves hits); payments land up to ~1 h after their order.
    made_at = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    con.execute("SET VARIABLE made_at = $1::TIMESTAMPTZ", [made_at])
    con.execute("SET VARIABLE start = $1::TIMESTAMPTZ", [made_at - timedelta(days=366, hours=2)])
    con.execute(_SQL_MACROS)
    names = ("code", "weight", "currency", "email_domain", "family_first", "separator", "given_names", "family_names")
    countries = pa.Table.from_pylist([dict(zip(names, row)) for row in _COUNTRIES])
    con.execute("CREATE SCHEMA demo")
    con.from_arrow(countries).create("demo.countries")
    for domain in DOMAINS:
        con.execute(f"CREATE SCHEMA {domain}")
    return con


def _stage(con: duckdb.DuckDBPyConnection, product: _Product) -> int:
    """Generate a product's rows in its contract types, in primary-key order; return the row count."""
    con.execute(
        f"CREATE TABLE {product.product_id} AS SELECT {_casts(product, 'duckdb')} FROM ({product.rows_sql}) "
        f"ORDER BY {', '.join(product.primary_key)}"
    )
    return _count(con, product)


def generate_demo_mesh(
    data_dir: Path,
    *,
    scale: float = 1.0,
    postgres_uri: str | None = None,
    progress: bool = True,
    seed: int = 42,
) -> DemoMesh:
    """Write the demo mesh into ``data_dir`` (once) and describe it.

    ``scale`` multiplies the row counts (1.0: 20k customers, 100k orders, ~400k order lines).
    With ``postgres_uri`` the shipping domain goes to that database's ``public`` schema (its two
    tables are dropped and recreated); without it, to ``shipping.duckdb``.  A second call with
    the same scale, seed and shipping target returns at once without touching the files.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    data_dir = Path(data_dir)
    mesh = DemoMesh(
        products_dir=data_dir / "products",
        domains=list(DOMAINS),
        notes=_notes(postgres_uri),
        example_queries=list(EXAMPLE_QUERIES),
        derived_products=[f"{d['metadata']['domain']}.{d['metadata']['name']}" for d in DERIVED_PRODUCTS],
    )
    stamp = {"layout": _LAYOUT_VERSION, "scale": scale, "seed": seed,
             "shipping": _with_password_variable(postgres_uri) if postgres_uri else "duckdb"}
    if _is_complete(data_dir, stamp, postgres_uri):
        return mesh

    _remove_outputs(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sources = _sources(data_dir, postgres_uri)
    columns = (TextColumn("{task.description:<26}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # The bar goes to stderr so that stdout stays clean for whoever pipes the CLI's output.
    bar_console = Console(stderr=True)
    with _generator(seed, scale) as con, Progress(*columns, console=bar_console, disable=not progress) as bar:
        tasks = {p.product_id: bar.add_task(p.product_id, total=None) for p in PRODUCTS}
        for product in PRODUCTS:
            task = tasks[product.product_id]
            bar.update(task, total=_stage(con, product))
            source = sources[product.domain]
            _WRITERS[source.connector](con, product, source, lambda rows, task=task: bar.advance(task, rows))
            _write_descriptor(mesh.products_dir, product, source)
    for derived in DERIVED_PRODUCTS:
        _write_document(mesh.products_dir, derived)
    (data_dir / _MARKER).write_text(json.dumps(stamp), encoding="utf-8")
    return mesh
