"""Python clients against the live mesh, over a real socket: the ADBC Flight SQL driver's DB-API,
``pyarrow.flight`` with hand-packed Flight SQL commands, pandas ``read_sql`` and polars
``read_database`` over an ADBC connection, SQLAlchemy through the published ``sqlalchemy-adbc``
dialect, and ADBC streaming of a result many times larger than the gateway's memory limit while
both processes' peak memory is measured.

The gateway authenticates (users file, Basic handshake for a bearer token); answers are compared
with PostgreSQL's over the same data.  Each test records its result for the README's
compatibility table (tests/clients/compat.py).
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib.metadata
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import gateway
from gateway.auth import Authenticator
from gateway.flight.server import serve
from gateway.users import UsersFile, add_user
from tests.clients.compat import check
from tests.conftest import find_free_port
from tests.mesh import OPEN_POLICIES, LiveMesh, oracle_answer

pytestmark = pytest.mark.postgres

USER, PASSWORD = "py_analyst", "py-Pw-1"
ORDERS_OF = ("SELECT order_id, order_ts, total_amount, status, currency FROM orders.orders "
             "WHERE customer_id = {} ORDER BY order_id")
WIDE = ("SELECT c.customer_id, c.name, c.email, c.signup_date, c.lifetime_value, c.is_active, o.order_ts, "
        "s.weight_kg, s.delivered_on FROM customers.customers c JOIN orders.orders o ON o.customer_id = c.customer_id "
        "JOIN shipping.shipments s ON s.order_id = o.order_id ORDER BY s.shipment_id LIMIT 200")


def version_of(distribution: str) -> str:
    return importlib.metadata.version(distribution)


@pytest.fixture(scope="module")
def port(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    users = tmp_path_factory.mktemp("py-users") / "users.yaml"
    add_user(users, USER, PASSWORD, ["analyst"], {"region": "DE"})
    with serve(live_mesh.service, "127.0.0.1", 0, authenticator=Authenticator(UsersFile(users))) as server:
        yield server.port


def connect(port: int) -> flightsql.Connection:
    return flightsql.connect(f"grpc://127.0.0.1:{port}", db_kwargs={"username": USER, "password": PASSWORD},
                             autocommit=True)


def customer_with_orders(oracle_uri: str) -> int:
    return oracle_answer(oracle_uri, "SELECT customer_id FROM orders.orders GROUP BY customer_id "
                                     "ORDER BY count(*) DESC, 1 LIMIT 1")[2][0][0]


def same(expected: list[tuple], actual: list[tuple], what: str) -> None:
    """Exactly equal rows (decimals by value, timestamps as instants, floats bit for bit)."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, PostgreSQL has {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert tuple(e) == tuple(a), f"{what}: row {i}: got {a!r}, PostgreSQL {e!r}"


# --- ADBC DB-API ------------------------------------------------------------------------------


def test_adbc_dbapi(port: int, live_mesh: LiveMesh) -> None:
    customer = customer_with_orders(live_mesh.oracle_uri)
    sql = ORDERS_OF.format("?")
    with check("Python ADBC: adbc-driver-flightsql", adbc_driver_flightsql.__version__,
               "DB-API: parameters, fetchall/fetch_arrow_table equal PostgreSQL, adbc_get_info, get_table_types, "
               "get_objects at every depth, get_table_schema, executemany refused cleanly"):
        with connect(port) as conn, conn.cursor() as cur:
            cur.execute(sql, (customer,))
            same(oracle_answer(live_mesh.oracle_uri, sql, (customer,))[2], cur.fetchall(), "fetchall")
            cur.execute(WIDE)
            table = cur.fetch_arrow_table()
            same(oracle_answer(live_mesh.oracle_uri, WIDE)[2], [tuple(r.values()) for r in table.to_pylist()], "wide")
            assert table.schema.field("lifetime_value").type == pa.decimal128(12, 2)
            assert table.schema.field("signup_date").type == pa.date32()

            info = conn.adbc_get_info()
            assert info["vendor_name"] == "meshgate" and info["vendor_version"] == gateway.__version__
            assert "TABLE" in conn.adbc_get_table_types()

            depths = {}
            for depth in ("catalogs", "db_schemas", "tables", "columns", "all"):
                tree = conn.adbc_get_objects(depth=depth, db_schema_filter="orders").read_all().to_pylist()
                depths[depth] = tree
                assert [c["catalog_name"] for c in tree] == ["mesh"], depth
            assert depths["catalogs"][0]["catalog_db_schemas"] in (None, [])
            assert [s["db_schema_name"] for s in depths["db_schemas"][0]["catalog_db_schemas"]] == ["orders"]
            tables = {t["table_name"]: t for t in depths["all"][0]["catalog_db_schemas"][0]["db_schema_tables"]}
            assert {"orders", "order_items"} <= set(tables)
            assert [c["column_name"] for c in tables["orders"]["table_columns"]] == [
                "order_id", "customer_id", "order_ts", "status", "total_amount", "currency"]
            assert all(not t["table_columns"] for t in
                       depths["tables"][0]["catalog_db_schemas"][0]["db_schema_tables"])

            schema = conn.adbc_get_table_schema("orders", db_schema_filter="orders")
            assert schema.field("total_amount").type == pa.decimal128(12, 2)
            assert schema.field("order_ts").type == pa.timestamp("us", "UTC")

            with pytest.raises(flightsql.Error) as refused:
                cur.executemany(sql, [(customer,), (customer + 1,)])
            assert "executemany is not supported" in str(refused.value), refused.value
            cur.execute("SELECT 1 AS still_usable")
            assert cur.fetchall() == [(1,)]


# --- pyarrow.flight with hand-packed Flight SQL commands ---------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: bytes | str | int | bool) -> bytes:
    """One protobuf field: length-delimited for bytes/str, varint for int/bool."""
    if isinstance(value, (bool, int)):
        return _varint(number << 3) + _varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def command(message: str, *fields: bytes) -> bytes:
    """A Flight SQL command packed in google.protobuf.Any, as the spec sends it, written by hand
    (no generated bindings: pyarrow ships none)."""
    return _field(1, f"type.googleapis.com/arrow.flight.protocol.sql.{message}") + _field(2, b"".join(fields))


def fetch(client: flight.FlightClient, options: flight.FlightCallOptions, cmd: bytes) -> pa.Table:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), options)
    tables = [client.do_get(endpoint.ticket, options).read_all() for endpoint in info.endpoints]
    return pa.concat_tables(tables) if tables else info.schema.empty_table()


def test_pyarrow_flight_with_flight_sql_commands(port: int, live_mesh: LiveMesh) -> None:
    customer = customer_with_orders(live_mesh.oracle_uri)
    sql = ORDERS_OF.format(customer)
    with check("pyarrow.flight (hand-packed Flight SQL commands)", pa.__version__,
               "authenticate_basic_token, CommandStatementQuery (GetFlightInfo/DoGet) equal PostgreSQL, GetSchema, "
               "GetSqlInfo, GetTables with schemas and remarks, GetPrimaryKeys, GetXdbcTypeInfo"):
        with flight.connect(f"grpc://127.0.0.1:{port}") as client:
            header = client.authenticate_basic_token(USER, PASSWORD)
            options = flight.FlightCallOptions(headers=[header])

            table = fetch(client, options, command("CommandStatementQuery", _field(1, sql)))
            same(oracle_answer(live_mesh.oracle_uri, sql)[2], [tuple(r.values()) for r in table.to_pylist()], sql)
            schema = client.get_schema(flight.FlightDescriptor.for_command(command("CommandStatementQuery", _field(1, sql))),
                                       options).schema
            assert schema.equals(table.schema)

            info = fetch(client, options, command("CommandGetSqlInfo", _field(1, 0), _field(1, 1)))  # name, version
            values = {row["info_name"]: row["value"] for row in info.to_pylist()}
            assert values == {0: "meshgate", 1: gateway.__version__}

            tables = fetch(client, options, command("CommandGetTables", _field(2, "orders"), _field(3, "orders"),
                                                    _field(5, True)))
            (row,) = tables.to_pylist()
            assert (row["catalog_name"], row["db_schema_name"], row["table_name"], row["table_type"]) == (
                "mesh", "orders", "orders", "TABLE")
            table_schema = pa.ipc.read_schema(pa.py_buffer(row["table_schema"]))
            remarks = {f.name: (f.metadata or {}).get(b"ARROW:FLIGHT:SQL:REMARKS") for f in table_schema}
            assert remarks["order_id"] == b"Order number", remarks  # the contract's column description
            assert (table_schema.metadata or {}).get(b"ARROW:FLIGHT:SQL:REMARKS")  # the product's description

            keys = fetch(client, options, command("CommandGetPrimaryKeys", _field(2, "orders"), _field(3, "order_items")))
            assert sorted((r["column_name"], r["key_sequence"]) for r in keys.to_pylist()) == [
                ("line_no", 2), ("order_id", 1)]

            types = fetch(client, options, command("CommandGetXdbcTypeInfo"))
            assert {"BIGINT", "DOUBLE PRECISION", "NUMERIC", "TEXT", "BOOLEAN", "DATE"} <= {
                name.upper() for name in types.column("type_name").to_pylist()}, types.column("type_name")


# --- pandas and polars over ADBC --------------------------------------------------------------


def test_pandas_read_sql_over_adbc(port: int, live_mesh: LiveMesh) -> None:
    import pandas as pd

    with check("pandas read_sql over an ADBC connection", pd.__version__,
               "read_sql: dtypes (int64, bool, datetime64[us, UTC], str; Decimal and date objects) and values "
               "equal PostgreSQL") as result:
        with connect(port) as conn:
            frame = pd.read_sql(WIDE, conn)
        assert str(frame["customer_id"].dtype) == "int64"
        assert str(frame["is_active"].dtype) == "bool"
        assert frame["lifetime_value"].dropna().map(type).eq(decimal.Decimal).all()
        names, _, expected = oracle_answer(live_mesh.oracle_uri, WIDE)
        assert list(frame.columns) == names
        assert str(frame["order_ts"].dtype) == "datetime64[us, UTC]"
        assert frame["signup_date"].map(type).eq(dt.date).all()
        rows = [tuple(None if v is None or v is pd.NaT or (isinstance(v, float) and v != v) else v for v in row)
                for row in frame.itertuples(index=False)]
        same(expected, rows, "pandas")
        result.note("pandas does not pass params= to an ADBC connection (NotImplementedError); use SQLAlchemy "
                    "(sqlalchemy-adbc) or the DB-API cursor for parameters")


def test_polars_read_database_over_adbc(port: int, live_mesh: LiveMesh) -> None:
    import polars as pl

    customer = customer_with_orders(live_mesh.oracle_uri)
    sql = ORDERS_OF.format("?")
    with check("polars read_database over an ADBC connection", pl.__version__,
               "read_database with bound parameters: Arrow types kept (Decimal(12,2), Datetime(us, UTC)), values "
               "equal PostgreSQL"):
        with connect(port) as conn:
            frame = pl.read_database(sql, connection=conn, execute_options={"parameters": (customer,)})
            wide = pl.read_database(WIDE, connection=conn)
        assert frame.schema["total_amount"] == pl.Decimal(12, 2)
        assert frame.schema["order_ts"] == pl.Datetime("us", "UTC")
        same(oracle_answer(live_mesh.oracle_uri, sql, (customer,))[2], frame.rows(), "polars")
        same(oracle_answer(live_mesh.oracle_uri, WIDE)[2], wide.rows(), "polars wide")


# --- SQLAlchemy -------------------------------------------------------------------------------


def test_sqlalchemy_through_sqlalchemy_adbc(port: int, live_mesh: LiveMesh) -> None:
    import pandas as pd
    import sqlalchemy as sa

    customer = customer_with_orders(live_mesh.oracle_uri)
    url = f"adbc+flightsql://127.0.0.1:{port}?tls=false&username={USER}&password={PASSWORD}"
    with check("SQLAlchemy with the sqlalchemy-adbc dialect (adbc+flightsql://)",
               f"{version_of('sqlalchemy-adbc')} (SQLAlchemy {sa.__version__})",
               "engine, text() with bound parameters, pandas.read_sql(engine, params=), Inspector: schemas, "
               "columns and types, has_table") as result:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as connection:
                query = sa.text(ORDERS_OF.format(":customer"))
                rows = connection.execute(query, {"customer": customer}).fetchall()
                same(oracle_answer(live_mesh.oracle_uri, ORDERS_OF.format("%s"), (customer,))[2],
                     [tuple(r) for r in rows], "sqlalchemy")
                frame = pd.read_sql(query, connection, params={"customer": customer})
                assert list(frame["order_id"]) == [r[0] for r in rows]

                inspector = sa.inspect(connection)
                assert {"customers", "orders", "payments", "shipping"} <= set(inspector.get_schema_names())
                columns = inspector.get_columns("orders", schema="orders")
                assert [(c["name"], type(c["type"]).__name__) for c in columns] == [
                    ("order_id", "BigInteger"), ("customer_id", "BigInteger"), ("order_ts", "DateTime"),
                    ("status", "Text"), ("total_amount", "Numeric"), ("currency", "Text")]
                assert inspector.has_table("orders", schema="orders")

                # What the dialect gets wrong or cannot see, recorded for the table and docs/connect.md:
                if not inspector.get_table_names(schema="orders"):
                    result.note("Inspector.get_table_names() is empty: sqlalchemy-adbc 0.3.0 keeps only "
                                "table_type 'table' (lower case); Flight SQL servers say 'TABLE'")
                if not inspector.get_pk_constraint("order_items", schema="orders")["constrained_columns"]:
                    result.note("no primary/foreign keys in the Inspector: the dialect reads them from ADBC "
                                "GetObjects, where the Flight SQL driver leaves constraints empty "
                                "(the server answers GetPrimaryKeys/GetImportedKeys)")
                if all(c["nullable"] for c in columns):
                    result.note("every column reflects as nullable (GetObjects carries no xdbc_is_nullable)")
        finally:
            engine.dispose()


# --- streaming past the memory limit ----------------------------------------------------------

STREAM_CLIENT = r"""
import json, sys, time
import adbc_driver_flightsql.dbapi as flightsql

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

uri, sql = sys.argv[1], sys.argv[2]
started = time.monotonic()
rows = size = batches = largest = 0
with flightsql.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
    cur.execute(sql)
    for batch in cur.fetch_record_batch():
        rows += batch.num_rows
        size += batch.nbytes
        batches += 1
        largest = max(largest, batch.nbytes)
print(json.dumps({"rows": rows, "bytes": size, "batches": batches, "largest_batch": largest,
                  "seconds": round(time.monotonic() - started, 2), "peak_rss": peak()}))
"""
MEMORY_LIMIT = 64 * 1024 * 1024
RSS_BOUND = 600 * 1024 * 1024
STREAMS = {
    # One source (DuckDB): the whole cross join is pushed down and streamed through.
    "one source": "SELECT i.order_id, i.line_no, i.product_sku, i.quantity, i.unit_price, o.order_ts, o.status, "
                  "o.currency, o.total_amount FROM orders.order_items i CROSS JOIN orders.orders o",
    # Two sources (DuckDB x Parquet): DataFusion joins the fragments and streams the product.
    "two sources": "SELECT i.order_id, i.product_sku, i.unit_price, i.quantity, p.payment_id, p.paid_at, p.method, "
                   "p.amount FROM orders.order_items i CROSS JOIN payments.payments p",
}


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def limited_gateway(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``meshgate serve --memory-limit 64M`` in its own process, over the live mesh's registry."""
    port = find_free_port()
    log = tmp_path_factory.mktemp("stream") / "gateway.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--insecure-no-auth", "--memory-limit", "64M",
             "--registry", str(live_mesh.registry.path), "--policies", str(OPEN_POLICIES), "--host", "127.0.0.1",
             "--port", str(port), "--http-port", "0", "--audit-log", str(log.with_name("audit.log"))],
            stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("kind", list(STREAMS))
def test_adbc_streams_a_result_far_larger_than_the_memory_limit(limited_gateway: tuple[str, int], kind: str) -> None:
    uri, gateway_pid = limited_gateway
    with check("Python ADBC: adbc-driver-flightsql", adbc_driver_flightsql.__version__,
               f"fetch_record_batch streams > 1 GiB of Arrow ({kind}) from a gateway with --memory-limit 64M; "
               "gateway and client peak RSS < 600 MB") as result:
        run = subprocess.run([sys.executable, "-c", STREAM_CLIENT, uri, STREAMS[kind]],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        stream = json.loads(run.stdout)
        gateway_peak = _peak_rss(gateway_pid)
        mib = 1024 * 1024
        result.note(f"{kind}: {stream['rows']:,} rows, {stream['bytes'] / mib:,.0f} MiB in {stream['batches']} "
                    f"batches (largest {stream['largest_batch'] / mib:.1f} MiB) in {stream['seconds']} s; peak RSS "
                    f"gateway {gateway_peak / mib:.0f} MiB, client {stream['peak_rss'] / mib:.0f} MiB")
        assert stream["bytes"] > 16 * MEMORY_LIMIT, stream
        assert stream["largest_batch"] <= 16 * mib, stream  # ADBC's default receive limit
        assert stream["peak_rss"] < RSS_BOUND, stream
        assert gateway_peak < RSS_BOUND, f"gateway peak RSS {gateway_peak / mib:.0f} MiB"
