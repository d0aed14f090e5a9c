"""The demo mesh generator, checked against the real files it writes (scale 0.01, so it is quick).

The checks read the data the way a gateway would: each descriptor's ``spec.source`` is opened
with the driver for its connector (ADBC for SQLite and PostgreSQL, DuckDB, pyarrow for Parquet)
and the columns are cast to the contract's types in one DuckDB, where foreign keys and the
example queries are evaluated. So a descriptor that points at the wrong file, table or column
fails here, not in the demo.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi
import adbc_driver_sqlite.dbapi
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

from gateway.demo_data import DemoMesh, _with_password_variable, generate_demo_mesh
from gateway.descriptor import load_file
from gateway.types import parse_type

SCALE = 0.01
PRODUCTS = {
    "customers": {"customers", "segments"},
    "orders": {"orders", "order_items", "revenue_by_country"},
    "payments": {"payments"},
    "shipping": {"shipments", "carriers"},
}
CONTRACT_TYPES = ("string", "boolean", "int32", "int64", "double", "date", "timestamp", "timestamptz")


def _descriptors(mesh: DemoMesh) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``domain.name`` -> (path, parsed YAML) for every descriptor written."""
    found = {}
    for path in sorted(mesh.products_dir.glob("*/*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        found[f"{doc['metadata']['domain']}.{doc['metadata']['name']}"] = (path, doc)
    return found


def _read_source(path: Path, doc: dict[str, Any]) -> pa.Table:
    """The product's columns as its source stores them, read with that source's own driver."""
    source, columns = doc["spec"]["source"], [c["name"] for c in doc["spec"]["schema"]]
    select = f"SELECT {', '.join(columns)} FROM {source.get('table')}"
    if source["connector"] == "postgres":
        with adbc_driver_postgresql.dbapi.connect(source["uri"]) as conn, conn.cursor() as cursor:
            cursor.execute(select)
            return cursor.fetch_arrow_table()
    location = (path.parent / source["uri"]).resolve()
    if source["connector"] == "sqlite":
        with adbc_driver_sqlite.dbapi.connect(str(location)) as conn, conn.cursor() as cursor:
            cursor.execute(select)
            return cursor.fetch_arrow_table()
    if source["connector"] == "duckdb":
        with duckdb.connect(str(location), read_only=True) as con:
            return con.sql(select).to_arrow_table()
    assert source["connector"] == "parquet"
    return ds.dataset(location, format="parquet").to_table(columns=columns)


def _load_mesh(mesh: DemoMesh) -> duckdb.DuckDBPyConnection:
    """One DuckDB holding every product as ``domain.name`` in its contract types (a derived
    product as a view of its query)."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    descriptors = _descriptors(mesh).items()
    for product_id, (path, doc) in sorted(descriptors, key=lambda item: item[1][1]["spec"]["source"]["connector"] == "mesh"):
        schema = doc["spec"]["schema"]
        casts = ", ".join(f"CAST({c['name']} AS {parse_type(c['type']).sql}) AS {c['name']}" for c in schema)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {doc['metadata']['domain']}")
        if doc["spec"]["source"]["connector"] == "mesh":
            con.execute(f"CREATE VIEW {product_id} AS SELECT {casts} FROM ({doc['spec']['source']['query']})")
            continue
        rows = _read_source(path, doc)  # noqa: F841 - read by DuckDB's replacement scan below
        con.execute(f"CREATE TABLE {product_id} AS SELECT {casts} FROM rows")
    return con


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


def _file_times(data_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> DemoMesh:
    return generate_demo_mesh(tmp_path_factory.mktemp("demo"), scale=SCALE, progress=False)


@pytest.fixture(scope="module")
def loaded(mesh: DemoMesh) -> duckdb.DuckDBPyConnection:
    return _load_mesh(mesh)


def test_writes_four_domains_in_four_kinds_of_file(mesh: DemoMesh) -> None:
    data_dir = mesh.products_dir.parent
    assert mesh.domains == ["customers", "orders", "payments", "shipping"]
    for name in ("customers.sqlite", "orders.duckdb", "shipping.duckdb"):
        assert (data_dir / name).is_file(), name
    assert len(list((data_dir / "payments").glob("payments-*.parquet"))) >= 12
    assert {domain: {p.stem for p in (mesh.products_dir / domain).glob("*.yaml")} for domain in PRODUCTS} == PRODUCTS
    assert mesh.notes == ["shipping: no PostgreSQL server given; served from DuckDB instead"]


def test_descriptors_follow_the_design_format(mesh: DemoMesh) -> None:
    connectors = {}
    for product_id, (path, doc) in _descriptors(mesh).items():
        load_file(path)  # the gateway's own validator: unknown keys, types, inline secrets ...
        assert list(doc) == ["apiVersion", "kind", "metadata", "spec"]
        assert (doc["apiVersion"], doc["kind"]) == ("datamesh.io/v1", "DataProduct")
        meta, spec = doc["metadata"], doc["spec"]
        assert meta["owner"] == f"{meta['domain']}-team@example.com" and meta["version"] == "1.0.0"
        assert meta["description"] and meta["tags"]
        assert "policies" not in spec and {"source", "schema", "sla", "quality"} <= set(spec)
        assert len(spec["quality"]) >= 1
        source = spec["source"]
        connectors[product_id] = source["connector"]
        if source["connector"] == "mesh":  # derived: a query over other products, no source of its own
            assert set(source) == {"connector", "query"} and "FROM orders.orders" in source["query"]
        else:
            assert source["uri"].startswith("../../") and (path.parent / source["uri"]).exists()
            assert ("table" in source) == (source["connector"] != "parquet")
        for column in spec["schema"]:
            assert column["type"] in CONTRACT_TYPES or column["type"].startswith("decimal("), column
            assert column["description"]
        assert any(c.get("primary_key") for c in spec["schema"])
        if "freshness_column" in spec["sla"]:
            assert spec["sla"]["freshness"]
    assert connectors == {
        "customers.customers": "sqlite", "customers.segments": "sqlite",
        "orders.orders": "duckdb", "orders.order_items": "duckdb", "orders.revenue_by_country": "mesh",
        "payments.payments": "parquet",
        "shipping.shipments": "duckdb", "shipping.carriers": "duckdb",
    }
    customers = _descriptors(mesh)["customers.customers"][1]
    assert customers["metadata"]["tags"] == ["customer", "pii"]
    pii = {c["name"] for c in customers["spec"]["schema"] if c.get("pii")}
    assert pii == {"name", "email"}
    assert _descriptors(mesh)["orders.orders"][1]["spec"]["sla"]["freshness_column"] == "order_ts"


def test_values_keep_their_contract(mesh: DemoMesh, loaded: duckdb.DuckDBPyConnection) -> None:
    """Required columns are filled, keys unique, enums respected, and the awkward cases exist."""
    for product_id, (_, doc) in _descriptors(mesh).items():
        schema = doc["spec"]["schema"]
        keys = [c["name"] for c in schema if c.get("primary_key")]
        assert _scalar(loaded, f"SELECT count(*) - count(DISTINCT ({', '.join(keys)})) FROM {product_id}") == 0
        for column in schema:
            if column.get("required"):
                assert _scalar(loaded, f"SELECT count(*) FROM {product_id} WHERE {column['name']} IS NULL") == 0
            if "enum" in column:
                allowed = ", ".join(f"'{v}'" for v in column["enum"])
                sql = f"SELECT count(*) FROM {product_id} WHERE {column['name']} NOT IN ({allowed})"
                assert _scalar(loaded, sql) == 0, column["name"]
        for rule in doc["spec"]["quality"]:
            assert _scalar(loaded, f"SELECT count(*) FROM {product_id} WHERE NOT ({rule['rule']})") == 0, rule
    optional = ("customers.customers.email", "customers.customers.lifetime_value", "shipping.shipments.delivered_on")
    for qualified in optional:
        table, column = qualified.rsplit(".", 1)
        assert _scalar(loaded, f"SELECT count(*) FILTER (WHERE {column} IS NULL) FROM {table}") > 0, qualified
    names = [row[0] for row in loaded.execute("SELECT name FROM customers.customers").fetchall()]
    assert any("'" in n for n in names) and any(ch in "éüöñ" for n in names for ch in n)
    assert any("\u4e00" <= ch <= "\u9fff" for n in names for ch in n)  # CJK ideographs
    assert _scalar(loaded, "SELECT count(DISTINCT country) FROM customers.customers") >= 5
    line_sums = "SELECT sum(quantity * unit_price) FROM orders.order_items AS i WHERE i.order_id = o.order_id"
    assert _scalar(loaded, f"SELECT bool_and(total_amount = ({line_sums})) FROM orders.orders AS o")


def test_foreign_keys_resolve_across_domains(mesh: DemoMesh, loaded: duckdb.DuckDBPyConnection) -> None:
    references = [
        (product_id, column["name"], column["references"])
        for product_id, (_, doc) in _descriptors(mesh).items()
        for column in doc["spec"]["schema"]
        if "references" in column
    ]
    assert {(p, r) for p, _, r in references} >= {
        ("orders.orders", "customers.customers.customer_id"),
        ("payments.payments", "orders.orders.order_id"),
        ("shipping.shipments", "orders.orders.order_id"),
    }
    for product_id, column, target in references:
        table, key = target.rsplit(".", 1)
        orphans = f"SELECT count(*) FROM {product_id} AS f ANTI JOIN {table} AS t ON f.{column} = t.{key}"
        assert _scalar(loaded, orphans) == 0, (product_id, column, target)
        assert _scalar(loaded, f"SELECT count(*) FROM {product_id}") > 0


def test_example_queries_are_cross_domain_and_return_rows(
    mesh: DemoMesh, loaded: duckdb.DuckDBPyConnection
) -> None:
    assert len(mesh.example_queries) >= 3
    for title, sql in mesh.example_queries:
        used = {d for d in PRODUCTS if f"{d}." in sql}
        assert len(used) >= 2, title
        assert loaded.execute(sql).fetchall(), title


def test_derived_product_reads_orders_and_customers(mesh: DemoMesh, loaded: duckdb.DuckDBPyConnection) -> None:
    assert mesh.derived_products == ["orders.revenue_by_country"]
    rows = loaded.execute("SELECT country, orders, revenue FROM orders.revenue_by_country ORDER BY country").fetchall()
    assert len(rows) >= 5 and all(orders > 0 and revenue > 0 for _, orders, revenue in rows)
    not_cancelled = "SELECT count(*) FROM orders.orders WHERE status <> 'cancelled'"
    assert _scalar(loaded, "SELECT sum(orders) FROM orders.revenue_by_country") == _scalar(loaded, not_cancelled)


def test_row_counts_follow_scale(mesh: DemoMesh, loaded: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    bigger = _load_mesh(generate_demo_mesh(tmp_path, scale=SCALE * 3, progress=False))
    counts = {}
    for product_id in _descriptors(mesh):
        sql = f"SELECT count(*) FROM {product_id}"
        counts[product_id] = (_scalar(loaded, sql), _scalar(bigger, sql))
    assert counts["customers.customers"] == (200, 600)
    assert counts["orders.orders"] == (1_000, 3_000)
    assert counts["customers.segments"] == (5, 5) and counts["shipping.carriers"] == (6, 6)
    for derived in ("orders.order_items", "payments.payments", "shipping.shipments"):
        small, large = counts[derived]
        assert 2.7 < large / small < 3.3, (derived, counts[derived])
    assert 3.5 < counts["orders.order_items"][0] / 1_000 < 4.5  # ~4 lines per order


def test_same_seed_same_data_other_seed_other_data(mesh: DemoMesh, loaded: duckdb.DuckDBPyConnection,
                                                  tmp_path: Path) -> None:
    again = _load_mesh(generate_demo_mesh(tmp_path / "again", scale=SCALE, progress=False))
    other = _load_mesh(generate_demo_mesh(tmp_path / "other", scale=SCALE, progress=False, seed=7))
    for product_id in ("customers.customers", "orders.order_items", "payments.payments", "shipping.shipments"):
        sql = f"SELECT * FROM {product_id} ORDER BY ALL"
        assert again.execute(sql).fetchall() == loaded.execute(sql).fetchall(), product_id
        assert other.execute(sql).fetchall() != loaded.execute(sql).fetchall(), product_id


def test_second_call_reuses_the_files(tmp_path: Path) -> None:
    generate_demo_mesh(tmp_path, scale=SCALE, progress=False)
    before = _file_times(tmp_path)
    started = time.perf_counter()
    mesh = generate_demo_mesh(tmp_path, scale=SCALE, progress=False)
    assert time.perf_counter() - started < 0.5
    assert _file_times(tmp_path) == before
    assert mesh.notes and len(mesh.example_queries) >= 3

    generate_demo_mesh(tmp_path, scale=SCALE * 2, progress=False)  # another scale: rebuilt
    assert all(_file_times(tmp_path).get(p) != t for p, t in before.items())


def test_an_interrupted_run_is_redone(tmp_path: Path) -> None:
    generate_demo_mesh(tmp_path, scale=SCALE, progress=False)
    (tmp_path / ".meshgate-demo.json").unlink()  # as if the process died before finishing
    (tmp_path / "orders.duckdb").write_bytes(b"half written")
    mesh = generate_demo_mesh(tmp_path, scale=SCALE, progress=False)
    with duckdb.connect(str(tmp_path / "orders.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orders").fetchall() == [(1_000,)]
    assert len(_descriptors(mesh)) == 8


def test_descriptors_never_hold_a_postgres_password() -> None:
    assert _with_password_variable("postgresql://app:s3cret@db:5432/shop") == (
        "postgresql://app:${MESHGATE_DEMO_PG_PASSWORD}@db:5432/shop"
    )
    assert _with_password_variable("postgresql://app@db/shop") == "postgresql://app@db/shop"


@pytest.mark.postgres
def test_shipping_lands_in_postgres(fresh_pg_database: str, tmp_path: Path) -> None:
    mesh = generate_demo_mesh(tmp_path, scale=SCALE, postgres_uri=fresh_pg_database, progress=False)
    assert mesh.notes == [] and not (tmp_path / "shipping.duckdb").exists()
    for name in ("shipments", "carriers"):
        path, doc = _descriptors(mesh)[f"shipping.{name}"]
        load_file(path)
        assert doc["spec"]["source"] == {"connector": "postgres", "uri": fresh_pg_database, "table": f"public.{name}"}
    with adbc_driver_postgresql.dbapi.connect(fresh_pg_database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT data_type FROM information_schema.columns "
                       "WHERE table_schema = 'public' AND table_name = 'shipments' ORDER BY ordinal_position")
        assert [r[0] for r in cursor.fetchall()] == ["bigint", "bigint", "integer", "date", "date", "double precision"]
    loaded = _load_mesh(mesh)
    assert loaded.execute(mesh.example_queries[1][1]).fetchall()
    orphans = "SELECT count(*) FROM shipping.shipments s ANTI JOIN orders.orders o ON o.order_id = s.order_id"
    assert _scalar(loaded, orphans) == 0

    # Idempotent: a rebuild (another scale) drops and recreates the tables.
    generate_demo_mesh(tmp_path, scale=SCALE * 2, postgres_uri=fresh_pg_database, progress=False)
    assert _scalar(_load_mesh(mesh), "SELECT count(*) FROM shipping.carriers") == 6

    # Reuse is skipped when the tables have vanished from the server.
    with adbc_driver_postgresql.dbapi.connect(fresh_pg_database) as conn, conn.cursor() as cursor:
        cursor.execute("DROP TABLE public.shipments")
        conn.commit()
    generate_demo_mesh(tmp_path, scale=SCALE * 2, postgres_uri=fresh_pg_database, progress=False)
    assert _scalar(_load_mesh(mesh), "SELECT count(*) FROM orders.orders") == 2_000
    assert _scalar(_load_mesh(mesh), "SELECT count(*) FROM shipping.shipments") > 0
