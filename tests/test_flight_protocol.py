"""The Flight SQL protocol layer (gateway/flight) against real clients.

A real ``MeshFlightServer`` listens on 127.0.0.1 and is driven by the real ADBC Flight SQL
driver and by ``pyarrow.flight``.  Behind it sits ``FakeService``, a small test double with
``GatewayService``'s interface that returns fixed tables: these tests check only the
translation between Flight SQL and the service (commands, tickets, schemas, parameters, error
statuses, streaming), which is why a double is acceptable here.  End-to-end tests with the real
service, planner and sources live in tests/test_federated_correctness.py and
tests/test_pushdown.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_manager import AdbcStatusCode
from google.protobuf import any_pb2

import gateway
from gateway.contract_keys import ForeignKey, KeyColumn, TableFilter
from gateway.errors import InvalidQuery, MeshError, QueryCancelled, SourceUnavailable
from gateway.flight import FlightSql_pb2 as pb
from gateway.flight.server import (
    FOREIGN_KEYS_SCHEMA,
    MAX_BATCH_BYTES,
    PRIMARY_KEYS_SCHEMA,
    MeshFlightServer,
    conform,
    pack,
    rechunked,
)
from gateway.flight.sql_info import SQL_INFO_SCHEMA, XDBC_TYPE_INFO_SCHEMA
from gateway.service import PreparedQuery, TableInfo
from policies import ANONYMOUS, Principal

# --- the test double --------------------------------------------------------------------------

ORDERS = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "customer": ["ann", "bob", None],
        "amount": pa.array([decimal.Decimal("12.50"), None, decimal.Decimal("0.99")], pa.decimal128(12, 2)),
        "placed": pa.array([dt.date(2024, 1, 2), dt.date(2024, 2, 3), None], pa.date32()),
        "updated_at": pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)] * 3, pa.timestamp("us", "UTC")),
    },
    schema=pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            ("customer", pa.string()),
            ("amount", pa.decimal128(12, 2)),
            ("placed", pa.date32()),
            pa.field("updated_at", pa.timestamp("us", "UTC"), nullable=False),
        ]
    ),
)
ECHO_SQL = "SELECT ?, ?, ?, ?"
ECHO_TYPES = [pa.int64(), pa.string(), pa.float64(), pa.string()]
BIG_BYTES = 48 * 1024 * 1024  # one batch of this size: the server must re-chunk it
STATUSES = [
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNIMPLEMENTED",
    "UNAVAILABLE",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "INTERNAL",
]


def _failing(status: str) -> type[MeshError]:
    return type(f"Fake{status.title()}", (MeshError,), {"status": status})


@dataclass
class Execution:
    sql: str
    principal: Principal
    parameters: tuple[Any, ...]
    is_cancelled: Callable[[], bool] | None


@dataclass
class FakeService:
    """``GatewayService``'s interface over canned answers, recording what it was asked."""

    executions: list[Execution] = field(default_factory=list)

    def prepare(
        self, sql: str, principal: Principal, client: str | None = None, default_schema: str | None = None
    ) -> PreparedQuery:
        if sql.startswith("FAIL "):
            raise _failing(sql.removeprefix("FAIL "))(f'cannot run "{sql}": as requested')
        if sql == "CRASH":
            raise RuntimeError("the double crashed")
        parameters = pa.schema([(f"${i + 1}", t) for i, t in enumerate(ECHO_TYPES)]) if sql == ECHO_SQL else pa.schema([])
        return PreparedQuery(f"h{hash(sql)}", sql, self._schema(sql), parameters)

    def execute(
        self,
        query: PreparedQuery | str,
        principal: Principal,
        parameters: Sequence[Any] = (),
        is_cancelled: Callable[[], bool] | None = None,
        client: str | None = None,
        default_schema: str | None = None,
    ) -> pa.RecordBatchReader:
        sql = query.sql if isinstance(query, PreparedQuery) else query
        self.executions.append(Execution(sql, principal, tuple(parameters), is_cancelled))
        schema = _nullable(self._schema(sql))  # like an engine that does not track NOT NULL
        return pa.RecordBatchReader.from_batches(schema, self._batches(sql, tuple(parameters), is_cancelled))

    def _schema(self, sql: str) -> pa.Schema:
        if sql == "SELECT * FROM sales.orders":
            return ORDERS.schema
        if sql == ECHO_SQL:
            return pa.schema([(f"p{i + 1}", t) for i, t in enumerate(ECHO_TYPES)])
        if sql in ("SELECT big", "SLOW", "FAIL_MIDSTREAM"):
            return pa.schema([("n", pa.int64()), ("payload", pa.string())])
        raise InvalidQuery(f'relation in "{sql}" does not exist')

    def _batches(self, sql: str, parameters: tuple[Any, ...], is_cancelled: Callable[[], bool] | None) -> Iterator[pa.RecordBatch]:
        schema = _nullable(self._schema(sql))
        if sql == "SELECT * FROM sales.orders":
            yield from ORDERS.cast(schema).to_batches()
        elif sql == ECHO_SQL:
            yield pa.record_batch([pa.array([p], t) for p, t in zip(parameters, ECHO_TYPES)], schema=schema)
        elif sql == "SELECT big":
            rows = BIG_BYTES // 1024
            yield pa.record_batch([pa.array(range(rows), pa.int64()), pa.array(["x" * 1016] * rows)], schema=schema)
        elif sql == "FAIL_MIDSTREAM":
            yield pa.record_batch([pa.array([1]), pa.array(["first"])], schema=schema)
            raise SourceUnavailable("source 'orders' went away mid-stream")
        elif sql == "SLOW":
            assert is_cancelled is not None
            for n in range(1000):
                if is_cancelled():
                    raise QueryCancelled("the query was cancelled")
                yield pa.record_batch([pa.array([n]), pa.array(["tick"])], schema=schema)
                time.sleep(0.02)

    def visible_to(self, principal: Principal) -> "FakeService":
        return self

    def list_catalogs(self) -> list[str]:
        return ["mesh"]

    def list_schemas(self, catalog: str | None, schema_pattern: str | None) -> list[tuple[str, str]]:
        return [("mesh", s) for s in ("sales", "information_schema") if schema_pattern in (None, "%", s)]

    def list_tables(
        self, catalog: str | None, schema_pattern: str | None, table_pattern: str | None, table_types: Sequence[str] = ()
    ) -> list[TableInfo]:
        tables = [
            TableInfo("mesh", "sales", "orders", "TABLE", ORDERS.schema, "Orders"),
            TableInfo("mesh", "sales", "orders@1", "TABLE", ORDERS.schema, "Orders, major 1"),
            TableInfo("mesh", "information_schema", "tables", "SYSTEM TABLE", pa.schema([("table_name", pa.string())]), ""),
        ]
        return [
            t
            for t in tables
            if schema_pattern in (None, "%", t.schema)
            and table_pattern in (None, "%", t.name)
            and (not table_types or t.table_type in table_types)
        ]

    def table_types(self) -> list[str]:
        return ["TABLE", "SYSTEM TABLE", "VIEW"]

    def primary_keys(self, where: TableFilter) -> list[KeyColumn]:
        return []  # keys from real contracts: tests/test_flight_metadata.py

    def foreign_keys(self, primary: TableFilter | None = None, foreign: TableFilter | None = None) -> list[ForeignKey]:
        return []


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> FakeService:
    return FakeService()


@pytest.fixture(scope="module")
def server(service: FakeService) -> Iterator[MeshFlightServer]:
    with MeshFlightServer("grpc://127.0.0.1:0", service) as running:
        yield running


@pytest.fixture
def conn(server: MeshFlightServer) -> Iterator[flightsql.Connection]:
    # autocommit: the server reports that it has no transactions, so ADBC cannot turn it off
    with flightsql.connect(f"grpc://127.0.0.1:{server.port}", autocommit=True) as connection:
        yield connection


@pytest.fixture
def client(server: MeshFlightServer) -> Iterator[flight.FlightClient]:
    with flight.connect(f"grpc://127.0.0.1:{server.port}") as connected:
        yield connected


def _command(message: Any) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(pack(message))


def _fetch(client: flight.FlightClient, message: Any) -> pa.Table:
    """GetFlightInfo then DoGet of its single endpoint, as every Flight SQL client does."""
    info = client.get_flight_info(_command(message))
    assert len(info.endpoints) == 1 and not info.endpoints[0].locations  # "fetch from this server"
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.schema.equals(info.schema)
    return table


def _action(client: flight.FlightClient, kind: str, body: bytes) -> list[bytes]:
    return [result.body.to_pybytes() for result in client.do_action(flight.Action(kind, body))]


def _unpack(data: bytes, message_type: type[Any]) -> Any:
    envelope = any_pb2.Any.FromString(data)
    message = message_type()
    assert envelope.Unpack(message), envelope.type_url
    return message


def _prepare(client: flight.FlightClient, sql: str) -> pb.ActionCreatePreparedStatementResult:
    (result,) = _action(client, "CreatePreparedStatement", pack(pb.ActionCreatePreparedStatementRequest(query=sql)))
    return _unpack(result, pb.ActionCreatePreparedStatementResult)


# --- queries through ADBC ---------------------------------------------------------------------


def test_query_through_adbc(conn: flightsql.Connection, service: FakeService) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT * FROM sales.orders")
        table = cursor.fetch_arrow_table()
    assert table.equals(ORDERS)  # the announced NOT NULL schema, although the engine's was loose
    execution = service.executions[-1]
    assert (execution.sql, execution.principal) == ("SELECT * FROM sales.orders", ANONYMOUS)
    # polled after its call ended (engine threads may), is_cancelled says "stop", never crashes
    assert execution.is_cancelled is not None and execution.is_cancelled()


def test_prepared_statement_parameters_through_adbc(conn: flightsql.Connection, service: FakeService) -> None:
    with conn.cursor() as cursor:
        for row in [(7, "München", 2.5, None), (-1, "", -0.0, "second binding")]:
            cursor.execute(ECHO_SQL, row)
            assert cursor.fetchall() == [row]
            assert service.executions[-1].parameters == row


def test_executemany_is_rejected_cleanly(conn: flightsql.Connection) -> None:
    with conn.cursor() as cursor:
        with pytest.raises(flightsql.ProgrammingError, match="executemany is not supported for queries") as caught:
            cursor.executemany(ECHO_SQL, [(1, "a", 1.0, None), (2, "b", 2.0, None)])
        assert caught.value.status_code == AdbcStatusCode.INVALID_ARGUMENT
        rows = pa.table([pa.array([1, 2], t) if t == pa.int64() else pa.nulls(2, t) for t in ECHO_TYPES], names=list("abcd"))
        with pytest.raises(flightsql.ProgrammingError, match=r"executemany is not supported for queries.*got 2 rows"):
            cursor.execute(ECHO_SQL, rows)
        cursor.execute("SELECT * FROM sales.orders")  # the connection is still usable
        assert cursor.fetch_arrow_table().num_rows == 3


def test_large_result_is_streamed_in_bounded_messages(conn: flightsql.Connection) -> None:
    with conn.cursor() as cursor:
        cursor.execute("SELECT big")
        table = cursor.fetch_arrow_table()
    assert table.nbytes > 40 * 1024 * 1024
    assert table.num_rows == BIG_BYTES // 1024
    assert table.column("n")[-1].as_py() == table.num_rows - 1
    assert max(batch.nbytes for batch in table.to_batches()) <= MAX_BATCH_BYTES


# --- metadata through ADBC --------------------------------------------------------------------


def test_get_objects_at_every_depth(conn: flightsql.Connection) -> None:
    def objects(depth: str) -> list[dict[str, Any]]:
        return conn.adbc_get_objects(depth=depth).read_all().to_pylist()

    assert [(c["catalog_name"], c["catalog_db_schemas"]) for c in objects("catalogs")] == [("mesh", None)]
    (catalog,) = objects("db_schemas")
    assert sorted(s["db_schema_name"] for s in catalog["catalog_db_schemas"]) == ["information_schema", "sales"]
    (catalog,) = objects("tables")
    tables = {(s["db_schema_name"], t["table_name"], t["table_type"]) for s in catalog["catalog_db_schemas"] for t in s["db_schema_tables"]}
    assert tables == {("sales", "orders", "TABLE"), ("sales", "orders@1", "TABLE"), ("information_schema", "tables", "SYSTEM TABLE")}
    for depth in ("columns", "all"):
        (catalog,) = objects(depth)
        (sales,) = [s for s in catalog["catalog_db_schemas"] if s["db_schema_name"] == "sales"]
        orders = next(t for t in sales["db_schema_tables"] if t["table_name"] == "orders")
        columns = [(c["column_name"], c["ordinal_position"], c["xdbc_type_name"]) for c in orders["table_columns"]]
        assert columns == [
            ("id", 1, "bigint"),
            ("customer", 2, "text"),
            ("amount", 3, "numeric"),
            ("placed", 4, "date"),
            ("updated_at", 5, "timestamptz"),
        ]


def test_get_table_schema(conn: flightsql.Connection) -> None:
    schema = conn.adbc_get_table_schema("orders", db_schema_filter="sales", catalog_filter="mesh")
    assert schema.equals(ORDERS.schema, check_metadata=False)
    amount = schema.field("amount").metadata
    assert amount[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"numeric"
    assert (amount[b"ARROW:FLIGHT:SQL:PRECISION"], amount[b"ARROW:FLIGHT:SQL:SCALE"]) == (b"12", b"2")


def test_get_info(conn: flightsql.Connection) -> None:
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "meshgate"
    assert info["vendor_version"] == gateway.__version__
    assert info["vendor_arrow_version"] == pa.__version__


def test_get_table_types(conn: flightsql.Connection) -> None:
    assert conn.adbc_get_table_types() == ["SYSTEM TABLE", "TABLE", "VIEW"]


# --- errors -----------------------------------------------------------------------------------

ADBC_STATUS = {
    "INVALID_ARGUMENT": AdbcStatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": AdbcStatusCode.NOT_FOUND,
    "UNIMPLEMENTED": AdbcStatusCode.NOT_IMPLEMENTED,
    "UNAVAILABLE": AdbcStatusCode.IO,
    "RESOURCE_EXHAUSTED": AdbcStatusCode.IO,  # pyarrow cannot send RESOURCE_EXHAUSTED (server.py)
    "DEADLINE_EXCEEDED": AdbcStatusCode.TIMEOUT,
    "CANCELLED": AdbcStatusCode.CANCELLED,
    "PERMISSION_DENIED": AdbcStatusCode.UNAUTHORIZED,
    "UNAUTHENTICATED": AdbcStatusCode.UNAUTHENTICATED,
    "INTERNAL": AdbcStatusCode.INTERNAL,
}
FLIGHT_EXCEPTION = {
    "INVALID_ARGUMENT": pa.ArrowInvalid,
    "NOT_FOUND": pa.ArrowKeyError,
    "UNIMPLEMENTED": pa.ArrowNotImplementedError,
    "UNAVAILABLE": flight.FlightUnavailableError,
    "RESOURCE_EXHAUSTED": flight.FlightUnavailableError,
    "DEADLINE_EXCEEDED": flight.FlightTimedOutError,
    "CANCELLED": flight.FlightCancelledError,
    "PERMISSION_DENIED": flight.FlightUnauthorizedError,
    "UNAUTHENTICATED": flight.FlightUnauthenticatedError,
    "INTERNAL": flight.FlightInternalError,
}


@pytest.mark.parametrize("status", STATUSES)
def test_service_errors_reach_adbc_with_status_and_message(conn: flightsql.Connection, status: str) -> None:
    with conn.cursor() as cursor, pytest.raises(flightsql.Error) as caught:
        cursor.execute(f"FAIL {status}")
    assert caught.value.status_code == ADBC_STATUS[status]
    assert f'cannot run "FAIL {status}": as requested' in str(caught.value)


@pytest.mark.parametrize("status", STATUSES)
def test_service_errors_reach_pyarrow_with_grpc_status(client: flight.FlightClient, status: str) -> None:
    with pytest.raises(FLIGHT_EXCEPTION[status], match=f'cannot run "FAIL {status}": as requested'):
        client.get_flight_info(_command(pb.CommandStatementQuery(query=f"FAIL {status}")))


def test_unexpected_exception_is_internal_and_the_server_survives(conn: flightsql.Connection) -> None:
    with conn.cursor() as cursor:
        with pytest.raises(flightsql.InternalError, match="internal error: RuntimeError: the double crashed"):
            cursor.execute("CRASH")
        cursor.execute("SELECT * FROM sales.orders")
        assert cursor.fetch_arrow_table().num_rows == 3


def test_error_mid_stream_keeps_its_status(conn: flightsql.Connection) -> None:
    with conn.cursor() as cursor, pytest.raises(flightsql.OperationalError, match="went away mid-stream") as caught:
        cursor.execute("FAIL_MIDSTREAM")
        cursor.fetch_arrow_table()
    assert caught.value.status_code == AdbcStatusCode.IO


# --- the protocol through pyarrow.flight ------------------------------------------------------


def test_statement_query_with_a_pyarrow_client(client: flight.FlightClient) -> None:
    command = pb.CommandStatementQuery(query="SELECT * FROM sales.orders")
    assert client.get_schema(_command(command)).schema.equals(ORDERS.schema)
    assert _fetch(client, command).equals(ORDERS)


def test_prepared_statement_lifecycle_with_dense_union_parameters(client: flight.FlightClient, service: FakeService) -> None:
    prepared = _prepare(client, ECHO_SQL)
    result_schema = pa.ipc.read_schema(pa.py_buffer(prepared.dataset_schema))
    assert result_schema.types == ECHO_TYPES
    assert pa.ipc.read_schema(pa.py_buffer(prepared.parameter_schema)).types == ECHO_TYPES
    statement = pb.CommandPreparedStatementQuery(prepared_statement_handle=prepared.prepared_statement_handle)

    # flightsql-dbapi binds each parameter as a dense union of the value's type
    values: list[Any] = [5, "Zoë", 1.25, None]
    members = [pa.array([v], t) for v, t in zip(values, [pa.int64(), pa.string(), pa.float64(), pa.null()])]
    unions = [pa.UnionArray.from_dense(pa.array([i], pa.int8()), pa.array([0], pa.int32()), members) for i in range(4)]
    parameters = pa.record_batch(unions, names=["1", "2", "3", "4"])
    writer, metadata = client.do_put(_command(statement), parameters.schema)
    writer.write_batch(parameters)
    writer.done_writing()
    put_result = metadata.read()
    writer.close()
    # app_metadata is the *raw* DoPutPreparedStatementResult, not Any-packed
    handle = pb.DoPutPreparedStatementResult.FromString(put_result.to_pybytes()).prepared_statement_handle
    assert handle == prepared.prepared_statement_handle

    assert client.get_schema(_command(statement)).schema.equals(result_schema)
    assert _fetch(client, statement).to_pylist() == [{"p1": 5, "p2": "Zoë", "p3": 1.25, "p4": None}]
    assert service.executions[-1].parameters == (5, "Zoë", 1.25, None)

    assert _action(client, "ClosePreparedStatement", pack(pb.ActionClosePreparedStatementRequest(prepared_statement_handle=handle))) == []
    with pytest.raises(pa.ArrowKeyError, match="prepared statement not found"):
        client.get_flight_info(_command(statement))


def test_prepared_statements_belong_to_their_principal(service: FakeService) -> None:
    callers = iter([Principal("alice"), Principal("bob")])
    server = MeshFlightServer("grpc://127.0.0.1:0", service, principal_for=lambda context: next(callers))
    with server, flight.connect(f"grpc://127.0.0.1:{server.port}") as client:
        prepared = _prepare(client, "SELECT * FROM sales.orders")  # as alice
        statement = pb.CommandPreparedStatementQuery(prepared_statement_handle=prepared.prepared_statement_handle)
        with pytest.raises(pa.ArrowKeyError, match="prepared statement not found"):
            client.get_flight_info(_command(statement))  # as bob


def test_sql_info_honours_the_filter_and_the_union_types(client: flight.FlightClient) -> None:
    wanted = [
        pb.FLIGHT_SQL_SERVER_NAME,
        pb.FLIGHT_SQL_SERVER_READ_ONLY,
        pb.SQL_IDENTIFIER_QUOTE_CHAR,
        pb.SQL_NULL_ORDERING,
        pb.SQL_KEYWORDS,
        pb.SQL_MAX_STATEMENT_LENGTH,
        pb.SQL_SUPPORTS_CONVERT,
        9999,  # unknown ids are skipped
    ]
    table = _fetch(client, pb.CommandGetSqlInfo(info=wanted))
    assert table.schema.equals(SQL_INFO_SCHEMA)
    values = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist()))
    assert list(values) == wanted[:-1]
    assert values[pb.FLIGHT_SQL_SERVER_NAME] == "meshgate"
    assert values[pb.FLIGHT_SQL_SERVER_READ_ONLY] is True
    assert values[pb.SQL_IDENTIFIER_QUOTE_CHAR] == '"'
    assert "ILIKE" in values[pb.SQL_KEYWORDS]
    type_codes = table.column("value").chunk(0).type_codes.to_pylist()
    assert type_codes == [0, 1, 0, 3, 4, 2, 5]  # string, bool, string, int32, list, int64, map

    everything = _fetch(client, pb.CommandGetSqlInfo()).column("info_name").to_pylist()
    assert {pb.FLIGHT_SQL_SERVER_VERSION, pb.FLIGHT_SQL_SERVER_CANCEL, pb.SQL_TRANSACTIONS_SUPPORTED} <= set(everything)


def test_xdbc_type_info(client: flight.FlightClient) -> None:
    table = _fetch(client, pb.CommandGetXdbcTypeInfo())
    assert table.schema.equals(XDBC_TYPE_INFO_SCHEMA)
    assert set(table.column("type_name").to_pylist()) == {
        *("boolean", "smallint", "integer", "bigint", "real", "double precision", "numeric"),
        *("varchar", "text", "date", "timestamp", "timestamptz", "bytea"),
    }
    order = list(zip(table.column("data_type").to_pylist(), table.column("type_name").to_pylist()))
    assert order == sorted(order)
    timestamps = _fetch(client, pb.CommandGetXdbcTypeInfo(data_type=pb.XDBC_TIMESTAMP)).to_pylist()
    assert [(t["type_name"], t["sql_data_type"], t["datetime_subcode"]) for t in timestamps] == [
        ("timestamp", pb.XDBC_DATETIME, pb.XDBC_SUBCODE_TIMESTAMP),
        ("timestamptz", pb.XDBC_DATETIME, pb.XDBC_SUBCODE_TIMESTAMP_WITH_TIMEZONE),
    ]


@pytest.mark.parametrize(
    ("command", "schema"),
    [
        (pb.CommandGetPrimaryKeys(table="orders"), PRIMARY_KEYS_SCHEMA),
        (pb.CommandGetImportedKeys(table="orders"), FOREIGN_KEYS_SCHEMA),
        (pb.CommandGetExportedKeys(table="orders"), FOREIGN_KEYS_SCHEMA),
        (pb.CommandGetCrossReference(pk_table="orders", fk_table="customers"), FOREIGN_KEYS_SCHEMA),
    ],
)
def test_keys_are_empty_but_correctly_shaped(client: flight.FlightClient, command: Any, schema: pa.Schema) -> None:
    table = _fetch(client, command)
    assert table.num_rows == 0 and table.schema.equals(schema)


def test_get_tables_filters_and_schemas(client: flight.FlightClient) -> None:
    plain = _fetch(client, pb.CommandGetTables(db_schema_filter_pattern="sales", table_types=["TABLE"]))
    assert plain.column_names == ["catalog_name", "db_schema_name", "table_name", "table_type"]
    assert plain.column("table_name").to_pylist() == ["orders", "orders@1"]
    with_schema = _fetch(client, pb.CommandGetTables(table_name_filter_pattern="orders", include_schema=True))
    (schema_bytes,) = with_schema.column("table_schema").to_pylist()
    assert pa.ipc.read_schema(pa.py_buffer(schema_bytes)).equals(ORDERS.schema, check_metadata=False)


def test_writes_transactions_and_substrait_are_refused_as_read_only(client: flight.FlightClient) -> None:
    # CommandStatementUpdate {string query = 1;} has CommandStatementQuery's wire form
    delete = pb.CommandStatementQuery(query="DELETE FROM sales.orders").SerializeToString()
    update = flight.FlightDescriptor.for_command(
        any_pb2.Any(type_url="type.googleapis.com/arrow.flight.protocol.sql.CommandStatementUpdate", value=delete).SerializeToString()
    )
    writer, _ = client.do_put(update, pa.schema([]))
    with pytest.raises(pa.ArrowNotImplementedError, match="meshgate is read-only: SQL updates are not supported"):
        writer.close()
    with pytest.raises(pa.ArrowNotImplementedError, match="meshgate is read-only: transactions are not supported"):
        _action(client, "BeginTransaction", b"")
    with pytest.raises(pa.ArrowNotImplementedError, match="meshgate is read-only: transactions are not supported"):
        client.get_flight_info(_command(pb.CommandStatementQuery(query="SELECT * FROM sales.orders", transaction_id=b"t1")))
    with pytest.raises(pa.ArrowNotImplementedError, match="meshgate is read-only: only SQL queries"):
        _action(client, "CreatePreparedSubstraitPlan", b"")


def test_garbage_is_an_invalid_argument(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowInvalid, match="not an Any-packed Flight SQL message"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"\xff\xff not protobuf"))
    with pytest.raises(pa.ArrowInvalid, match="unknown statement handle"):
        client.do_get(flight.Ticket(pack(pb.TicketStatementQuery(statement_handle=b"forged")))).read_all()


def test_close_session_and_list_actions(client: flight.FlightClient) -> None:
    (result,) = _action(client, "CloseSession", b"")
    assert pb.CloseSessionResult.FromString(result).status == pb.CloseSessionResult.CLOSED  # raw, not Any
    actions = {action.type for action in client.list_actions()}
    assert {"CreatePreparedStatement", "ClosePreparedStatement", "CancelFlightInfo", "CloseSession"} <= actions


def test_cancel_flight_info_stops_a_running_query(client: flight.FlightClient, service: FakeService) -> None:
    info = client.get_flight_info(_command(pb.CommandStatementQuery(query="SLOW")))
    reader = client.do_get(info.endpoints[0].ticket)
    reader.read_chunk()
    assert service.executions[-1].is_cancelled is not None and not service.executions[-1].is_cancelled()

    cancel = pb.ActionCancelQueryRequest(info=info.serialize())  # wire form of CancelFlightInfoRequest
    (result,) = _action(client, "CancelFlightInfo", cancel.SerializeToString())
    assert pb.ActionCancelQueryResult.FromString(result).result == pb.ActionCancelQueryResult.CANCEL_RESULT_CANCELLED
    with pytest.raises(flight.FlightCancelledError, match="the query was cancelled"):
        while True:  # not read_all(): on CANCELLED pyarrow's client simulates a Ctrl-C
            reader.read_chunk()

    (result,) = _action(client, "CancelQuery", pack(cancel))  # the deprecated, Any-packed form
    assert _unpack(result, pb.ActionCancelQueryResult).result == pb.ActionCancelQueryResult.CANCEL_RESULT_NOT_CANCELLABLE


def test_client_going_away_is_seen_by_the_service(client: flight.FlightClient, service: FakeService) -> None:
    info = client.get_flight_info(_command(pb.CommandStatementQuery(query="SLOW")))
    reader = client.do_get(info.endpoints[0].ticket)
    reader.read_chunk()
    execution = service.executions[-1]
    reader.cancel()
    deadline = time.monotonic() + 5
    while not (execution.is_cancelled and execution.is_cancelled()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert execution.is_cancelled is not None and execution.is_cancelled()


def test_concurrent_queries(server: MeshFlightServer) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with flightsql.connect(f"grpc://127.0.0.1:{server.port}", autocommit=True) as c, c.cursor() as cursor:
                for i in range(5):
                    cursor.execute(ECHO_SQL, (i, "t", 0.5, None))
                    assert cursor.fetchall() == [(i, "t", 0.5, None)]
        except BaseException as error:  # surfaced below: an assert in a thread is otherwise lost
            failures.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# --- helpers, directly --------------------------------------------------------------------------


def test_rechunked_bounds_every_batch_and_keeps_every_row() -> None:
    uneven = pa.record_batch({"s": ["x" * 10] * 900 + ["y" * 5000] * 100})  # heavy rows at the end
    pieces = list(rechunked([uneven], max_bytes=20_000))
    assert all(p.nbytes <= 20_000 for p in pieces)
    assert pa.Table.from_batches(pieces).equals(pa.Table.from_batches([uneven]))
    huge_row = pa.record_batch({"s": ["z" * 50_000]})
    assert list(rechunked([huge_row], max_bytes=20_000)) == [huge_row]  # cannot split one row


def test_conform_relabels_but_refuses_lies() -> None:
    announced = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    assert conform(pa.record_batch({"id": [1, 2]}), announced).schema.equals(announced)
    with pytest.raises(MeshError, match="announced NOT NULL"):
        conform(pa.record_batch({"id": [1, None]}), announced)
    with pytest.raises(MeshError, match="does not have the schema its query announced"):
        conform(pa.record_batch({"id": ["1"]}), announced)
