"""The Flight SQL protocol layer: decode a command, call the service, encode the answer.

``MeshFlightServer`` holds no SQL logic.  Every request becomes one call on the service
(``prepare``, ``execute``, ``list_catalogs``, ``list_schemas``, ``list_tables``,
``table_types``, ``primary_keys``, ``foreign_keys``), run as the caller's principal, and the
answer is encoded the way the Flight SQL specification and its real clients (ADBC's Go driver,
the JDBC driver) expect it.  Who the caller is comes from ``gateway/flight/auth.py`` (or is
``anonymous`` with ``--insecure-no-auth``); session options from ``gateway/flight/sessions.py``.

Statement tickets carry the SQL and the bound parameters themselves, so a DoGet needs no server
state and may land on any replica; only prepared-statement handles live in this process.  A
ticket is no capability: whoever presents it runs the SQL inside it as *their own* principal,
exactly as if they had sent the SQL.

Errors
------
The service raises ``gateway.errors.MeshError`` subclasses, each naming a gRPC status.  pyarrow's
Flight server decides the status from the Python exception type, so each status is produced by
raising the exception below (found by experiment: pyarrow 26 server, ADBC Flight SQL driver 1.13
and grpcio as clients):

=====================  ===========================================  ===================  ===============
MeshError.status       exception raised by the server               gRPC status seen     ADBC status
=====================  ===========================================  ===================  ===============
INVALID_ARGUMENT       ``pyarrow.ArrowInvalid`` (or ``ValueError``)  INVALID_ARGUMENT     INVALID_ARGUMENT
NOT_FOUND              ``pyarrow.ArrowKeyError`` (or ``KeyError``)   NOT_FOUND            NOT_FOUND
UNIMPLEMENTED          ``pyarrow.ArrowNotImplementedError``          UNIMPLEMENTED        NOT_IMPLEMENTED
UNAVAILABLE            ``flight.FlightUnavailableError``             UNAVAILABLE          IO
RESOURCE_EXHAUSTED     ``flight.FlightUnavailableError`` (see below) UNAVAILABLE          IO
DEADLINE_EXCEEDED      ``flight.FlightTimedOutError``                DEADLINE_EXCEEDED    TIMEOUT
CANCELLED              ``flight.FlightCancelledError``               CANCELLED            CANCELLED
PERMISSION_DENIED      ``flight.FlightUnauthorizedError``            PERMISSION_DENIED    UNAUTHORIZED
UNAUTHENTICATED        ``flight.FlightUnauthenticatedError``         UNAUTHENTICATED      UNAUTHENTICATED
INTERNAL, unexpected   ``flight.FlightInternalError``                INTERNAL             INTERNAL
=====================  ===========================================  ===================  ===============

Things the experiment showed that the table relies on:

* No exception a pyarrow server can raise yields RESOURCE_EXHAUSTED: ``ArrowCapacityError``,
  ``ArrowMemoryError`` and ``MemoryError`` all arrive as UNKNOWN, as do ``ArrowCancelled``,
  ``ArrowTypeError``, ``ArrowIndexError``, ``OSError``, ``RuntimeError`` and
  ``FlightServerError``.  UNAVAILABLE is the nearest retryable status ("at capacity, retry
  shortly"); the message starts with ``RESOURCE_EXHAUSTED:`` so clients can still tell.
* ``flight.Flight*Error`` messages arrive as ``"<message>. Detail: <Kind>"``.  Any other
  exception arrives as ``"<message>. Detail: Python exception: <formatted traceback>"``: pyarrow
  appends the traceback and offers no way to suppress it.  The message itself always comes
  first and intact; errors are re-raised ``from None`` in a two-frame wrapper so that traceback
  shows no service internals.
"""

from __future__ import annotations

import functools
import logging
import secrets
import struct
import threading
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from gateway.auth import Authenticator
from gateway.contract_keys import ForeignKey, KeyColumn, TableFilter
from gateway.errors import MeshError, NotFound, Unsupported
from gateway.flight import FlightSql_pb2 as pb
from gateway.flight import auth, sessions
from gateway.flight.sql_info import SQL_INFO_SCHEMA, XDBC_TYPE_INFO_SCHEMA, sql_info_table, xdbc_type_info_table
from gateway.service import PreparedQuery, TableInfo
from gateway.types import parse_duration, sql_type_name
from policies import ANONYMOUS, Principal

logger = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Largest record batch sent in one message: well under ADBC's 16 MiB default receive limit."""

_TYPE_URL_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."

M = TypeVar("M", bound=Message)


class Service(Protocol):
    """What the protocol layer needs of ``gateway.service.GatewayService``, and nothing more."""

    def prepare(
        self, sql: str, principal: Principal, client: str | None = None, default_schema: str | None = None
    ) -> PreparedQuery: ...

    def execute(
        self,
        query: PreparedQuery | str,
        principal: Principal,
        parameters: Sequence[Any] = (),
        is_cancelled: Callable[[], bool] | None = None,
        client: str | None = None,
        default_schema: str | None = None,
    ) -> pa.RecordBatchReader: ...

    def list_catalogs(self) -> list[str]: ...

    def visible_to(self, principal: Principal) -> Any:
        """The metadata calls as ``principal`` may see them (only products it may read)."""
        ...

    def list_schemas(self, catalog: str | None, schema_pattern: str | None) -> list[tuple[str, str]]: ...

    def list_tables(
        self, catalog: str | None, schema_pattern: str | None, table_pattern: str | None, table_types: Sequence[str] = ()
    ) -> list[TableInfo]: ...

    def table_types(self) -> list[str]: ...

    def primary_keys(self, where: TableFilter) -> list[KeyColumn]: ...

    def foreign_keys(self, primary: TableFilter | None = None, foreign: TableFilter | None = None) -> list[ForeignKey]: ...


class ProtocolError(MeshError):
    """The request is not valid Flight SQL (malformed command, misuse of a handle)."""

    status = "INVALID_ARGUMENT"


# --- errors -----------------------------------------------------------------------------------

_FLIGHT_ERRORS: dict[str, Callable[[str], Exception]] = {
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

_STAND_INS = {"RESOURCE_EXHAUSTED"}
"""Statuses sent as a stand-in code: the message then starts with the real status name."""


def flight_error(error: Exception) -> Exception:
    """The exception that makes pyarrow send ``error`` with the right gRPC status (module docstring)."""
    if isinstance(error, flight.FlightError):
        return error  # already chosen by a lower layer, e.g. an auth middleware
    if isinstance(error, MeshError):
        message = error.message
        if error.status in _STAND_INS:
            message = f"{error.status}: {message}"  # the real status, where gRPC's code cannot carry it
        return _FLIGHT_ERRORS.get(error.status, flight.FlightInternalError)(message)
    logger.error("unexpected error in a Flight SQL call", exc_info=error)
    return flight.FlightInternalError(f"internal error: {type(error).__name__}: {error}")


F = TypeVar("F", bound=Callable[..., Any])


def _translating_errors(rpc: F) -> F:
    """Make an RPC handler raise only the exceptions of the mapping table, so the status is right
    and no unexpected exception reaches pyarrow as UNKNOWN."""

    @functools.wraps(rpc)
    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return rpc(*args, **kwargs)
        except Exception as error:
            raise flight_error(error) from None

    return handler  # type: ignore[return-value]


# --- Any-packed commands ----------------------------------------------------------------------


def pack(message: Message) -> bytes:
    """``message`` wrapped in ``google.protobuf.Any``, as Flight SQL commands and tickets travel."""
    envelope = any_pb2.Any()
    envelope.Pack(message)
    return envelope.SerializeToString()


@dataclass(frozen=True)
class _Command:
    """A decoded ``Any`` envelope: which Flight SQL message it holds, parsed on demand."""

    name: str
    envelope: any_pb2.Any

    @classmethod
    def decode(cls, data: bytes) -> _Command:
        envelope = any_pb2.Any()
        try:
            envelope.ParseFromString(data)
        except DecodeError:
            raise ProtocolError("the command is not an Any-packed Flight SQL message") from None
        if not envelope.type_url.startswith(_TYPE_URL_PREFIX):
            raise ProtocolError(f"unknown command type '{envelope.type_url}': this server speaks Flight SQL")
        return cls(envelope.type_url.removeprefix(_TYPE_URL_PREFIX), envelope)

    def parse(self, message_type: type[M]) -> M:
        message = message_type()
        try:
            unpacked = self.envelope.Unpack(message)
        except DecodeError:
            unpacked = False
        if not unpacked:
            raise ProtocolError(f"malformed {self.name}")
        return message


def _parse_raw(message_type: type[M], data: bytes, what: str) -> M:
    """A message sent without an Any envelope (Flight's own actions)."""
    try:
        return message_type.FromString(data)
    except DecodeError:
        raise ProtocolError(f"malformed {what} request") from None


def _optional(message: Message, name: str) -> str | None:
    """A proto3 ``optional`` string: None when unset, which the spec distinguishes from ''."""
    return getattr(message, name) if message.HasField(name) else None


_READ_ONLY = "meshgate is read-only: "
_UNSUPPORTED: dict[str, str] = {
    "CommandStatementUpdate": _READ_ONLY + "SQL updates are not supported; send queries with CommandStatementQuery",
    "CommandStatementIngest": _READ_ONLY + "bulk ingestion is not supported",
    "CommandStatementSubstraitPlan": _READ_ONLY + "only SQL queries are supported, not Substrait plans",
    "CreatePreparedSubstraitPlan": _READ_ONLY + "only SQL queries are supported, not Substrait plans",
    "BeginTransaction": _READ_ONLY + "transactions are not supported",
    "EndTransaction": _READ_ONLY + "transactions are not supported",
    "BeginSavepoint": _READ_ONLY + "savepoints are not supported",
    "EndSavepoint": _READ_ONLY + "savepoints are not supported",
}
_EXECUTEMANY = "executemany is not supported for queries: execute the query once per parameter row"


def _unsupported(name: str, rpc: str) -> MeshError:
    """The error for a command or action this server does not serve through ``rpc``."""
    if name in _UNSUPPORTED:
        return Unsupported(_UNSUPPORTED[name])
    return Unsupported(f"{rpc} does not support {name}")


def _refuse_transaction(message: pb.CommandStatementQuery | pb.ActionCreatePreparedStatementRequest) -> None:
    if message.HasField("transaction_id"):
        raise Unsupported(_UNSUPPORTED["BeginTransaction"])


# --- statements -------------------------------------------------------------------------------

_HANDLE_VERSION = b"mg1"


@dataclass(frozen=True)
class StatementHandle:
    """What a statement ticket carries: the SQL, the result schema GetFlightInfo announced, and
    the bound parameters (one row, or none).

    The schema travels along because ADBC rejects a stream whose schema differs in any way from
    the FlightInfo's.  The nonce makes every GetFlightInfo's ticket distinct, so cancelling one
    client's query never stops another's identical one.
    """

    sql: str
    schema: pa.Schema
    parameters: pa.RecordBatch | None = None
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(8))

    def encode(self) -> bytes:
        parameters = b"" if self.parameters is None else _ipc_stream(self.parameters)
        parts = (self.nonce, self.sql.encode(), self.schema.serialize().to_pybytes(), parameters)
        return _HANDLE_VERSION + b"".join(struct.pack(">I", len(part)) + part for part in parts)

    @classmethod
    def decode(cls, data: bytes) -> StatementHandle:
        try:
            if not data.startswith(_HANDLE_VERSION):
                raise ValueError("unknown version")
            parts, offset = [], len(_HANDLE_VERSION)
            for _ in range(4):
                (length,) = struct.unpack_from(">I", data, offset)
                parts.append(data[offset + 4 : offset + 4 + length])
                offset += 4 + length
            nonce, sql, schema, parameters = parts
            return cls(
                sql.decode(),
                pa.ipc.read_schema(pa.py_buffer(schema)),
                pa.ipc.open_stream(parameters).read_next_batch() if parameters else None,
                nonce,
            )
        except (struct.error, ValueError):  # ArrowInvalid and UnicodeDecodeError are ValueErrors
            raise ProtocolError("unknown statement handle: tickets come from this server's GetFlightInfo") from None

    def parameter_values(self) -> tuple[Any, ...]:
        """The bound row as Python values; dense-union parameters (flightsql-dbapi) unwrap here."""
        if self.parameters is None:
            return ()
        return tuple(column[0].as_py() for column in self.parameters.columns)

    def ticket(self) -> bytes:
        return pack(pb.TicketStatementQuery(statement_handle=self.encode()))


def _ipc_stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


@dataclass
class _PreparedStatement:
    """A prepared statement between CreatePreparedStatement and ClosePreparedStatement."""

    query: PreparedQuery
    principal: Principal
    parameters: pa.RecordBatch | None = None

    def ticket(self) -> bytes:
        """A ticket for one execution with the parameters bound now (later bindings don't touch it)."""
        return StatementHandle(self.query.sql, self.query.result_schema, self.parameters).ticket()


class _PreparedStatements:
    """Prepared statements by handle; gRPC serves calls on many threads at once."""

    def __init__(self) -> None:
        self._statements: dict[bytes, _PreparedStatement] = {}
        self._lock = threading.Lock()

    def add(self, statement: _PreparedStatement) -> bytes:
        # Not the service's handle (a hash of the SQL): two clients preparing the same SQL must
        # not share, or overwrite each other's, bound parameters.
        handle = secrets.token_bytes(16)
        with self._lock:
            self._statements[handle] = statement
        return handle

    def get(self, handle: bytes, principal: Principal) -> _PreparedStatement:
        with self._lock:
            statement = self._statements.get(handle)
        if statement is None or statement.principal != principal:
            raise NotFound(
                "prepared statement not found: it was closed, or prepared on another gateway replica; prepare it again"
            )
        return statement

    def remove(self, handle: bytes) -> None:
        with self._lock:
            self._statements.pop(handle, None)  # closing twice is harmless


class _Cancellation:
    """A DoGet query's ``is_cancelled``: the client went away, CancelFlightInfo asked, or the
    call is over.

    pyarrow's ServerCallContext must not be touched once its call has ended (it crashes the
    process), yet the service may poll from its own threads at any time; so ``end`` detaches
    the context, waiting under the lock for a poll in progress.
    """

    def __init__(self, context: flight.ServerCallContext) -> None:
        self._context: flight.ServerCallContext | None = context
        self._requested = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            return self._requested.is_set() or self._context is None or self._context.is_cancelled()

    def request(self) -> None:
        self._requested.set()

    def end(self) -> None:
        with self._lock:
            self._context = None


class _RunningQueries:
    """DoGet queries in progress by ticket, so CancelFlightInfo can stop them."""

    def __init__(self) -> None:
        self._running: dict[bytes, set[_Cancellation]] = {}
        self._lock = threading.Lock()

    def add(self, ticket: bytes, cancellation: _Cancellation) -> None:
        with self._lock:
            self._running.setdefault(ticket, set()).add(cancellation)

    def end(self, ticket: bytes, cancellation: _Cancellation) -> None:
        cancellation.end()
        with self._lock:
            running = self._running.get(ticket, set())
            running.discard(cancellation)
            if not running:
                self._running.pop(ticket, None)

    def cancel(self, tickets: Iterable[bytes]) -> bool:
        """Ask every query of these tickets to stop; False when none was running."""
        with self._lock:
            found = [cancellation for ticket in tickets for cancellation in self._running.get(ticket, ())]
        for cancellation in found:
            cancellation.request()
        return bool(found)


def rechunked(batches: Iterable[pa.RecordBatch], max_bytes: int = MAX_BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """``batches`` sliced so that none exceeds ``max_bytes`` (a single larger row goes alone).

    Slices are zero-copy; a slice still too large (rows of uneven width) is split again.
    """
    for batch in batches:
        if batch.nbytes <= max_bytes or batch.num_rows <= 1:
            yield batch
            continue
        rows = max(1, batch.num_rows * max_bytes // batch.nbytes)
        yield from rechunked((batch.slice(offset, rows) for offset in range(0, batch.num_rows, rows)), max_bytes)


def _described(query: PreparedQuery) -> PreparedQuery:
    """``query`` with its result columns described the way Flight SQL clients read them
    (JDBC's ResultSetMetaData takes a decimal's precision and scale from this metadata)."""
    fields = []
    for f in query.result_schema:
        metadata = {b"ARROW:FLIGHT:SQL:TYPE_NAME": sql_type_name(f.type).split("(")[0].encode()}
        if pa.types.is_decimal(f.type):
            metadata[b"ARROW:FLIGHT:SQL:PRECISION"] = str(f.type.precision).encode()
            metadata[b"ARROW:FLIGHT:SQL:SCALE"] = str(f.type.scale).encode()
        fields.append(f.with_metadata({**(f.metadata or {}), **metadata}))
    return replace(query, result_schema=pa.schema(fields, metadata=query.result_schema.metadata))


def _streamed(reader: pa.RecordBatchReader, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The reader's batches under the announced ``schema``, in messages of at most
    MAX_BATCH_BYTES; an error mid-stream gets its status like any other."""
    try:
        for batch in rechunked(reader):
            yield conform(batch, schema)
    except Exception as error:
        raise flight_error(error) from None


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` relabelled with the ``schema`` GetFlightInfo announced (zero-copy).

    Names, nullability and metadata may differ between what ``prepare`` announced and what
    ``execute`` produced; a different type, or a NULL in a column announced NOT NULL, is a
    service bug that is reported as an internal error rather than streamed as a lie.
    """
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    if batch.schema.types != schema.types:
        raise MeshError(f"the result does not have the schema its query announced: got {batch.schema}, announced {schema}")
    for announced, column in zip(schema, batch.columns):
        if not announced.nullable and column.null_count:
            raise MeshError(f"column '{announced.name}' was announced NOT NULL but the result holds NULLs")
    return pa.RecordBatch.from_arrays(batch.columns, schema=schema)


# --- metadata ---------------------------------------------------------------------------------

# Result schemas as the reference implementations declare them (arrow-go's schema_ref, which
# ADBC's driver validates against; the C++ and Java servers agree).  Note key_sequence precedes
# key_name in GetPrimaryKeys, unlike the order in FlightSql.proto's comment.
CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", pa.string(), nullable=False)])
DB_SCHEMAS_SCHEMA = pa.schema([pa.field("catalog_name", pa.string()), pa.field("db_schema_name", pa.string(), nullable=False)])
TABLES_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.string()),
        pa.field("db_schema_name", pa.string()),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("table_type", pa.string(), nullable=False),
    ]
)
TABLES_WITH_SCHEMA_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), nullable=False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", pa.string(), nullable=False)])
PRIMARY_KEYS_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.string()),
        pa.field("db_schema_name", pa.string()),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("column_name", pa.string(), nullable=False),
        pa.field("key_sequence", pa.int32(), nullable=False),
        pa.field("key_name", pa.string()),
    ]
)
FOREIGN_KEYS_SCHEMA = pa.schema(
    [
        pa.field("pk_catalog_name", pa.string()),
        pa.field("pk_db_schema_name", pa.string()),
        pa.field("pk_table_name", pa.string(), nullable=False),
        pa.field("pk_column_name", pa.string(), nullable=False),
        pa.field("fk_catalog_name", pa.string()),
        pa.field("fk_db_schema_name", pa.string()),
        pa.field("fk_table_name", pa.string(), nullable=False),
        pa.field("fk_column_name", pa.string(), nullable=False),
        pa.field("key_sequence", pa.int32(), nullable=False),
        pa.field("fk_key_name", pa.string()),
        pa.field("pk_key_name", pa.string()),
        pa.field("update_rule", pa.uint8(), nullable=False),
        pa.field("delete_rule", pa.uint8(), nullable=False),
    ]
)


def _db_schemas(service: Service, command: pb.CommandGetDbSchemas) -> pa.Table:
    pairs = sorted(service.list_schemas(_optional(command, "catalog"), _optional(command, "db_schema_filter_pattern")))
    return pa.Table.from_pylist([{"catalog_name": c, "db_schema_name": s} for c, s in pairs], schema=DB_SCHEMAS_SCHEMA)


def _tables(service: Service, command: pb.CommandGetTables) -> pa.Table:
    tables = service.list_tables(
        _optional(command, "catalog"),
        _optional(command, "db_schema_filter_pattern"),
        _optional(command, "table_name_filter_pattern"),
        list(command.table_types),
    )
    tables = sorted(tables, key=lambda t: (t.catalog, t.schema, t.name, t.table_type))
    rows: list[dict[str, object]] = [
        {"catalog_name": t.catalog, "db_schema_name": t.schema, "table_name": t.name, "table_type": t.table_type}
        for t in tables
    ]
    if not command.include_schema:
        return pa.Table.from_pylist(rows, schema=TABLES_SCHEMA)
    for row, table in zip(rows, tables):
        row["table_schema"] = annotated_schema(table).serialize().to_pybytes()
    return pa.Table.from_pylist(rows, schema=TABLES_WITH_SCHEMA_SCHEMA)


REMARKS = "ARROW:FLIGHT:SQL:REMARKS"
"""The spec's field-metadata key for a column's comment (added after the others)."""


def annotated_schema(table: TableInfo) -> pa.Schema:
    """``table``'s schema with the ARROW:FLIGHT:SQL:* column metadata the spec defines, which
    JDBC's getColumns and ADBC's get_objects turn into type names, precision, flags and (from
    the contract's column descriptions) remarks."""
    fields = []
    for f in table.arrow_schema:
        metadata = {
            "ARROW:FLIGHT:SQL:CATALOG_NAME": table.catalog,
            "ARROW:FLIGHT:SQL:DB_SCHEMA_NAME": table.schema,
            "ARROW:FLIGHT:SQL:TABLE_NAME": table.name,
            "ARROW:FLIGHT:SQL:TYPE_NAME": sql_type_name(f.type).split("(")[0],  # no (p,s) modifiers
            "ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT": "0",
            "ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE": "1" if pa.types.is_string(f.type) else "0",
            "ARROW:FLIGHT:SQL:IS_READ_ONLY": "1",
            "ARROW:FLIGHT:SQL:IS_SEARCHABLE": "1",
        }
        if pa.types.is_decimal(f.type):
            metadata["ARROW:FLIGHT:SQL:PRECISION"] = str(f.type.precision)
            metadata["ARROW:FLIGHT:SQL:SCALE"] = str(f.type.scale)
        if table.column_descriptions.get(f.name):
            metadata[REMARKS] = table.column_descriptions[f.name]  # JDBC getColumns' REMARKS
        fields.append(f.with_metadata({**(f.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}))
    # GetTables has no column for a table's remarks; the product description travels with its
    # schema under the same key, for clients that look (DESCRIBE and information_schema.tables
    # show it too).
    schema_metadata = {**(table.arrow_schema.metadata or {})}
    if table.description:
        schema_metadata[REMARKS.encode()] = table.description.encode()
    return pa.schema(fields, metadata=schema_metadata or None)


@dataclass(frozen=True)
class _Metadata:
    """A catalog-metadata command: its message, its result schema and how to answer it."""

    message: type[Message]
    schema: Callable[[Any], pa.Schema]
    answer: Callable[[Service, Any], pa.Table]


def _primary_keys(service: Service, command: pb.CommandGetPrimaryKeys) -> pa.Table:
    keys = service.primary_keys(TableFilter(_optional(command, "catalog"), _optional(command, "db_schema"), command.table))
    rows = [
        {
            "catalog_name": k.table.catalog,
            "db_schema_name": k.table.schema,
            "table_name": k.table.table,
            "column_name": k.column,
            "key_sequence": k.sequence,
            "key_name": k.name,
        }
        for k in keys
    ]
    return pa.Table.from_pylist(rows, schema=PRIMARY_KEYS_SCHEMA)


def _foreign_keys_table(keys: Iterable[ForeignKey]) -> pa.Table:
    """Every key is a single column (``references``); the gateway is read-only, so no actions."""
    rows = [
        {
            "pk_catalog_name": k.primary.catalog,
            "pk_db_schema_name": k.primary.schema,
            "pk_table_name": k.primary.table,
            "pk_column_name": k.primary_column,
            "fk_catalog_name": k.foreign.catalog,
            "fk_db_schema_name": k.foreign.schema,
            "fk_table_name": k.foreign.table,
            "fk_column_name": k.foreign_column,
            "key_sequence": 1,
            "fk_key_name": k.name,
            "pk_key_name": k.primary_key_name,
            "update_rule": pb.NO_ACTION,
            "delete_rule": pb.NO_ACTION,
        }
        for k in keys
    ]
    return pa.Table.from_pylist(rows, schema=FOREIGN_KEYS_SCHEMA)


def _imported_keys(service: Service, command: pb.CommandGetImportedKeys) -> pa.Table:
    keys = service.foreign_keys(foreign=TableFilter(_optional(command, "catalog"), _optional(command, "db_schema"), command.table))
    # the spec orders imported keys by the referenced table
    keys.sort(key=lambda k: (k.primary.catalog, k.primary.schema, k.primary.table, k.primary_key_name or "", k.name))
    return _foreign_keys_table(keys)


def _exported_keys(service: Service, command: pb.CommandGetExportedKeys) -> pa.Table:
    filter_ = TableFilter(_optional(command, "catalog"), _optional(command, "db_schema"), command.table)
    return _foreign_keys_table(service.foreign_keys(primary=filter_))


def _cross_reference(service: Service, command: pb.CommandGetCrossReference) -> pa.Table:
    primary = TableFilter(_optional(command, "pk_catalog"), _optional(command, "pk_db_schema"), command.pk_table)
    foreign = TableFilter(_optional(command, "fk_catalog"), _optional(command, "fk_db_schema"), command.fk_table)
    return _foreign_keys_table(service.foreign_keys(primary=primary, foreign=foreign))


_METADATA: dict[str, _Metadata] = {
    "CommandGetSqlInfo": _Metadata(pb.CommandGetSqlInfo, lambda _: SQL_INFO_SCHEMA, lambda _, c: sql_info_table(c.info)),
    "CommandGetXdbcTypeInfo": _Metadata(
        pb.CommandGetXdbcTypeInfo,
        lambda _: XDBC_TYPE_INFO_SCHEMA,
        lambda _, c: xdbc_type_info_table(c.data_type if c.HasField("data_type") else None),
    ),
    "CommandGetCatalogs": _Metadata(
        pb.CommandGetCatalogs,
        lambda _: CATALOGS_SCHEMA,
        lambda s, _: pa.table({"catalog_name": sorted(s.list_catalogs())}, schema=CATALOGS_SCHEMA),
    ),
    "CommandGetDbSchemas": _Metadata(pb.CommandGetDbSchemas, lambda _: DB_SCHEMAS_SCHEMA, _db_schemas),
    "CommandGetTables": _Metadata(
        pb.CommandGetTables, lambda c: TABLES_WITH_SCHEMA_SCHEMA if c.include_schema else TABLES_SCHEMA, _tables
    ),
    "CommandGetTableTypes": _Metadata(
        pb.CommandGetTableTypes,
        lambda _: TABLE_TYPES_SCHEMA,
        lambda s, _: pa.table({"table_type": sorted(s.table_types())}, schema=TABLE_TYPES_SCHEMA),
    ),
    "CommandGetPrimaryKeys": _Metadata(pb.CommandGetPrimaryKeys, lambda _: PRIMARY_KEYS_SCHEMA, _primary_keys),
    "CommandGetImportedKeys": _Metadata(pb.CommandGetImportedKeys, lambda _: FOREIGN_KEYS_SCHEMA, _imported_keys),
    "CommandGetExportedKeys": _Metadata(pb.CommandGetExportedKeys, lambda _: FOREIGN_KEYS_SCHEMA, _exported_keys),
    "CommandGetCrossReference": _Metadata(pb.CommandGetCrossReference, lambda _: FOREIGN_KEYS_SCHEMA, _cross_reference),
}


# --- the server -------------------------------------------------------------------------------

_SESSION_ACTIONS: dict[str, type[Message]] = {
    "SetSessionOptions": pb.SetSessionOptionsRequest,
    "GetSessionOptions": pb.GetSessionOptionsRequest,
    "CloseSession": pb.CloseSessionRequest,
}

_ACTIONS = [
    ("CreatePreparedStatement", "Prepare a SQL query; the result carries its handle, result and parameter schemas."),
    ("ClosePreparedStatement", "Release a prepared statement's handle."),
    ("CancelFlightInfo", "Cancel the running query of a FlightInfo."),
    ("CancelQuery", "Cancel the running query of a FlightInfo (deprecated form of CancelFlightInfo)."),
    ("SetSessionOptions", "Set session options: catalog (mesh), schema (default domain), max_staleness."),
    ("GetSessionOptions", "The session's options."),
    ("CloseSession", "End the session and forget its options."),
]


def anonymous(context: flight.ServerCallContext) -> Principal:
    """The principal of every caller while authentication is off (``--insecure-no-auth``)."""
    return ANONYMOUS


class MeshFlightServer(flight.FlightServerBase):
    """A Flight SQL endpoint over a ``GatewayService``.

    With an ``authenticator`` every call must authenticate (``gateway/flight/auth.py``) and runs
    as that principal; without one, ``principal_for`` names the caller (``anonymous`` by
    default: ``--insecure-no-auth``).  Other ``kwargs`` go to pyarrow (TLS: ``TlsFiles``).
    The server listens as soon as it is constructed; ``port`` is the bound port (useful with
    port 0).
    """

    def __init__(
        self,
        location: str,
        service: Service,
        principal_for: Callable[[flight.ServerCallContext], Principal] = anonymous,
        *,
        authenticator: Authenticator | None = None,
        **kwargs: Any,
    ) -> None:
        middleware = {**kwargs.pop("middleware", {}), sessions.MIDDLEWARE_KEY: sessions.SessionMiddlewareFactory()}
        if authenticator is not None:
            middleware[auth.MIDDLEWARE_KEY] = auth.AuthMiddlewareFactory(authenticator)
            kwargs["auth_handler"] = auth.HandshakeAcceptor()
            principal_for = auth.authenticated_principal
        super().__init__(location, middleware=middleware, **kwargs)
        self.service = service
        self._principal_for = principal_for
        self._prepared = _PreparedStatements()
        self._running = _RunningQueries()
        self._sessions = sessions.Sessions()
        self._option_checks = sessions.option_checks(self._is_domain)

    # --- GetFlightInfo / GetSchema / DoGet ----------------------------------------------------

    @_translating_errors
    def get_flight_info(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        schema, ticket = self._plan(context, descriptor)
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    @_translating_errors
    def get_schema(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        schema, _ = self._plan(context, descriptor)
        return flight.SchemaResult(schema)

    def _plan(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor) -> tuple[pa.Schema, bytes]:
        """The result schema of a command and the ticket that fetches it."""
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise ProtocolError("only command descriptors are supported (Flight SQL); paths name nothing here")
        command = _Command.decode(descriptor.command)
        if command.name == "CommandStatementQuery":
            statement = command.parse(pb.CommandStatementQuery)
            _refuse_transaction(statement)
            principal = self._principal_for(context)
            query = _described(self.service.prepare(
                statement.query, principal, client=context.peer(), default_schema=self._default_schema(context, principal)
            ))
            return query.result_schema, StatementHandle(query.sql, query.result_schema).ticket()
        if command.name == "CommandPreparedStatementQuery":
            handle = command.parse(pb.CommandPreparedStatementQuery).prepared_statement_handle
            prepared = self._prepared.get(handle, self._principal_for(context))
            return prepared.query.result_schema, prepared.ticket()
        if command.name in _METADATA:
            metadata = _METADATA[command.name]
            return metadata.schema(command.parse(metadata.message)), descriptor.command  # its own ticket
        raise _unsupported(command.name, "GetFlightInfo")

    @_translating_errors
    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket) -> flight.FlightDataStream:
        command = _Command.decode(ticket.ticket)
        if command.name == "TicketStatementQuery":
            handle = StatementHandle.decode(command.parse(pb.TicketStatementQuery).statement_handle)
            return self._run(context, ticket.ticket, handle)
        if command.name in _METADATA:
            metadata = _METADATA[command.name]
            view = self.service.visible_to(self._principal_for(context))  # lists what the caller may read
            return flight.RecordBatchStream(metadata.answer(view, command.parse(metadata.message)))
        raise _unsupported(command.name, "DoGet")

    def _run(self, context: flight.ServerCallContext, ticket: bytes, handle: StatementHandle) -> flight.FlightDataStream:
        """Execute a statement and stream it; the client going away or CancelFlightInfo stops it."""
        cancellation = _Cancellation(context)
        self._running.add(ticket, cancellation)
        try:
            principal = self._principal_for(context)
            session = self._sessions.find(sessions.session_cookie(context).session_id, principal.name)
            staleness = parse_duration(session.options.get("max_staleness")) if session else None
            reader = self.service.execute(
                handle.sql, principal, handle.parameter_values(), is_cancelled=cancellation,
                client=context.peer(), default_schema=self._default_schema(context, principal),
                **({"max_staleness": staleness} if staleness is not None else {}),
            )
        except BaseException:
            self._running.end(ticket, cancellation)
            raise
        schema = handle.schema.with_metadata({**(handle.schema.metadata or {}), **(reader.schema.metadata or {})})
        batches = _streamed(reader, schema)
        # However the stream ends (drained, failed, client gone, or never started), pyarrow drops
        # the generator before the call's context: release the query then.
        weakref.finalize(batches, self._end, ticket, cancellation, reader)
        return flight.GeneratorStream(schema, batches)

    def _end(self, ticket: bytes, cancellation: _Cancellation, reader: pa.RecordBatchReader) -> None:
        self._running.end(ticket, cancellation)
        reader.close()

    # --- DoPut: binding parameters --------------------------------------------------------------

    @_translating_errors
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        command = _Command.decode(descriptor.command)
        if command.name == "CommandPreparedStatementUpdate":
            raise ProtocolError(_EXECUTEMANY)  # every statement the gateway prepares is a query
        if command.name != "CommandPreparedStatementQuery":
            raise _unsupported(command.name, "DoPut")
        handle = command.parse(pb.CommandPreparedStatementQuery).prepared_statement_handle
        prepared = self._prepared.get(handle, self._principal_for(context))
        rows = reader.read_all().combine_chunks()
        if rows.num_rows > 1:
            raise ProtocolError(f"{_EXECUTEMANY} (got {rows.num_rows} rows)")
        prepared.parameters = rows.to_batches()[0] if rows.num_rows == 1 else None
        # The handle is unchanged; saying so explicitly is what newer clients expect.
        writer.write(pa.py_buffer(pb.DoPutPreparedStatementResult(prepared_statement_handle=handle).SerializeToString()))

    # --- DoAction ---------------------------------------------------------------------------------

    def list_actions(self, context: flight.ServerCallContext) -> list[flight.ActionType]:
        return [flight.ActionType(name, description) for name, description in _ACTIONS]

    @_translating_errors
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[flight.Result]:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == "CreatePreparedStatement":
            return [flight.Result(pack(self._create_prepared_statement(context, body)))]
        if action.type == "ClosePreparedStatement":
            request = _Command.decode(body).parse(pb.ActionClosePreparedStatementRequest)
            self._prepared.remove(request.prepared_statement_handle)
            return []
        if action.type == "CancelFlightInfo":  # Flight's own action: raw protobuf both ways
            return [flight.Result(self._cancel(_parse_raw(pb.ActionCancelQueryRequest, body, action.type)).SerializeToString())]
        if action.type == "CancelQuery":
            return [flight.Result(pack(self._cancel(_Command.decode(body).parse(pb.ActionCancelQueryRequest))))]
        if action.type in _SESSION_ACTIONS:  # Flight's own actions: raw protobuf both ways
            request = _parse_raw(_SESSION_ACTIONS[action.type], body, action.type)
            return [flight.Result(self._session_action(context, request).SerializeToString())]
        raise _unsupported(action.type, "DoAction")

    def _session_action(self, context: flight.ServerCallContext, request: Message) -> Message:
        """SetSessionOptions creates the session the call's cookie names (gateway/flight/
        sessions.py).  GetSessionOptions of a session that does not exist answers the defaults
        rather than NOT_FOUND: clients hold offered ids of sessions never created, and ADBC
        fails its current-catalog lookups on NOT_FOUND.  Closing is idempotent."""
        owner = self._principal_for(context).name
        cookie = sessions.session_cookie(context)
        if isinstance(request, pb.SetSessionOptionsRequest):
            if cookie.session_id is None:  # every DoAction has a presented or offered id
                raise MeshError("no session id on a DoAction")
            return sessions.set_options(self._sessions.find_or_create(cookie.session_id, owner), request, self._option_checks)
        if isinstance(request, pb.GetSessionOptionsRequest):
            return sessions.get_options(self._sessions.find(cookie.session_id, owner))
        self._sessions.close(cookie.session_id, owner)
        return pb.CloseSessionResult(status=pb.CloseSessionResult.CLOSED)

    def _default_schema(self, context: flight.ServerCallContext, principal: Principal) -> str | None:
        """The session's ``schema`` option: the domain unqualified product names resolve in."""
        session = self._sessions.find(sessions.session_cookie(context).session_id, principal.name)
        schema = session.options.get("schema") if session else None
        return schema if isinstance(schema, str) else None

    def _is_domain(self, name: str) -> bool:
        return any(schema == name for _, schema in self.service.list_schemas(None, None))

    def _create_prepared_statement(self, context: flight.ServerCallContext, body: bytes) -> pb.ActionCreatePreparedStatementResult:
        request = _Command.decode(body).parse(pb.ActionCreatePreparedStatementRequest)
        _refuse_transaction(request)
        principal = self._principal_for(context)
        query = _described(self.service.prepare(
            request.query, principal, client=context.peer(), default_schema=self._default_schema(context, principal)
        ))
        handle = self._prepared.add(_PreparedStatement(query, principal))
        return pb.ActionCreatePreparedStatementResult(
            prepared_statement_handle=handle,
            # The real result schema even for an empty result: JDBC takes an empty one for DML.
            dataset_schema=query.result_schema.serialize().to_pybytes(),
            parameter_schema=query.parameter_schema.serialize().to_pybytes(),
        )

    def _cancel(self, request: pb.ActionCancelQueryRequest) -> pb.ActionCancelQueryResult:
        try:
            info = flight.FlightInfo.deserialize(request.info)
        except (pa.ArrowInvalid, OSError):
            raise ProtocolError("the cancel request does not hold a serialized FlightInfo") from None
        if self._running.cancel(endpoint.ticket.ticket for endpoint in info.endpoints):
            return pb.ActionCancelQueryResult(result=pb.ActionCancelQueryResult.CANCEL_RESULT_CANCELLED)
        return pb.ActionCancelQueryResult(result=pb.ActionCancelQueryResult.CANCEL_RESULT_NOT_CANCELLABLE)  # finished


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS: the server's certificate (chain) and key, and for mutual TLS the CA
    that every client certificate must chain to (a client without one is refused)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def server_options(self) -> dict[str, Any]:
        """The pyarrow server options that turn TLS (and client verification) on."""
        return {
            "tls_certificates": [(self.cert.read_bytes(), self.key.read_bytes())],
            "verify_client": self.client_ca is not None,
            "root_certificates": self.client_ca.read_bytes() if self.client_ca else None,
        }


def serve(
    service: Service,
    host: str = "127.0.0.1",
    port: int = 32010,
    *,
    authenticator: Authenticator | None = None,
    tls: TlsFiles | None = None,
) -> MeshFlightServer:
    """Start a Flight SQL server for ``service`` on ``host:port`` (0 picks a free port):
    ``grpc+tls://`` with ``tls``, else plaintext ``grpc://``."""
    scheme = "grpc+tls" if tls else "grpc"
    return MeshFlightServer(
        f"{scheme}://{host}:{port}", service, authenticator=authenticator, **(tls.server_options() if tls else {})
    )
