"""The five connectors against their real engines: files made in tmp_path for DuckDB, SQLite and
parquet, the throw-away server of ``scripts/test`` for PostgreSQL.

What each test pins down is a promise the planner and the engine rely on: the Arrow types that
come back, the SQL each dialect is sent, that a cancel stops the source's work, that a broken
or half-read connection never goes back to the pool, and that every failure names its source.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from connectors import connector_class, known_kinds, open_connector
from connectors.base import Capabilities, Connector, Scan, SourceConfig, as_utc
from connectors.duckdb import DuckDBConnector
from connectors.flightsql import FlightSQLConnector
from connectors.parquet import ParquetConnector
from connectors.postgres import PostgresConnector
from connectors.sqlite import SQLiteConnector
from gateway.errors import InvalidQuery, QueryCancelled, SourceUnavailable, Unsupported

# id, customer, amount, ordered_on, note: NULLs, Unicode and an empty string on purpose.
ORDERS = [
    (1, "Zoë", Decimal("12.50"), date(2024, 1, 2), "naïve café"),
    (2, "日本語", Decimal("-3.25"), date(2024, 2, 29), None),
    (3, None, None, None, "no customer"),
    (4, "Ünïcødé ✓", Decimal("1000.00"), date(2023, 12, 31), ""),
    (5, "Zoë", Decimal("0.05"), date(2024, 3, 1), "second order"),
]
ORDERED_SINCE = "2024-01-15"
EXPECTED_SINCE = [(2, "日本語"), (5, "Zoë")]  # id, customer where ordered_on >= ORDERED_SINCE

# An aggregate that never finishes on its own: only a cancel ends it.
ENDLESS_DUCKDB = "SELECT sum(a.range * b.range) AS s FROM range(1000000) AS a CROSS JOIN range(1000000) AS b"


# --- sources ---------------------------------------------------------------------------------


def make_duckdb_file(folder: Path) -> Path:
    path = folder / "shop.duckdb"
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE orders (id INTEGER, customer VARCHAR, amount DECIMAL(10, 2), ordered_on DATE, note VARCHAR)"
        )
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ORDERS)
        con.execute("CREATE TABLE empty_orders AS SELECT * FROM orders WHERE false")
    finally:
        con.close()
    return path


def make_sqlite_file(folder: Path) -> Path:
    path = folder / "shop.sqlite"
    con = sqlite3.connect(path)
    try:
        # SQLite keeps the date as TEXT and the decimal as a number (NUMERIC affinity).
        con.execute("CREATE TABLE orders (id INTEGER, customer TEXT, amount DECIMAL(10, 2), ordered_on TEXT, note TEXT)")
        con.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            [(i, c, None if a is None else float(a), None if d is None else d.isoformat(), n) for i, c, a, d, n in ORDERS],
        )
        con.execute("CREATE TABLE empty_orders (id INTEGER, customer VARCHAR(20), amount DECIMAL(10, 2), ordered_on DATE)")
        con.commit()
    finally:
        con.close()
    return path


def orders_table(rows: list[tuple[Any, ...]] = ORDERS) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int32()),
            "customer": pa.array([r[1] for r in rows], pa.string()),
            "amount": pa.array([r[2] for r in rows], pa.decimal128(10, 2)),
            "ordered_on": pa.array([r[3] for r in rows], pa.date32()),
            "note": pa.array([r[4] for r in rows], pa.string()),
        }
    )


def make_parquet_dir(folder: Path) -> Path:
    """Two files, one in a subfolder: a directory uri must find both."""
    root = folder / "orders"
    (root / "2024").mkdir(parents=True)
    pq.write_table(orders_table(ORDERS[:2]), root / "part-0.parquet")
    pq.write_table(orders_table(ORDERS[2:]), root / "2024" / "part-1.parquet")
    (root / "README.txt").write_text("not parquet")
    return root


@pytest.fixture
def duckdb_source(tmp_path: Path) -> DuckDBConnector:
    make_duckdb_file(tmp_path)
    connector = open_connector(SourceConfig("duckdb", "shop.duckdb", tmp_path))
    yield connector
    connector.close()


@pytest.fixture
def sqlite_source(tmp_path: Path) -> SQLiteConnector:
    make_sqlite_file(tmp_path)
    connector = open_connector(SourceConfig("sqlite", "shop.sqlite", tmp_path))
    yield connector
    connector.close()


@pytest.fixture
def parquet_source(tmp_path: Path) -> ParquetConnector:
    make_parquet_dir(tmp_path)
    connector = open_connector(SourceConfig("parquet", "orders", tmp_path))
    yield connector
    connector.close()


FILE_SOURCES = ["duckdb_source", "sqlite_source", "parquet_source"]


@pytest.fixture
def connect() -> Callable[..., Any]:
    """Factory ``connect(cls, uri, base_dir=None)``; every connector is closed after the test
    (an unclosed pool leaves ADBC statements to the garbage collector)."""
    made: list[Connector] = []

    def make(cls: type[Connector], uri: str, base_dir: Path | None = None) -> Any:
        connector = cls(SourceConfig(cls.kind, uri, base_dir))
        made.append(connector)
        return connector

    yield make
    for connector in made:
        connector.close()


def orders_relation(connector: Connector) -> exp.Expression:
    """The orders product as each file source names it (parquet sources take no table)."""
    table = None if connector.kind == "parquet" else "orders"
    return connector.relation(table, None)


def read(connector: Connector, sql: str) -> pa.Table:
    scan = connector.scan(sql)
    try:
        return scan.reader.read_all()
    finally:
        scan.close()


def count_connects(monkeypatch: pytest.MonkeyPatch, cls: type[Connector]) -> list[int]:
    """Patch ``cls._connect`` (before the connector is made: the pool binds it) to count calls."""
    calls = [0]
    original = cls._connect

    def counting(self: Any) -> Any:
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(cls, "_connect", counting)
    return calls


def cancel_after(scan: Scan, seconds: float) -> list[float]:
    """Cancel ``scan`` from another thread after ``seconds``; the list receives the cancel time."""
    when: list[float] = []

    def cancel() -> None:
        when.append(time.monotonic())
        scan.cancel()

    threading.Timer(seconds, cancel).start()
    return when


# --- plugin loading --------------------------------------------------------------------------


def test_every_kind_is_a_registered_plugin() -> None:
    assert known_kinds() == ["duckdb", "flightsql", "parquet", "postgres", "sqlite"]
    for kind in known_kinds():
        cls = connector_class(kind)
        assert issubclass(cls, Connector) and cls.kind == kind


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(Unsupported, match="unknown connector 'oracle'.*duckdb, flightsql, parquet, postgres, sqlite"):
        connector_class("oracle")


def test_open_connector_does_not_connect(tmp_path: Path) -> None:
    connector = open_connector(SourceConfig("sqlite", "missing.sqlite", tmp_path))
    assert isinstance(connector, SQLiteConnector)  # the missing file only matters at scan time
    connector.close()


def test_capability_table() -> None:
    everything = Capabilities(joins=True, aggregates=True, full_sql=True)
    assert DuckDBConnector.capabilities == everything
    assert ParquetConnector.capabilities == everything
    assert PostgresConnector.capabilities == Capabilities(joins=True, aggregates=True, full_sql=True, max_in_list=100_000)
    assert FlightSQLConnector.capabilities == everything
    assert SQLiteConnector.capabilities == Capabilities(
        joins=True, aggregates=False, full_sql=False, portable_filters_only=True, regex=False, max_in_list=50_000
    )
    dialects = {kind: connector_class(kind).dialect for kind in known_kinds()}
    assert dialects == {
        "duckdb": "duckdb",
        "parquet": "duckdb",
        "sqlite": "sqlite",
        "postgres": "postgres",
        "flightsql": "postgres",
    }


# --- the file sources: DuckDB, SQLite, parquet -----------------------------------------------


@pytest.mark.parametrize("source", FILE_SOURCES)
def test_scan_with_filter_and_projection(source: str, request: pytest.FixtureRequest) -> None:
    connector: Connector = request.getfixturevalue(source)
    # Comparing the date column with a string literal is portable: SQLite compares text.
    select = (
        exp.select("id", "customer")
        .from_(orders_relation(connector))
        .where(f"ordered_on >= '{ORDERED_SINCE}'")
        .order_by("id")
    )
    table = read(connector, connector.render(select))
    assert table.column_names == ["id", "customer"]
    assert [tuple(row.values()) for row in table.to_pylist()] == EXPECTED_SINCE


@pytest.mark.parametrize("source", FILE_SOURCES)
def test_full_scan_keeps_nulls_unicode_and_empty_strings(source: str, request: pytest.FixtureRequest) -> None:
    connector: Connector = request.getfixturevalue(source)
    select = exp.select("id", "customer", "note").from_(orders_relation(connector)).order_by("id")
    rows = read(connector, connector.render(select)).to_pylist()
    assert [(r["id"], r["customer"], r["note"]) for r in rows] == [(o[0], o[1], o[4]) for o in ORDERS]


def test_duckdb_arrow_types(duckdb_source: DuckDBConnector) -> None:
    table = read(duckdb_source, "SELECT * FROM orders ORDER BY id")
    assert table.schema.types == [pa.int32(), pa.string(), pa.decimal128(10, 2), pa.date32(), pa.string()]
    assert table.column("amount").to_pylist() == [o[2] for o in ORDERS]
    assert table.column("ordered_on").to_pylist() == [o[3] for o in ORDERS]


def test_parquet_arrow_types(parquet_source: ParquetConnector) -> None:
    select = exp.select("*").from_(orders_relation(parquet_source)).order_by("id")
    table = read(parquet_source, parquet_source.render(select))
    assert table.schema == orders_table().schema
    assert table.column("amount").to_pylist() == [o[2] for o in ORDERS]


def test_sqlite_arrow_types(sqlite_source: SQLiteConnector) -> None:
    """SQLite hands over what it stores: the date as text, the decimal as a double (the engine
    casts both to the contract's types)."""
    table = read(sqlite_source, "SELECT * FROM orders ORDER BY id")
    assert table.schema.types == [pa.int64(), pa.string(), pa.float64(), pa.string(), pa.string()]
    assert table.column("ordered_on").to_pylist() == [None if o[3] is None else o[3].isoformat() for o in ORDERS]
    assert table.column("amount").to_pylist() == [None if o[2] is None else float(o[2]) for o in ORDERS]


def test_schema_reads_no_rows(duckdb_source: DuckDBConnector, sqlite_source: SQLiteConnector) -> None:
    assert duckdb_source.schema("orders", None).types == [
        pa.int32(), pa.string(), pa.decimal128(10, 2), pa.date32(), pa.string()
    ]
    assert duckdb_source.schema(None, "SELECT id, amount * 2 AS twice FROM orders").names == ["id", "twice"]


def test_sqlite_schema_of_an_empty_result_uses_declared_types(sqlite_source: SQLiteConnector) -> None:
    """With no values to look at the driver would say int64 for every column."""
    expected = [pa.int64(), pa.string(), pa.float64(), pa.string()]
    assert sqlite_source.schema("empty_orders", None).types == expected
    assert sqlite_source.schema("orders", None).types == [pa.int64(), pa.string(), pa.float64(), pa.string(), pa.string()]
    probe = read(sqlite_source, "SELECT id, customer FROM orders WHERE id < 0")
    assert probe.num_rows == 0 and probe.schema.types == [pa.int64(), pa.string()]


def test_parquet_schema(parquet_source: ParquetConnector) -> None:
    assert parquet_source.schema(None, None) == orders_table().schema


@pytest.mark.parametrize("source", FILE_SOURCES)
def test_row_count(source: str, request: pytest.FixtureRequest) -> None:
    connector: Connector = request.getfixturevalue(source)
    table = None if connector.kind == "parquet" else "orders"
    assert connector.row_count(table, None) == len(ORDERS)


@pytest.mark.parametrize("source", FILE_SOURCES)
def test_freshness_from_a_column_and_from_the_files(source: str, request: pytest.FixtureRequest) -> None:
    """The newest freshness-column value (a date is midnight UTC; SQLite's text is parsed), and
    without a column the files' modification time, which moves when the data is rewritten."""
    connector: Connector = request.getfixturevalue(source)
    table = None if connector.kind == "parquet" else "orders"
    by_column = connector.freshness(table, None, "ordered_on")
    assert by_column.as_of == datetime(2024, 3, 1, tzinfo=timezone.utc)
    assert by_column.basis == "max(ordered_on)"
    assert by_column.age(datetime(2024, 3, 2, tzinfo=timezone.utc)) == 86400
    by_files = connector.freshness(table, None)
    assert by_files.basis == "files modified" and by_files.as_of is not None
    assert abs(by_files.age()) < 600
    later = by_files.as_of.timestamp() + 100
    for path in connector.config.base_dir.rglob("*"):
        os.utime(path, (later, later))
    assert connector.freshness(table, None).as_of.timestamp() == pytest.approx(later)


def test_freshness_values_become_utc() -> None:
    assert as_utc("2024-05-01T10:00:00+02:00") == datetime(2024, 5, 1, 8, tzinfo=timezone.utc)
    assert as_utc(datetime(2024, 5, 1, 10)) == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert as_utc(date(2024, 5, 1)) == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert as_utc("yesterday") is None and as_utc(17) is None and as_utc(None) is None


def test_render_in_each_dialect(duckdb_source: DuckDBConnector, sqlite_source: SQLiteConnector) -> None:
    def query(connector: Connector) -> exp.Select:
        return exp.select("id").from_(connector.relation('main."order lines"', None)).where("customer ILIKE 'z%'").limit(5)

    assert duckdb_source.render(query(duckdb_source)) == (
        """SELECT id FROM main."order lines" WHERE customer ILIKE 'z%' LIMIT 5"""
    )
    assert sqlite_source.render(query(sqlite_source)) == (
        """SELECT id FROM main."order lines" WHERE LOWER(customer) LIKE LOWER('z%') LIMIT 5"""
    )


def test_relation_of_a_query_is_a_parsed_subquery(duckdb_source: DuckDBConnector) -> None:
    relation = duckdb_source.relation(None, "SELECT id, amount FROM orders WHERE amount > 0")
    assert isinstance(relation, exp.Subquery) and relation.alias == "_src"
    select = exp.select("count(*) AS n").from_(relation)
    assert read(duckdb_source, duckdb_source.render(select)).to_pylist() == [{"n": 3}]


def test_relation_rejects_anything_but_one_query(duckdb_source: DuckDBConnector) -> None:
    with pytest.raises(InvalidQuery, match="either a table or a query"):
        duckdb_source.relation("orders", "SELECT 1")
    with pytest.raises(InvalidQuery, match="one SELECT query, not DELETE"):
        duckdb_source.relation(None, "DELETE FROM orders")
    with pytest.raises(InvalidQuery, match="does not parse"):
        duckdb_source.relation(None, "SELECT FROM WHERE (")


def test_a_table_name_is_never_sql(duckdb_source: DuckDBConnector) -> None:
    """A descriptor's ``table:`` is one quoted name, whatever characters it holds."""
    rendered = duckdb_source.render(exp.select("*").from_(duckdb_source.relation("orders; DROP TABLE orders", None)))
    assert rendered == 'SELECT * FROM "orders; DROP TABLE orders"'


# --- DuckDB specifics ------------------------------------------------------------------------


def test_duckdb_settings(duckdb_source: DuckDBConnector) -> None:
    row = read(
        duckdb_source,
        "SELECT 7 / 2 AS q, current_setting('autoinstall_known_extensions') AS install, "
        "current_setting('autoload_known_extensions') AS autoload",
    ).to_pylist()
    assert row == [{"q": 3, "install": False, "autoload": False}]  # integer division truncates, as in PostgreSQL


def test_duckdb_file_is_read_only_and_sealed(duckdb_source: DuckDBConnector, tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="read-only"):
        read(duckdb_source, "CREATE TABLE x AS SELECT 1")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    with pytest.raises(SourceUnavailable, match="disabled by configuration"):
        read(duckdb_source, f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')")


def test_duckdb_source_id_is_the_resolved_path(tmp_path: Path, connect: Callable[..., Any]) -> None:
    (tmp_path / "sub").mkdir()
    connector = connect(DuckDBConnector, "../shop.duckdb", tmp_path / "sub")
    assert connector.source_id == f"duckdb:{tmp_path.resolve() / 'shop.duckdb'}"


def test_duckdb_missing_file(tmp_path: Path, connect: Callable[..., Any]) -> None:
    connector = connect(DuckDBConnector, "nope.duckdb", tmp_path)
    with pytest.raises(SourceUnavailable, match=r"source duckdb:nope.duckdb failed: .*does not exist"):
        read(connector, "SELECT 1")


@pytest.mark.parametrize("source", ["duckdb_source", "parquet_source"])
def test_duckdb_cancel_stops_a_running_aggregate(source: str, request: pytest.FixtureRequest) -> None:
    connector: Connector = request.getfixturevalue(source)
    scan = connector.scan(ENDLESS_DUCKDB)
    cancelled_at = cancel_after(scan, 0.3)
    with pytest.raises(QueryCancelled):
        scan.reader.read_all()
    stopped_at = time.monotonic()
    scan.close()
    assert cancelled_at and stopped_at - cancelled_at[0] < 1.0
    assert read(connector, "SELECT 42 AS answer").to_pylist() == [{"answer": 42}]


def test_cancel_before_start_never_runs_the_query(duckdb_source: DuckDBConnector) -> None:
    scan = duckdb_source.scan(ENDLESS_DUCKDB)
    scan.cancel()
    with pytest.raises(QueryCancelled, match="before its query started"):
        scan.reader
    scan.close()


# --- pooling ---------------------------------------------------------------------------------


def test_pool_reuses_a_connection_read_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Callable[..., Any]
) -> None:
    make_duckdb_file(tmp_path)
    connects = count_connects(monkeypatch, DuckDBConnector)
    connector = connect(DuckDBConnector, "shop.duckdb", tmp_path)
    for _ in range(3):
        assert read(connector, "SELECT count(*) AS n FROM orders").to_pylist() == [{"n": len(ORDERS)}]
    assert connects[0] == 1


def test_concurrent_scans_get_their_own_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Callable[..., Any]
) -> None:
    make_duckdb_file(tmp_path)
    connects = count_connects(monkeypatch, DuckDBConnector)
    connector = connect(DuckDBConnector, "shop.duckdb", tmp_path)
    first, second = connector.scan("SELECT * FROM orders"), connector.scan("SELECT * FROM orders")
    assert first.reader.read_all().num_rows == second.reader.read_all().num_rows == len(ORDERS)
    first.close()
    second.close()
    assert connects[0] == 2
    read(connector, "SELECT 1")
    assert connects[0] == 2  # both went back to the pool


@pytest.mark.parametrize("how", ["half-read", "failed", "cancelled"])
def test_pool_discards_a_connection_it_cannot_trust(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Callable[..., Any]
) -> None:
    make_sqlite_file(tmp_path)
    connects = count_connects(monkeypatch, SmallBatchSQLite)
    connector = connect(SmallBatchSQLite, "shop.sqlite", tmp_path)
    read(connector, "SELECT 1")
    assert connects[0] == 1
    if how == "half-read":
        scan = connector.scan("SELECT * FROM orders")
        scan.reader.read_next_batch()
        scan.close()
    elif how == "failed":
        with pytest.raises(SourceUnavailable, match="no such table"):
            read(connector, "SELECT * FROM no_such_table")
    else:
        scan = connector.scan("SELECT * FROM orders")
        scan.reader.read_next_batch()
        scan.cancel()
        with pytest.raises(QueryCancelled):
            scan.reader.read_next_batch()
        scan.close()
    read(connector, "SELECT 1")
    assert connects[0] == 2


# --- SQLite specifics ------------------------------------------------------------------------


class SmallBatchSQLite(SQLiteConnector):
    """Two rows per batch, so a few rows make several batches."""

    batch_rows = 2


def test_sqlite_is_read_only(sqlite_source: SQLiteConnector, tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="readonly database"):
        read(sqlite_source, "INSERT INTO orders (id) VALUES (99)")
    con = sqlite3.connect(tmp_path / "shop.sqlite")
    assert con.execute("SELECT count(*) FROM orders").fetchone() == (len(ORDERS),)
    con.close()


def test_sqlite_missing_file_is_not_created(tmp_path: Path, connect: Callable[..., Any]) -> None:
    connector = connect(SQLiteConnector, "nope.sqlite", tmp_path)
    with pytest.raises(SourceUnavailable, match=r"source sqlite:nope.sqlite: no SQLite database file at .*nope.sqlite"):
        connector.scan("SELECT 1")
    assert not (tmp_path / "nope.sqlite").exists()
    assert connector.source_id == f"sqlite:{tmp_path.resolve() / 'nope.sqlite'}"


def test_sqlite_cancel_stops_an_endless_stream_at_the_next_batch(sqlite_source: SQLiteConnector) -> None:
    """The driver cannot interrupt SQLite, but SQLite computes rows lazily: stopping between
    batches stops the work."""
    scan = sqlite_source.scan("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n")
    cancelled_at = cancel_after(scan, 0.3)
    batches = 0
    with pytest.raises(QueryCancelled):
        while True:
            scan.reader.read_next_batch()
            batches += 1
    stopped_at = time.monotonic()
    scan.close()
    assert batches > 0 and stopped_at - cancelled_at[0] < 1.0


def test_sqlite_mixed_types_fail_with_a_hint(tmp_path: Path, connect: Callable[..., Any]) -> None:
    """Whole numbers first, then a fraction: the driver typed the column int64 from the first
    batch; the error says how to fix the product."""
    con = sqlite3.connect(tmp_path / "mixed.sqlite")
    con.execute("CREATE TABLE prices (price NUMERIC)")
    con.executemany("INSERT INTO prices VALUES (?)", [(10,), (20,), (2.5,)])
    con.commit()
    con.close()
    connector = connect(SmallBatchSQLite, "mixed.sqlite", tmp_path)
    with pytest.raises(SourceUnavailable, match=r"Type mismatch.*first 2 values: CAST the column"):
        read(connector, "SELECT price FROM prices")
    assert read(connector, "SELECT CAST(price AS REAL) AS price FROM prices").column(0).to_pylist() == [10.0, 20.0, 2.5]


# --- parquet specifics -----------------------------------------------------------------------


def test_parquet_file_dir_and_glob_uris(tmp_path: Path, connect: Callable[..., Any]) -> None:
    root = make_parquet_dir(tmp_path)
    uris = [("orders", 5), ("orders/part-0.parquet", 2), ("orders/*/*.parquet", 3), (str(root / "**" / "*.parquet"), 5)]
    for uri, rows in uris:
        connector = connect(ParquetConnector, uri, tmp_path)
        assert connector.row_count(None, None) == rows, uri


def test_parquet_without_files_is_unavailable(tmp_path: Path, connect: Callable[..., Any]) -> None:
    (tmp_path / "empty").mkdir()
    for uri in ["empty", "missing.parquet", "empty/*.parquet"]:
        connector = connect(ParquetConnector, uri, tmp_path)
        with pytest.raises(SourceUnavailable, match=re.escape(f"source parquet:{uri}: no parquet files at")):
            connector.relation(None, None)


def test_parquet_query_reads_the_files_as_files(parquet_source: ParquetConnector) -> None:
    relation = parquet_source.relation(None, "SELECT files.id, note FROM files WHERE customer = 'Zoë'")
    rendered = parquet_source.render(exp.select("*").from_(relation).order_by("id"))
    assert "READ_PARQUET(" in rendered and " AS files" in rendered
    assert read(parquet_source, rendered).to_pylist() == [
        {"id": 1, "note": "naïve café"},
        {"id": 5, "note": "second order"},
    ]
    with pytest.raises(InvalidQuery, match="takes no table"):
        parquet_source.relation("orders", None)


def test_parquet_products_share_one_source(tmp_path: Path, connect: Callable[..., Any]) -> None:
    """Any parquet connector can run a join over several parquet products."""
    root = make_parquet_dir(tmp_path)
    customers = tmp_path / "customers.parquet"
    pq.write_table(pa.table({"name": ["Zoë", "日本語"], "country": ["FR", "JP"]}), customers)
    orders = connect(ParquetConnector, str(root))
    people = connect(ParquetConnector, "customers.parquet", tmp_path)
    assert orders.source_id == people.source_id == "parquet"
    select = (
        exp.select("c.country", "count(*) AS n")
        .from_(orders.relation(None, None).as_("o"))
        .join(people.relation(None, None).as_("c"), on="o.customer = c.name")
        .group_by("c.country")
        .order_by("c.country")
    )
    assert read(people, people.render(select)).to_pylist() == [{"country": "FR", "n": 2}, {"country": "JP", "n": 1}]


# --- PostgreSQL ------------------------------------------------------------------------------

PG_SETUP = """
CREATE TABLE items (
    id integer PRIMARY KEY,
    name text,
    price numeric(10, 2),
    weight numeric,
    huge numeric(50, 5),
    tiny numeric(5, -2),
    sold_at timestamptz
);
INSERT INTO items VALUES
    (1, 'Zoë', 12.50, 1.5, 12345678901234567890123456789012345678901234.5, 12300, '2024-01-02 03:04:05+02'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, '日本語', -3.25, 0.125, 1, 100, '2024-06-30 23:59:59.123456+00');
"""


@pytest.fixture
def pg_database(fresh_pg_database: str) -> str:
    import psycopg2

    conn = psycopg2.connect(fresh_pg_database)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(PG_SETUP)
    finally:
        conn.close()
    return fresh_pg_database


@pytest.fixture
def pg_source(pg_database: str) -> PostgresConnector:
    connector = open_connector(SourceConfig("postgres", pg_database))
    yield connector
    connector.close()


def pg_server_query(uri: str, sql: str) -> list[tuple[Any, ...]]:
    """Ask the server directly (psycopg2), not through the connector under test."""
    import psycopg2

    conn = psycopg2.connect(uri)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.postgres
def test_postgres_scan_with_filter_and_projection(pg_source: PostgresConnector) -> None:
    select = exp.select("id", "name").from_(pg_source.relation("public.items", None)).where("price > 0").order_by("id")
    assert read(pg_source, pg_source.render(select)).to_pylist() == [{"id": 1, "name": "Zoë"}]


@pytest.mark.postgres
def test_postgres_numeric_becomes_decimal(pg_source: PostgresConnector) -> None:
    table = read(pg_source, "SELECT price, weight, huge, tiny FROM items ORDER BY id")
    assert table.schema.field("price").type == pa.decimal128(10, 2)  # from the typmod
    assert table.schema.field("weight").type == pa.decimal128(38, 3)  # unconstrained: scale of the values
    assert table.schema.field("huge").type == pa.string()  # numeric(50, 5) does not fit decimal128
    assert table.schema.field("tiny").type == pa.decimal128(5, -2)
    assert table.column("price").to_pylist() == [Decimal("12.50"), None, Decimal("-3.25")]
    assert table.column("weight").to_pylist() == [Decimal("1.500"), None, Decimal("0.125")]
    assert table.column("huge").to_pylist() == [
        "12345678901234567890123456789012345678901234.50000", None, "1.00000"
    ]
    assert table.column("tiny").to_pylist() == [Decimal("12300"), None, Decimal("100")]


@pytest.mark.postgres
def test_postgres_numeric_aggregates(pg_source: PostgresConnector) -> None:
    """sum and avg of numeric are unconstrained numerics: every value keeps all its digits."""
    table = read(pg_source, "SELECT sum(price) AS total, avg(price) AS mean, 'NaN'::numeric AS nan FROM items")
    assert table.schema.types == [pa.decimal128(38, 2), pa.decimal128(38, 16), pa.string()]
    assert table.to_pylist() == [{"total": Decimal("9.25"), "mean": Decimal("4.625"), "nan": "nan"}]
    empty = read(pg_source, "SELECT sum(price) AS total FROM items WHERE false")
    assert empty.schema.types == [pa.decimal128(38, 0)] and empty.to_pylist() == [{"total": None}]


@pytest.mark.postgres
def test_postgres_nan_in_a_typed_numeric_names_the_column(pg_source: PostgresConnector) -> None:
    with pytest.raises(SourceUnavailable, match=r"source postgres:.*column price: a PostgreSQL numeric value has no"):
        read(pg_source, "SELECT 'NaN'::numeric(10, 2) AS price")


@pytest.mark.postgres
def test_postgres_timestamptz(pg_source: PostgresConnector) -> None:
    table = read(pg_source, "SELECT sold_at FROM items ORDER BY id")
    assert table.schema.field("sold_at").type == pa.timestamp("us", tz="UTC")
    assert table.column(0).to_pylist() == [
        datetime(2024, 1, 2, 1, 4, 5, tzinfo=timezone.utc),
        None,
        datetime(2024, 6, 30, 23, 59, 59, 123456, tzinfo=timezone.utc),
    ]


@pytest.mark.postgres
def test_postgres_schema_row_count_and_render(pg_source: PostgresConnector) -> None:
    schema = pg_source.schema("public.items", None)
    assert schema.names == ["id", "name", "price", "weight", "huge", "tiny", "sold_at"]
    assert schema.field("price").type == pa.decimal128(10, 2)
    assert pg_source.row_count("items", None) == 3
    assert pg_source.row_count(None, "SELECT * FROM items WHERE price IS NOT NULL") == 2
    assert pg_source.freshness("items", None, "sold_at").as_of == datetime(2024, 6, 30, 23, 59, 59, 123456, tzinfo=timezone.utc)
    assert pg_source.freshness("items", None).as_of is None  # a server has no file time: unknown
    select = exp.select("name").from_(pg_source.relation("public.items", None)).where("name ILIKE 'z%'").limit(1)
    assert pg_source.render(select) == "SELECT name FROM public.items WHERE name ILIKE 'z%' LIMIT 1"


@pytest.mark.postgres
def test_postgres_cancel_stops_the_server_side_query(pg_source: PostgresConnector, pg_database: str) -> None:
    scan = pg_source.scan("SELECT pg_sleep(30)")
    cancelled_at = cancel_after(scan, 0.5)
    with pytest.raises(QueryCancelled):
        scan.reader.read_all()
    stopped_at = time.monotonic()
    scan.close()
    assert stopped_at - cancelled_at[0] < 1.0
    sleeping = pg_server_query(
        pg_database,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(30)%' "
        "AND pid <> pg_backend_pid()",
    )
    assert sleeping == [(0,)]


@pytest.mark.postgres
def test_postgres_pool_reuses_the_server_session(pg_source: PostgresConnector) -> None:
    first = read(pg_source, "SELECT pg_backend_pid() AS pid").to_pylist()
    assert read(pg_source, "SELECT pg_backend_pid() AS pid").to_pylist() == first


@pytest.mark.postgres
def test_postgres_connections_are_autocommit(pg_source: PostgresConnector, pg_database: str) -> None:
    """A pooled connection must not sit idle in a transaction (it would hold a snapshot)."""
    read(pg_source, "SELECT 1")
    idle_in_transaction = pg_server_query(
        pg_database, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
    )
    assert idle_in_transaction == [(0,)]


@pytest.mark.postgres
def test_postgres_server_down_and_back(pg_source: PostgresConnector, pg_control: Any) -> None:
    assert read(pg_source, "SELECT 1 AS one").to_pylist() == [{"one": 1}]  # leaves a pooled connection
    pg_control.stop()
    with pytest.raises(SourceUnavailable, match=r"^source postgres:postgresql://.* failed: "):
        read(pg_source, "SELECT 1 AS one")
    pg_control.start()
    assert read(pg_source, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


@pytest.mark.postgres
def test_postgres_restart_under_a_pooled_connection(pg_source: PostgresConnector, pg_control: Any) -> None:
    """The idle pooled connection died with the old server: the next scan reconnects."""
    before = read(pg_source, "SELECT pg_backend_pid() AS pid").column(0)[0].as_py()
    pg_control.stop()
    pg_control.start()
    after = read(pg_source, "SELECT pg_backend_pid() AS pid").column(0)[0].as_py()
    assert after != before


@pytest.mark.postgres
def test_postgres_errors_name_the_source_without_secrets(pg_database: str, connect: Callable[..., Any]) -> None:
    uri = pg_database.replace("postgres@", "postgres:s3cret@", 1)
    connector = connect(PostgresConnector, uri)
    assert "s3cret" not in connector.source_id and "s3cret" not in connector.display_name
    assert connector.source_id == "postgres:" + pg_database
    with pytest.raises(SourceUnavailable) as failure:
        read(connector, "SELECT * FROM no_such_table")
    assert "relation \"no_such_table\" does not exist" in failure.value.message
    assert "s3cret" not in failure.value.message


# --- Flight SQL (the end-to-end scan is tested against a running meshgate) -------------------


def test_flightsql_names_and_dialect(connect: Callable[..., Any]) -> None:
    connector = connect(FlightSQLConnector, "grpc://alice:pa%40ss@127.0.0.1:32010")
    assert connector.source_id == "flightsql:grpc://alice@127.0.0.1:32010"
    assert connector.display_name == "flightsql:grpc://alice:***@127.0.0.1:32010"
    select = exp.select("o.id").from_(connector.relation('sales."orders@2"', None).as_("o")).where("o.note ILIKE '%x%'")
    assert connector.render(select) == """SELECT o.id FROM sales."orders@2" AS o WHERE o.note ILIKE '%x%'"""
    relation = connector.relation(None, "SELECT id FROM sales.orders WHERE amount::numeric > 0")
    assert relation.sql("postgres") == "(SELECT id FROM sales.orders WHERE CAST(amount AS DECIMAL) > 0) AS _src"
    assert sqlglot.parse_one(connector.render(exp.select("*").from_(relation)), read="postgres")


def test_flightsql_closed_port_is_unavailable(free_port: Callable[[], int], connect: Callable[..., Any]) -> None:
    port = free_port()
    connector = connect(FlightSQLConnector, f"grpc://alice:s3cret@127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=rf"^source flightsql:grpc://alice:\*\*\*@127.0.0.1:{port} failed: "):
        read(connector, "SELECT 1")
    assert time.monotonic() - started < 10


def test_duckdb_closes_while_a_cancelled_scan_winds_down(tmp_path: Path) -> None:
    """Shutting the gateway down right after a query failed must not raise because a fragment of
    it is still running in DuckDB (DuckDB refuses to close a busy database)."""
    path = tmp_path / "big.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS x FROM range(3000)")
    con.close()
    connector = DuckDBConnector(SourceConfig("duckdb", str(path), None))
    scan = connector.scan("SELECT count(*) FROM t a, t b, t c WHERE a.x + b.x + c.x = 7")  # runs for minutes
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            scan.reader.read_all()
        except BaseException as err:  # noqa: BLE001
            outcome.append(err)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # the query is running
    connector.close()  # DuckDB raised ResourceInUseException here
    scan.cancel()
    reader.join(30)
    assert not reader.is_alive() and isinstance(outcome[0], QueryCancelled)
