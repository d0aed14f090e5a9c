#!/usr/bin/env python3
"""Federated TPC-H: meshgate against its floor and against DuckDB over the same data in one place.

The eight TPC-H tables are split over three kinds of source, as a data mesh would have them.
``--split`` picks one of two splits:

    sqlite-orders (default)
        PostgreSQL  customer, nation, region          (ADBC ingest, primary keys and key indexes)
        SQLite      orders                            (one file; ISO TEXT dates, REAL decimals)
        Parquet     lineitem, part, partsupp, supplier (the files tpchgen-cli writes)
    colocated (a data owner keeps orders with their lines)
        PostgreSQL  customer, nation, region
        SQLite      supplier
        Parquet     orders, lineitem, part, partsupp

Each table becomes a data product ``tpch.<table>``; a real ``meshgate serve`` runs as a
subprocess, and every query is timed three ways (median of ``--repeat`` runs after a warm-up):

    gateway   the query through the ADBC Flight SQL driver (what a client sees)
    floor     what the gateway cannot avoid doing: the fragments of its own plan (from EXPLAIN)
              run directly on their sources with their own clients, concurrently, with the
              dynamic filters the gateway's engine would apply (same rule, same SQL), then the
              same residual query in DataFusion in this process. gateway/floor is the gateway's
              overhead: planning, Flight SQL, the extra hop and any inefficiency in between.
    duckdb    DuckDB in-process over all eight tables as Parquet: what a single engine with all
              the data in one place achieves. gateway/duckdb is the price of federation.

Answers are checked (gateway against DuckDB, and the floor too), a small-query round trip is
measured, and the results go to ``benchmarks/results/federated_tpch_<split>.{json,png}``.

    python benchmarks/federated_tpch.py --scale 1                      # starts a throw-away PostgreSQL
    python benchmarks/federated_tpch.py --scale 1 --split colocated
    python benchmarks/federated_tpch.py --pg-uri postgresql://user@host:5432/db --scale 0.1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import decimal
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
QUERY_DIR = BENCH_DIR / "tpch_queries"
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_QUERIES = "1,3,5,6,10,12,14,19"

console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)

# --- the data: TPC-H tables, their contract types and where each one lives -------------------

MONEY = "decimal(15,2)"
CONTRACTS: dict[str, list[tuple[str, str]]] = {
    "region": [("r_regionkey", "int64"), ("r_name", "string"), ("r_comment", "string")],
    "nation": [("n_nationkey", "int64"), ("n_name", "string"), ("n_regionkey", "int64"), ("n_comment", "string")],
    "customer": [
        ("c_custkey", "int64"), ("c_name", "string"), ("c_address", "string"), ("c_nationkey", "int64"),
        ("c_phone", "string"), ("c_acctbal", MONEY), ("c_mktsegment", "string"), ("c_comment", "string"),
    ],
    "orders": [
        ("o_orderkey", "int64"), ("o_custkey", "int64"), ("o_orderstatus", "string"), ("o_totalprice", MONEY),
        ("o_orderdate", "date"), ("o_orderpriority", "string"), ("o_clerk", "string"),
        ("o_shippriority", "int32"), ("o_comment", "string"),
    ],
    "lineitem": [
        ("l_orderkey", "int64"), ("l_partkey", "int64"), ("l_suppkey", "int64"), ("l_linenumber", "int32"),
        ("l_quantity", MONEY), ("l_extendedprice", MONEY), ("l_discount", MONEY), ("l_tax", MONEY),
        ("l_returnflag", "string"), ("l_linestatus", "string"), ("l_shipdate", "date"),
        ("l_commitdate", "date"), ("l_receiptdate", "date"), ("l_shipinstruct", "string"),
        ("l_shipmode", "string"), ("l_comment", "string"),
    ],
    "part": [
        ("p_partkey", "int64"), ("p_name", "string"), ("p_mfgr", "string"), ("p_brand", "string"),
        ("p_type", "string"), ("p_size", "int32"), ("p_container", "string"), ("p_retailprice", MONEY),
        ("p_comment", "string"),
    ],
    "partsupp": [
        ("ps_partkey", "int64"), ("ps_suppkey", "int64"), ("ps_availqty", "int32"),
        ("ps_supplycost", MONEY), ("ps_comment", "string"),
    ],
    "supplier": [
        ("s_suppkey", "int64"), ("s_name", "string"), ("s_address", "string"), ("s_nationkey", "int64"),
        ("s_phone", "string"), ("s_acctbal", MONEY), ("s_comment", "string"),
    ],
}
PRIMARY_KEYS = {
    "region": ["r_regionkey"], "nation": ["n_nationkey"], "customer": ["c_custkey"], "orders": ["o_orderkey"],
    "lineitem": ["l_orderkey", "l_linenumber"], "part": ["p_partkey"], "partsupp": ["ps_partkey", "ps_suppkey"],
    "supplier": ["s_suppkey"],
}
SPLITS: dict[str, dict[str, list[str]]] = {
    # orders in an application database, apart from its lines
    "sqlite-orders": {
        "postgres": ["customer", "nation", "region"],
        "sqlite": ["orders"],
        "parquet": ["lineitem", "part", "partsupp", "supplier"],
    },
    # a data owner keeps orders with their lines; suppliers live in an application database
    "colocated": {
        "postgres": ["customer", "nation", "region"],
        "sqlite": ["supplier"],
        "parquet": ["orders", "lineitem", "part", "partsupp"],
    },
}
DEFAULT_SPLIT = "sqlite-orders"
PG_INDEXES = {"customer": ["c_nationkey"], "nation": ["n_regionkey"]}
SQLITE_INDEXES = {"orders": ["o_orderkey", "o_custkey", "o_orderdate"], "supplier": ["s_suppkey", "s_nationkey"]}
SQLITE_UNIQUE = {"o_orderkey", "s_suppkey"}


def split_notes(split: dict[str, list[str]]) -> dict[str, str]:
    indexes = ", ".join(c for t in split["sqlite"] for c in SQLITE_INDEXES.get(t, []))
    return {
        "postgres": "ADBC ingest into numeric(15,2)/date/bigint columns; primary keys, indexes on c_nationkey, n_regionkey",
        "sqlite": f"one file; dates as ISO TEXT, decimals as REAL; indexes on {indexes}",
        "parquet": "the files tpchgen-cli writes (snappy), one per table, read by DuckDB",
    }


def source_of(split: dict[str, list[str]]) -> dict[str, str]:
    return {table: kind for kind, tables in split.items() for table in tables}


def arrow_type(contract: str) -> pa.DataType:
    simple = {"int64": pa.int64(), "int32": pa.int32(), "string": pa.string(), "date": pa.date32()}
    if contract in simple:
        return simple[contract]
    precision, scale = contract.removeprefix("decimal(").removesuffix(")").split(",")
    return pa.decimal128(int(precision), int(scale))


def pg_type(contract: str) -> str:
    return {"int64": "bigint", "int32": "integer", "string": "text", "date": "date"}.get(
        contract, contract.replace("decimal", "numeric")
    )


CONTRACT_TYPES: dict[str, pa.DataType] = {
    column: arrow_type(kind) for columns in CONTRACTS.values() for column, kind in columns
}


def scale_label(scale: float) -> str:
    return f"sf{scale:g}"


# --- generating and loading ------------------------------------------------------------------


def generate_parquet(parquet_dir: Path, scale: float) -> None:
    """The eight tables as Parquet, written once per scale factor (a marker file says done)."""
    marker = parquet_dir / ".complete"
    if marker.exists():
        console.print(f"reusing TPC-H {scale_label(scale)} Parquet in {parquet_dir}")
        return
    tool = shutil.which("tpchgen-cli")
    if tool is None:
        raise SystemExit("tpchgen-cli not found: pip install 'meshgate[bench]' (or pip install tpchgen-cli)")
    parquet_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"generating TPC-H {scale_label(scale)} as Parquet into {parquet_dir} ...")
    started = time.perf_counter()
    subprocess.run([tool, "parquet", "-s", f"{scale:g}", "-o", str(parquet_dir), "--overwrite"], check=True)
    marker.write_text(f"tpchgen-cli parquet -s {scale:g}\n")
    console.print(f"  done in {time.perf_counter() - started:.1f} s")


def parquet_rows(parquet_dir: Path, table: str) -> int:
    return pq.ParquetFile(parquet_dir / f"{table}.parquet").metadata.num_rows


def contract_table(parquet_dir: Path, table: str) -> pa.Table:
    """A table read from its Parquet file and cast to its contract types (no string views)."""
    data = pq.read_table(parquet_dir / f"{table}.parquet")
    schema = pa.schema([pa.field(c, arrow_type(t), nullable=False) for c, t in CONTRACTS[table]])
    return data.select(schema.names).cast(schema)


def sqlite_file(scale_dir: Path, tables: list[str]) -> Path:
    """The SQLite file holding ``tables`` (``orders.sqlite``, ``supplier.sqlite``), per scale factor."""
    return scale_dir / f"{'_'.join(tables)}.sqlite"


def build_sqlite(path: Path, parquet_dir: Path, tables: list[str]) -> None:
    """``tables`` in one SQLite file, the way an application database would keep them."""
    if path.exists():
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            counts = {}
            for table in tables:
                try:
                    counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                except sqlite3.Error:
                    counts[table] = -1
        if all(counts[t] == parquet_rows(parquet_dir, t) for t in tables):
            console.print(f"reusing SQLite {', '.join(tables)} in {path}")
            return
    console.print(f"loading {', '.join(tables)} into SQLite {path} ...")
    started = time.perf_counter()
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    sqlite_types = {"int64": "INTEGER", "int32": "INTEGER", "string": "TEXT", "date": "TEXT", MONEY: "REAL"}
    with contextlib.closing(sqlite3.connect(partial)) as con:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        for table in tables:
            columns = CONTRACTS[table]
            ddl = ", ".join(f"{c} {sqlite_types[t]} NOT NULL" for c, t in columns)
            con.execute(f"CREATE TABLE {table} ({ddl})")
            insert = f"INSERT INTO {table} VALUES ({', '.join('?' for _ in columns)})"
            for batch in pq.ParquetFile(parquet_dir / f"{table}.parquet").iter_batches(batch_size=100_000):
                arrays = []
                for name, kind in columns:
                    array = batch.column(name)
                    if kind == "date":
                        array = array.cast(pa.string())  # ISO yyyy-mm-dd
                    elif kind == MONEY:
                        array = array.cast(pa.float64())
                    elif kind == "string":
                        array = array.cast(pa.string())
                    arrays.append(array.to_pylist())
                con.executemany(insert, zip(*arrays))
            for column in SQLITE_INDEXES.get(table, []):
                unique = "UNIQUE " if column in SQLITE_UNIQUE else ""
                con.execute(f"CREATE {unique}INDEX {table}_{column} ON {table} ({column})")
        con.execute("ANALYZE")
        con.commit()
    partial.replace(path)
    console.print(f"  done in {time.perf_counter() - started:.1f} s")


def load_postgres(uri: str, schema: str, parquet_dir: Path, tables: list[str]) -> None:
    """``tables`` (customer, nation, region) into ``schema`` (reused when the row counts already match)."""
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        current = {}
        for table in tables:
            try:
                cur.execute(f"SELECT count(*) FROM {schema}.{table}")
                current[table] = cur.fetchone()[0]
            except pg.Error:
                current[table] = -1
        if all(current[t] == parquet_rows(parquet_dir, t) for t in tables):
            console.print(f"reusing PostgreSQL tables in schema {schema}")
            return
        console.print(f"loading {', '.join(tables)} into PostgreSQL schema {schema} ...")
        started = time.perf_counter()
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cur.execute(f"CREATE SCHEMA {schema}")
        for table in tables:
            ddl = ", ".join(f"{c} {pg_type(t)} NOT NULL" for c, t in CONTRACTS[table])
            cur.execute(f"CREATE TABLE {schema}.{table} ({ddl})")
            cur.adbc_ingest(table, contract_table(parquet_dir, table), mode="append", db_schema_name=schema)
            cur.execute(f"ALTER TABLE {schema}.{table} ADD PRIMARY KEY ({', '.join(PRIMARY_KEYS[table])})")
            for column in PG_INDEXES.get(table, []):
                cur.execute(f"CREATE INDEX {table}_{column} ON {schema}.{table} ({column})")
            cur.execute(f"ANALYZE {schema}.{table}")
        console.print(f"  done in {time.perf_counter() - started:.1f} s")


PG_PASSWORD_VARIABLE = "MESHGATE_BENCH_PG_PASSWORD"


def descriptor_pg_uri(uri: str) -> tuple[str, dict[str, str]]:
    """The URI for descriptors (a password becomes ``${VAR}``) and the environment it needs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, {}
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:${{{PG_PASSWORD_VARIABLE}}}@{host}").geturl(), {PG_PASSWORD_VARIABLE: parts.password}


def write_descriptors(
    products_dir: Path, split: dict[str, list[str]], pg_uri: str, pg_schema: str, sqlite_path: Path, parquet_dir: Path,
    sla: dict[str, str] | None = None,
) -> None:
    """One ``data-product.yaml`` per table (domain ``tpch``, product name = table name), each with
    ``spec.sla`` = ``sla`` when given (benchmarks/cache_bench.py declares a freshness SLA)."""
    import yaml

    if products_dir.exists():
        shutil.rmtree(products_dir)
    products_dir.mkdir(parents=True)
    for table, columns in CONTRACTS.items():
        kind = source_of(split)[table]
        if kind == "postgres":
            source = {"connector": "postgres", "uri": pg_uri, "table": f"{pg_schema}.{table}"}
        elif kind == "sqlite":
            source = {"connector": "sqlite", "uri": str(sqlite_path), "table": table}
        else:
            source = {"connector": "parquet", "uri": str(parquet_dir / f"{table}.parquet")}
        keys = PRIMARY_KEYS[table]
        schema = []
        for name, contract in columns:
            column: dict[str, Any] = {"name": name, "type": contract, "required": True}
            if name in keys:
                column["primary_key"] = True
            schema.append(column)
        doc = {
            "apiVersion": "datamesh.io/v1",
            "kind": "DataProduct",
            "metadata": {
                "name": table,
                "domain": "tpch",
                "owner": "benchmarks@example.com",
                "version": "1.0.0",
                "tags": ["tpch", "benchmark"],
                "description": f"TPC-H {table} ({kind})",
            },
            "spec": {"source": source, "schema": schema, **({"sla": dict(sla)} if sla else {})},
        }
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
        (products_dir / f"{table}.yaml").write_text(f"# Written by benchmarks/federated_tpch.py\n{text}")


# --- a throw-away PostgreSQL server and the gateway subprocess ----------------------------------


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    script = REPO / "scripts" / "pg-test-server"
    console.print("no --pg-uri: starting a throw-away PostgreSQL server (scripts/pg-test-server)")
    out = subprocess.run([str(script), "start", "--owner", str(os.getpid())], check=True, capture_output=True, text=True)
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            env[key] = value
    try:
        yield env["MESHGATE_TEST_PG_URI"]
    finally:
        if "MESHGATE_TEST_PG_TMP" in env:
            subprocess.run([str(script), "stop", env["MESHGATE_TEST_PG_TMP"]], check=False, capture_output=True)
            console.print("stopped the throw-away PostgreSQL server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def meshgate_command() -> list[str]:
    found = shutil.which("meshgate")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


@contextlib.contextmanager
def gateway_process(run_dir: Path, products_dir: Path, extra_env: dict[str, str], source_root: Path) -> Iterator[str]:
    """``meshgate serve`` on a free loopback port; yields its URI once it answers a query.
    ``run_dir`` (one per split) holds its home, registry and log."""
    import adbc_driver_flightsql.dbapi as flightsql

    home = run_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    registry = run_dir / "registry.db"
    for stale in run_dir.glob("registry.db*"):  # the benchmark owns its registry: start clean
        stale.unlink()
    env = {**os.environ, "MESHGATE_HOME": str(home), **extra_env}
    port = free_port()
    command = [
        *meshgate_command(), "serve", "--insecure-no-auth", "--host", "127.0.0.1", "--port", str(port),
        "--products", str(products_dir), "--registry", str(registry), "--grace-period", "2",
    ]
    help_text = subprocess.run([*meshgate_command(), "serve", "--help"], capture_output=True, text=True, env=env).stdout
    if "--source-root" in help_text:  # file sources must lie under a declared root
        command += ["--source-root", str(source_root)]
    log_path = run_dir / "gateway.log"
    console.print(f"starting the gateway: {' '.join(shlex.quote(c) for c in command)}")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"grpc://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        last_error = ""
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with code {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not answer within 180 s ({last_error}):\n{_tail(log_path)}")
            try:
                with flightsql.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
                    cur.execute("SELECT r_regionkey FROM tpch.region LIMIT 1")
                    cur.fetch_arrow_table()
                break
            except Exception as err:  # noqa: BLE001 - not up yet (or broken: reported at the deadline)
                last_error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
                time.sleep(0.5)
        console.print(f"gateway answers on {uri} (log: {log_path})")
        yield uri
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the three ways to run a query ---------------------------------------------------------------


class GatewayRunner:
    """The query as a client sends it: ADBC Flight SQL driver, ``fetch_arrow_table``."""

    def __init__(self, uri: str) -> None:
        import adbc_driver_flightsql.dbapi as flightsql

        self.conn = flightsql.connect(uri, autocommit=True)
        self.cursor = self.conn.cursor()

    def run(self, sql: str) -> pa.Table:
        self.cursor.execute(sql)
        return self.cursor.fetch_arrow_table()

    def explain(self, sql: str) -> list[dict[str, str]]:
        return self.run(f"EXPLAIN {sql}").to_pylist()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cursor.close()
        with contextlib.suppress(Exception):
            self.conn.close()


@dataclass
class FloorPlan:
    """The gateway's plan for a query, as EXPLAIN shows it."""

    fragments: list[tuple[str, str, str]]  # (name, source kind, sql)
    residual: str | None  # None: the answer is the one fragment's rows (passthrough)
    products: dict[str, list[str]] = field(default_factory=dict)  # fragment -> the tables it reads
    dynamic_filters: list[Any] = field(default_factory=list)  # gateway.planner.plan.DynamicFilter


DYNAMIC_FILTER_TEXT = re.compile(r"^(?P<probe>\w+)\.(?P<probe_column>\S+) IN \(keys of (?P<build>\w+)\.(?P<build_column>\S+)\)")


def parse_explain(rows: list[dict[str, str]]) -> FloorPlan:
    from gateway.planner.plan import DynamicFilter

    fragments: list[tuple[str, str, str]] = []
    products: dict[str, list[str]] = {}
    filters: list[Any] = []
    residual: str | None = None
    passthrough = False
    for row in rows:
        step = row["step"]
        if step.startswith("fragment "):
            name = step.split()[1]
            fragments.append((name, row["source"].split(":", 1)[0], row["sql"]))
            # "tpch.customer@1.0.0, tpch.nation@1.0.0" -> ["customer", "nation"]
            products[name] = [p.strip().split("@")[0].rpartition(".")[2] for p in row["products"].split(",") if p.strip()]
        elif step == "dynamic filter":
            match = DYNAMIC_FILTER_TEXT.match(row["sql"])
            if match is None:
                raise ValueError(f"cannot read EXPLAIN's dynamic filter: {row['sql']}")
            filters.append(DynamicFilter(match["build"], match["build_column"], match["probe"], match["probe_column"]))
        elif step == "residual":
            residual = row["sql"]
        elif step in ("result", "passthrough"):
            passthrough = True
    if not passthrough and residual is None:
        raise ValueError(f"EXPLAIN has neither a residual nor a passthrough step: {rows}")
    if passthrough and len(fragments) != 1:
        raise ValueError(f"a passthrough plan should have one fragment, EXPLAIN shows {len(fragments)}")
    return FloorPlan(fragments, None if passthrough else residual, products, filters)


DUCKDB_SETTINGS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def source_class(kind: str) -> Any:
    """The gateway's connector class for a source kind: its dialect and capabilities (the
    IN-list limit of dynamic filters), as ``filtered_sql`` and the filter choice read them."""
    from connectors import connector_class

    return connector_class(kind)


class FloorRunner:
    """The gateway's own fragments run straight on their sources, then its residual in DataFusion.

    Everything the gateway must do anyway, nothing else: each source is read with its own
    client over a pooled connection (one per concurrent fragment, as the gateway pools them),
    fragments run concurrently, results are cast to the contract types (as the gateway
    conforms them), and the residual query runs in a fresh DataFusion context configured like
    the gateway's engine.

    Dynamic filters are decided and written by the gateway's own functions
    (``gateway.engine.choose_dynamic_filters`` and ``filtered_sql``) from the same estimates the
    gateway uses (each fragment's largest product's row count, counted once per table on its
    source): a chosen probe fragment waits for its build fragments, then runs restricted to
    their keys (or as is, when a build returns too many keys).
    """

    def __init__(
        self, pg_uri: str, pg_schema: str, sqlite_path: Path, parquet_dir: Path, split: dict[str, list[str]],
        memory_limit: int,
    ) -> None:
        import duckdb

        self.pg_uri = pg_uri
        self.pg_schema = pg_schema
        self.sqlite_path = sqlite_path
        self.parquet_dir = parquet_dir
        self.source_of = source_of(split)
        self.memory_limit = memory_limit
        self.duckdb = duckdb.connect(":memory:", config=dict(DUCKDB_SETTINGS))
        self._idle: dict[str, list[Any]] = {}
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        self._row_counts: dict[str, int] = {}
        self.last_filters: list[dict[str, Any]] = []  # what the last recorded run did with its dynamic filters
        self.last_rows: dict[str, int] = {}  # rows each fragment returned in that run (after filtering)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="floor")

    def _connect(self, kind: str) -> Any:
        if kind == "postgres":
            import adbc_driver_postgresql.dbapi as pg

            return pg.connect(self.pg_uri, autocommit=True).cursor()
        if kind == "sqlite":
            import adbc_driver_sqlite
            import adbc_driver_sqlite.dbapi as sq

            cursor = sq.connect(f"file:{self.sqlite_path}?mode=ro", autocommit=True).cursor()
            cursor.adbc_statement.set_options(**{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: "65536"})
            return cursor
        if kind in ("parquet", "duckdb"):
            return self.duckdb.cursor()
        raise ValueError(f"the floor cannot run fragments on a '{kind}' source")

    def fetch(self, kind: str, sql: str) -> pa.Table:
        """One fragment on a pooled connection of its source (opened by the warm-up run)."""
        with self._lock:
            idle = self._idle.setdefault(kind, [])
            conn = idle.pop() if idle else None
        if conn is None:
            conn = self._connect(kind)
            with self._lock:
                self._opened.append(conn)
        try:
            if kind in ("parquet", "duckdb"):
                table = conn.sql(sql).to_arrow_reader(65_536).read_all()  # as the gateway streams it
            else:
                conn.execute(sql)
                table = conn.fetch_arrow_table()
        finally:
            with self._lock:
                self._idle[kind].append(conn)
        return conform(table)

    def row_count(self, table: str) -> int:
        """Rows in one table, counted on its source once (the gateway caches its counts too)."""
        if table not in self._row_counts:
            kind = self.source_of[table]
            if kind == "postgres":
                sql = f"SELECT count(*) AS n FROM {self.pg_schema}.{table}"
            elif kind == "sqlite":
                sql = f"SELECT count(*) AS n FROM {table}"
            else:
                path = str(self.parquet_dir / f"{table}.parquet").replace("'", "''")
                sql = f"SELECT count(*) AS n FROM read_parquet('{path}')"
            self._row_counts[table] = int(self.fetch(kind, sql).column(0)[0].as_py())
        return self._row_counts[table]

    def estimates(self, plan: FloorPlan) -> dict[str, int | None]:
        """Rows per fragment as the gateway estimates them: its largest product's row count."""
        return {
            name: max(self.row_count(t) for t in plan.products[name]) if plan.products.get(name) else None
            for name, _, _ in plan.fragments
        }

    def run(self, plan: FloorPlan, record: bool = False) -> pa.Table:
        """The plan's answer; ``record`` (the untimed warm-up) notes the dynamic filters' key counts
        and each fragment's rows in ``last_filters`` / ``last_rows``."""
        from gateway.engine import MAX_FILTER_KEYS, choose_dynamic_filters, filtered_sql

        kinds = {name: kind for name, kind, _ in plan.fragments}
        probes = (
            choose_dynamic_filters(
                plan.dynamic_filters,
                self.estimates(plan),
                exact=frozenset(name for name, _, sql in plan.fragments if " WHERE " not in sql),
                key_limits={name: source_class(kind).capabilities.max_in_list for name, kind in kinds.items()},
            )
            if plan.dynamic_filters
            else {}
        )
        report: list[dict[str, Any]] = []

        def probe(name: str, sql: str) -> pa.Table:
            filters = probes[name]
            builds = {f.build: futures[f.build].result() for f in filters}  # wait for the keys
            fragment = SimpleNamespace(sql=sql, connector=source_class(kinds[name]))
            text = filtered_sql(fragment, filters, builds)  # type: ignore[arg-type]
            if not record:
                return self.fetch(kinds[name], text or sql)
            keys = {f.build: len(pc.unique(builds[f.build].column(f.build_column).drop_null())) for f in filters}
            for f in filters:
                report.append({
                    "filter": f"{f.probe}.{f.probe_column} IN (keys of {f.build}.{f.build_column})",
                    "keys": keys[f.build],
                    "applied": text is not None
                    and keys[f.build] <= min(MAX_FILTER_KEYS, source_class(kinds[name]).capabilities.max_in_list),
                })
            return self.fetch(kinds[name], text or sql)

        futures: dict[str, Any] = {}
        for name, kind, sql in plan.fragments:  # builds and unfiltered fragments first
            if name not in probes:
                futures[name] = self.pool.submit(self.fetch, kind, sql)
        for name, _, sql in plan.fragments:  # probes never build (no chains), so no waiting cycles
            if name in probes:
                futures[name] = self.pool.submit(probe, name, sql)
        tables = {name: futures[name].result() for name, _, _ in plan.fragments}
        if record:
            self.last_filters = report
            self.last_rows = {name: table.num_rows for name, table in tables.items()}
        if plan.residual is None:
            return next(iter(tables.values()))
        from datafusion import RuntimeEnvBuilder, SessionConfig, SessionContext

        runtime = RuntimeEnvBuilder().with_fair_spill_pool(self.memory_limit).with_disk_manager_os()
        config = SessionConfig().with_target_partitions(2).with_information_schema(False)
        ctx = SessionContext(config, runtime)
        for name, table in tables.items():
            ctx.from_arrow(table, name=name)
        return ctx.sql(plan.residual).to_arrow_table()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for conn in self._opened:
            with contextlib.suppress(Exception):
                conn.close()
                if hasattr(conn, "connection"):
                    conn.connection.close()
        self.duckdb.close()


def conform(table: pa.Table) -> pa.Table:
    """Cast a source's result to the contract types, found by column name (``alias__column``
    for columns of a pushed join); PostgreSQL ``numeric`` arrives opaque and becomes decimal."""
    columns, fields, changed = [], [], False
    for name, column in zip(table.column_names, table.columns):
        target = CONTRACT_TYPES.get(name) or CONTRACT_TYPES.get(name.rpartition("__")[2])
        if isinstance(column.type, pa.OpaqueType):
            column = pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type)
            changed = True
            if target is None:
                target = pa.float64()
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
            changed = True
        if target is not None and column.type != target:
            if pa.types.is_decimal(target) and pa.types.is_floating(column.type):
                column = pc.round(column, target.scale).cast(target, safe=False)
            else:
                column = column.cast(target)
            changed = True
        columns.append(column)
        fields.append(pa.field(name, column.type))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields)) if changed else table


class DuckDBRunner:
    """DuckDB in-process over all eight tables as Parquet: schema ``tpch`` of views."""

    def __init__(self, parquet_dir: Path) -> None:
        import duckdb

        self.con = duckdb.connect(":memory:", config=dict(DUCKDB_SETTINGS))
        self.con.execute("CREATE SCHEMA tpch")
        for table in CONTRACTS:
            path = str(parquet_dir / f"{table}.parquet").replace("'", "''")
            self.con.execute(f"CREATE VIEW tpch.{table} AS SELECT * FROM read_parquet('{path}')")

    def run(self, sql: str) -> pa.Table:
        return self.con.sql(sql).to_arrow_table()

    def close(self) -> None:
        self.con.close()


# --- checking answers --------------------------------------------------------------------------


def _normal(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime) and value.time() == dt.time(0):
        return value.date()
    return value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    return a == b


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    def key(v: Any) -> tuple[int, Any]:
        if v is None:
            return (0, 0)
        if isinstance(v, (int, float)):
            return (1, float(f"{v:.6g}"))
        return (2, str(v))

    return tuple(key(v) for v in row)


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [[_normal(v) for v in c.to_pylist()] for c in table.columns]
    return list(zip(*columns))


def compare(actual: pa.Table, expected: pa.Table, ordered: bool) -> tuple[bool, str]:
    """(match, detail): same row count and columns, values equal (numerics within 1e-6
    relative); sorted first when the query has no ORDER BY."""
    if actual.num_rows != expected.num_rows:
        return False, f"row count {actual.num_rows} vs {expected.num_rows}"
    if actual.num_columns != expected.num_columns:
        return False, f"column count {actual.num_columns} vs {expected.num_columns}"
    a_rows, e_rows = _rows(actual), _rows(expected)

    def first_difference(a: list[tuple[Any, ...]], e: list[tuple[Any, ...]]) -> str:
        for i, (row_a, row_e) in enumerate(zip(a, e)):
            for j, (va, ve) in enumerate(zip(row_a, row_e)):
                if not _equal(va, ve):
                    return f"row {i}, column {expected.column_names[j]}: {va!r} vs {ve!r}"
        return ""

    if not ordered:
        a_rows.sort(key=_sort_key)
        e_rows.sort(key=_sort_key)
    difference = first_difference(a_rows, e_rows)
    if not difference:
        return True, ""
    if ordered:  # ORDER BY keys with ties may legitimately order the tied rows differently
        if not first_difference(sorted(a_rows, key=_sort_key), sorted(e_rows, key=_sort_key)):
            return True, "same rows; tied rows in another order"
    return False, difference


# --- timing ------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return (time.perf_counter() - started) * 1000, result


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class QueryResult:
    query: str
    sql: str
    gateway_ms: list[float] = field(default_factory=list)
    floor_ms: list[float] = field(default_factory=list)
    duckdb_ms: list[float] = field(default_factory=list)
    rows: int | None = None
    match: bool | None = None
    match_detail: str = ""
    floor_match: bool | None = None
    floor_match_detail: str = ""
    explain: list[dict[str, str]] = field(default_factory=list)
    fragments: list[dict[str, Any]] = field(default_factory=list)
    dynamic_filters: list[dict[str, Any]] = field(default_factory=list)  # those the floor chose, as it ran them
    errors: dict[str, str] = field(default_factory=dict)

    def medians(self) -> dict[str, float | None]:
        return {"gateway": median(self.gateway_ms), "floor": median(self.floor_ms), "duckdb": median(self.duckdb_ms)}

    def ratio(self, other: str) -> float | None:
        m = self.medians()
        return m["gateway"] / m[other] if m["gateway"] and m[other] else None


def _short(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text[:2000]}"


def has_order_by(sql: str) -> bool:
    import sqlglot

    return sqlglot.parse_one(sql, read="postgres").args.get("order") is not None


def benchmark_query(
    name: str, sql: str, repeat: int, gateway: GatewayRunner, floor: FloorRunner, duck: DuckDBRunner
) -> QueryResult:
    result = QueryResult(name, sql)
    plan: FloorPlan | None = None
    try:
        result.explain = gateway.explain(sql)
        plan = parse_explain(result.explain)
    except Exception as err:  # noqa: BLE001
        result.errors["explain"] = _short(err)
    if plan is not None:
        result.fragments = [
            {"name": n, "source": k, "products": plan.products.get(n, []), "sql": s} for n, k, s in plan.fragments
        ]

    runners: dict[str, Callable[[], pa.Table]] = {
        "gateway": lambda: gateway.run(sql),
        "duckdb": lambda: duck.run(sql),
    }
    if plan is not None:
        runners["floor"] = lambda: floor.run(plan)
    answers: dict[str, pa.Table] = {}
    warmups = dict(runners)
    if plan is not None:
        warmups["floor"] = lambda: floor.run(plan, record=True)  # notes the dynamic filters it applied
    for label, runner in warmups.items():  # warm-up, and the answers we check
        try:
            _, answers[label] = timed(runner)
        except Exception as err:  # noqa: BLE001
            result.errors[label] = _short(err)
    live = [label for label in runners if label in answers]
    for _ in range(repeat):  # interleaved, so drift in the machine's load hits all three alike
        for label in live:
            if label in result.errors:
                continue
            try:
                ms, _ = timed(runners[label])
                getattr(result, f"{label}_ms").append(ms)
            except Exception as err:  # noqa: BLE001
                result.errors[label] = _short(err)

    if plan is not None and "floor" in answers:
        result.dynamic_filters = floor.last_filters
        with contextlib.suppress(Exception):
            estimates = floor.estimates(plan)
            for fragment in result.fragments:
                fragment["estimated_rows"] = estimates.get(fragment["name"])
        filtered = {d["filter"].split(".")[0] for d in floor.last_filters if d["applied"]}
        for fragment, (fname, kind, fsql) in zip(result.fragments, plan.fragments):
            fragment["rows"] = floor.last_rows.get(fname)
            if fname in filtered:  # rows after the dynamic filter; and without it
                with contextlib.suppress(Exception):
                    fragment["rows_unfiltered"] = floor.fetch(kind, fsql).num_rows
    ordered = has_order_by(sql)
    if "duckdb" in answers:
        reference = answers["duckdb"]
        if "gateway" in answers:
            result.rows = answers["gateway"].num_rows
            result.match, result.match_detail = compare(answers["gateway"], reference, ordered)
        if "floor" in answers:
            result.floor_match, result.floor_match_detail = compare(answers["floor"], reference, ordered)
    return result


# --- small-query overhead ----------------------------------------------------------------------

COMMAND_STATEMENT_QUERY = "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def statement_query_command(sql: str) -> bytes:
    """``Any{type_url, value=CommandStatementQuery{query}}`` as protobuf bytes, built by hand."""
    inner = _length_delimited(1, sql.encode())
    return _length_delimited(1, COMMAND_STATEMENT_QUERY.encode()) + _length_delimited(2, inner)


SMALL_QUERY = "SELECT * FROM tpch.region WHERE r_regionkey = 1"


def small_query_overhead(uri: str, pg_uri: str, pg_schema: str, runs: int) -> dict[str, Any]:
    import adbc_driver_flightsql.dbapi as flightsql
    import adbc_driver_postgresql.dbapi as pg
    import pyarrow.flight as flight

    client = flight.FlightClient(uri)
    descriptor = flight.FlightDescriptor.for_command(statement_query_command(SMALL_QUERY))

    def via_flight() -> pa.Table:
        info = client.get_flight_info(descriptor)
        tables = [client.do_get(endpoint.ticket).read_all() for endpoint in info.endpoints]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    adbc_conn = flightsql.connect(uri, autocommit=True)
    adbc_cursor = adbc_conn.cursor()

    def via_adbc() -> pa.Table:
        adbc_cursor.execute(SMALL_QUERY)
        return adbc_cursor.fetch_arrow_table()

    pg_conn = pg.connect(pg_uri, autocommit=True)
    pg_cursor = pg_conn.cursor()
    direct_sql = SMALL_QUERY.replace("tpch.region", f"{pg_schema}.region")

    def direct() -> pa.Table:
        pg_cursor.execute(direct_sql)
        return pg_cursor.fetch_arrow_table()

    measured: dict[str, list[float]] = {}
    rows: dict[str, int] = {}
    try:
        for label, fn in (("pyarrow_flight", via_flight), ("adbc_dbapi", via_adbc), ("postgres_direct", direct)):
            for _ in range(10):
                fn()
            times = []
            for _ in range(runs):
                ms, table = timed(fn)
                times.append(ms)
            rows[label] = table.num_rows
            measured[label] = times
    finally:
        for closeable in (adbc_cursor, adbc_conn, pg_cursor, pg_conn, client):
            with contextlib.suppress(Exception):
                closeable.close()
    medians = {label: statistics.median(times) for label, times in measured.items()}
    base = medians["postgres_direct"]
    return {
        "query": SMALL_QUERY,
        "runs": runs,
        "rows": rows,
        "median_ms": medians,
        "p90_ms": {label: statistics.quantiles(t, n=10)[-1] for label, t in measured.items()},
        "overhead_ms": {"pyarrow_flight": medians["pyarrow_flight"] - base, "adbc_dbapi": medians["adbc_dbapi"] - base},
        "target_pyarrow_flight_overhead_ms": 5.0,
    }


# --- reporting ---------------------------------------------------------------------------------

TARGET_FLOOR = 1.25
TARGET_DUCKDB = 2.0
TARGET_DUCKDB_COUNT = 6


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _ratio(value: float | None, target: float) -> str:
    if value is None:
        return "—"
    colour = "green" if value <= target else "red"
    return f"[{colour}]{value:.2f}[/{colour}]"


def print_results(results: list[QueryResult], scale: float, repeat: int, split: str) -> None:
    table = Table(title=f"Federated TPC-H {scale_label(scale)}, split {split}: median of {repeat} runs after a warm-up (ms)")
    for column in ("query", "gateway ms", "floor ms", "duckdb ms", "gateway/floor", "gateway/duckdb", "rows", "match"):
        table.add_column(column, justify="left" if column in ("query", "match") else "right")
    for r in results:
        m = r.medians()
        if r.match is None:
            match = "[red]error[/red]"
        elif r.match:
            match = "[green]yes[/green]" + (" (ties)" if r.match_detail else "")
        else:
            match = "[bold red]MISMATCH[/bold red]"
        table.add_row(
            r.query, _ms(m["gateway"]), _ms(m["floor"]), _ms(m["duckdb"]),
            _ratio(r.ratio("floor"), TARGET_FLOOR), _ratio(r.ratio("duckdb"), TARGET_DUCKDB),
            "—" if r.rows is None else str(r.rows), match,
        )
    console.print(table)
    for r in results:
        for label, error in r.errors.items():
            console.print(f"[bold red]{r.query} {label} failed:[/bold red] {error}", markup=True)
        if r.match is False:
            console.print(f"[bold red]!!! {r.query}: gateway answer differs from DuckDB: {r.match_detail}[/bold red]")
        if r.floor_match is False:
            console.print(f"[yellow]{r.query}: floor answer differs from DuckDB: {r.floor_match_detail}[/yellow]")


def target_summary(results: list[QueryResult]) -> dict[str, Any]:
    floor_ratios = {r.query: r.ratio("floor") for r in results}
    duck_ratios = {r.query: r.ratio("duckdb") for r in results}
    floor_missed = [q for q, v in floor_ratios.items() if v is None or v > TARGET_FLOOR]
    duck_met = [q for q, v in duck_ratios.items() if v is not None and v <= TARGET_DUCKDB]
    needed = math.ceil(TARGET_DUCKDB_COUNT * len(results) / 8)  # 6 of 8, pro rata for a subset
    return {
        "gateway_over_floor_max": TARGET_FLOOR,
        "gateway_over_floor_met": not floor_missed,
        "gateway_over_floor_missed_on": floor_missed,
        "gateway_over_duckdb_max": TARGET_DUCKDB,
        "gateway_over_duckdb_needed_queries": needed,
        "gateway_over_duckdb_met_on": duck_met,
        "gateway_over_duckdb_met": len(duck_met) >= needed,
        "all_answers_match": all(r.match for r in results),
    }


def print_targets(summary: dict[str, Any], small: dict[str, Any] | None) -> None:
    def mark(ok: bool) -> str:
        return "[green]MET[/green]" if ok else "[bold red]MISSED[/bold red]"

    missed = summary["gateway_over_floor_missed_on"]
    console.print(
        f"target gateway/floor <= {TARGET_FLOOR} on every query: {mark(summary['gateway_over_floor_met'])}"
        + (f" (missed on {', '.join(missed)})" if missed else "")
    )
    console.print(
        f"target gateway/duckdb <= {TARGET_DUCKDB} on >= {summary['gateway_over_duckdb_needed_queries']} queries: "
        f"{mark(summary['gateway_over_duckdb_met'])} ({len(summary['gateway_over_duckdb_met_on'])} met)"
    )
    console.print(f"all gateway answers match DuckDB: {mark(summary['all_answers_match'])}")
    if small:
        m, o = small["median_ms"], small["overhead_ms"]
        console.print(
            f"\nsmall query [{small['query']}], median of {small['runs']} round trips:\n"
            f"  pyarrow.flight (GetFlightInfo + DoGet)  {m['pyarrow_flight']:.2f} ms  overhead {o['pyarrow_flight']:+.2f} ms  "
            f"target < 5 ms: {mark(o['pyarrow_flight'] < 5.0)}\n"
            f"  ADBC DB-API cursor                      {m['adbc_dbapi']:.2f} ms  overhead {o['adbc_dbapi']:+.2f} ms\n"
            f"  PostgreSQL via ADBC, in-process         {m['postgres_direct']:.2f} ms  (baseline)"
        )


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("pyarrow", "datafusion", "duckdb", "sqlglot", "adbc-driver-flightsql", "adbc-driver-postgresql",
                    "adbc-driver-sqlite", "tpchgen-cli"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": memory,
        "packages": versions,
    }


def git_info() -> dict[str, Any]:
    """HEAD, and what in the working tree differs from it (the code that actually ran)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    changes = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changes), "uncommitted": changes[:50]}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_chart(path: Path, results: list[QueryResult], scale: float, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels = [r.query for r in results]
    series = [("gateway", "#d62728"), ("floor", "#1f77b4"), ("duckdb", "#7f7f7f")]
    width = 0.27
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, (name, colour) in enumerate(series):
        values = [r.medians()[name] or 0 for r in results]
        positions = [x + (i - 1) * width for x in range(len(results))]
        bars = ax.bar(positions, values, width, label={"duckdb": "duckdb-all-in-one"}.get(name, name), color=colour)
        for bar, value in zip(bars, values):
            if value:
                ax.annotate(f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(results)), labels)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylabel("median time (ms, log scale)")
    ax.set_title(f"Federated TPC-H {scale_label(scale)} ({split} split): meshgate vs floor vs DuckDB all-in-one")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------


def load_queries(numbers: list[int]) -> list[tuple[str, str]]:
    queries = []
    for n in numbers:
        path = QUERY_DIR / f"q{n}.sql"
        if not path.exists():
            raise SystemExit(f"no query file {path} (available: {sorted(p.stem for p in QUERY_DIR.glob('q*.sql'))})")
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")]
        queries.append((f"Q{n}", "\n".join(lines).strip().rstrip(";")))
    return queries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-uri", help="PostgreSQL for customer/nation/region (default: a throw-away server)")
    parser.add_argument("--scale", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query after one warm-up (default 5)")
    parser.add_argument("--queries", default=DEFAULT_QUERIES, help=f"TPC-H query numbers (default {DEFAULT_QUERIES})")
    parser.add_argument("--split", choices=sorted(SPLITS), default=DEFAULT_SPLIT,
                        help=f"which tables live in which source (default {DEFAULT_SPLIT}; see the module docstring)")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data",
                        help="generated data (shared by the splits) and, in <data-dir>/<split>/, descriptors and registry")
    parser.add_argument("--small-query-runs", type=int, default=300, help="round trips for the small query (default 300)")
    parser.add_argument("--output", type=Path, help="JSON results file (default results/federated_tpch_<split>.json)")
    parser.add_argument("--chart", type=Path, help="PNG chart file (default results/federated_tpch_<split>.png)")
    args = parser.parse_args(argv)
    args.output = args.output or RESULTS_DIR / f"federated_tpch_{args.split}.json"
    args.chart = args.chart or RESULTS_DIR / f"federated_tpch_{args.split}.png"
    if args.small_query_runs < 200:
        parser.error("--small-query-runs must be at least 200")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the gateway and a throw-away PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    queries = load_queries([int(q) for q in args.queries.split(",") if q.strip()])
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ignore = data_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# generated by benchmarks/federated_tpch.py\n*\n")
    scale_dir = data_dir / scale_label(args.scale)
    parquet_dir = scale_dir / "parquet"
    split = SPLITS[args.split]
    sqlite_path = sqlite_file(scale_dir, split["sqlite"])
    run_dir = data_dir / args.split  # descriptors, registry, gateway home and log of this split
    run_dir.mkdir(parents=True, exist_ok=True)
    pg_schema = "tpch_" + scale_label(args.scale).replace(".", "_")

    git = git_info()  # the code the gateway runs: sampled before it starts, as others may commit meanwhile
    console.rule("meshgate federated TPC-H")
    console.print(f"scale factor {args.scale:g}, {args.repeat} timed runs per query, queries {args.queries}")
    console.print(f"split {args.split}: " + "; ".join(f"[bold]{kind}[/bold] {', '.join(tables)}" for kind, tables in split.items()))
    generate_parquet(parquet_dir, args.scale)
    build_sqlite(sqlite_path, parquet_dir, split["sqlite"])

    with contextlib.ExitStack() as stack:
        pg_uri = args.pg_uri or stack.enter_context(throwaway_postgres())
        load_postgres(pg_uri, pg_schema, parquet_dir, split["postgres"])
        descriptor_uri, pg_env = descriptor_pg_uri(pg_uri)
        products_dir = run_dir / "products"
        write_descriptors(products_dir, split, descriptor_uri, pg_schema, sqlite_path, parquet_dir)
        uri = stack.enter_context(gateway_process(run_dir, products_dir, pg_env, data_dir))

        gateway = GatewayRunner(uri)
        stack.callback(gateway.close)
        memory_limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
        floor = FloorRunner(pg_uri, pg_schema, sqlite_path, parquet_dir, split, memory_limit)
        stack.callback(floor.close)
        duck = DuckDBRunner(parquet_dir)
        stack.callback(duck.close)

        results = []
        for name, sql in queries:
            console.print(f"running {name} ...")
            result = benchmark_query(name, sql, args.repeat, gateway, floor, duck)
            m = result.medians()
            console.print(
                f"  gateway {_ms(m['gateway'])} ms, floor {_ms(m['floor'])} ms, duckdb {_ms(m['duckdb'])} ms"
                + (f"  [red]errors: {', '.join(result.errors)}[/red]" if result.errors else "")
            )
            for d in result.dynamic_filters:
                console.print(f"  dynamic filter {d['filter']}: {d['keys']:,} keys, {'applied' if d['applied'] else 'not applied'}")
            results.append(result)

        console.print(f"small-query overhead ({args.small_query_runs} round trips each) ...")
        small: dict[str, Any] | None
        try:
            small = small_query_overhead(uri, pg_uri, pg_schema, args.small_query_runs)
        except Exception as err:  # noqa: BLE001
            console.print(f"[bold red]small-query measurement failed:[/bold red] {_short(err)}")
            small = {"error": _short(err)}

    console.print()
    print_results(results, args.scale, args.repeat, args.split)
    summary = target_summary(results)
    print_targets(summary, small if small and "error" not in small else None)
    console.print(f"split {args.split}: " + "; ".join(f"{kind}: {', '.join(tables)}" for kind, tables in split.items()))

    payload = {
        "benchmark": "federated_tpch",
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git,
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine_info(),
        "scale_factor": args.scale,
        "repeat": args.repeat,
        "split_name": args.split,
        "split": {kind: {"tables": tables, "how": split_notes(split)[kind]} for kind, tables in split.items()},
        "postgres": "throw-away server (scripts/pg-test-server)" if not args.pg_uri else "given by --pg-uri",
        "columns": {
            "gateway_ms": "median through meshgate serve with the ADBC Flight SQL driver (fetch_arrow_table)",
            "floor_ms": "median of the gateway's own EXPLAIN fragments run directly on their sources "
                        "(concurrently, with the dynamic filters the gateway's engine would apply) plus its "
                        "residual query in DataFusion, in-process",
            "duckdb_ms": "median of DuckDB in-process over all eight tables as Parquet",
        },
        "queries": [
            {
                "query": r.query,
                "sql": r.sql,
                "median_ms": r.medians(),
                "runs_ms": {"gateway": r.gateway_ms, "floor": r.floor_ms, "duckdb": r.duckdb_ms},
                "gateway_over_floor": r.ratio("floor"),
                "gateway_over_duckdb": r.ratio("duckdb"),
                "rows": r.rows,
                "match": r.match,
                "match_detail": r.match_detail,
                "floor_match": r.floor_match,
                "floor_match_detail": r.floor_match_detail,
                "fragments": r.fragments,
                "floor_dynamic_filters": r.dynamic_filters,
                "explain": r.explain,
                "errors": r.errors,
            }
            for r in results
        ],
        "targets": summary,
        "small_query": small,
    }
    write_json(args.output, payload)
    write_chart(args.chart, results, args.scale, args.split)
    console.print(f"\nwrote {args.output} and {args.chart}")
    return 0 if summary["all_answers_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
