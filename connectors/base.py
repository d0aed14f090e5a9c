"""The one small interface every source kind implements.

The planner never assumes what a source can do: it asks the connector (Trino's SPI idea). A
connector says which SQL dialect it speaks, which parts of a query it can take (projections,
filters, limits, joins, aggregates, arbitrary SQL) and how a product's table is named in that
dialect; the gateway hands it finished SQL and gets Arrow back, never Python rows.

Connectors are plugins: a new source kind is a class registered under the entry-point group
``meshgate.connectors`` (see ``connectors/__init__.py``).
"""

from __future__ import annotations

import queue
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ClassVar, Generic, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from gateway.errors import InvalidQuery, MeshError, QueryCancelled, SourceUnavailable


@dataclass(frozen=True)
class Capabilities:
    """What part of a query a source can evaluate itself.

    ``portable_filters_only`` marks engines whose expression semantics differ from
    PostgreSQL's beyond what the dialect translation covers (SQLite keeps dates as text, say):
    they get only comparisons of columns with literals, which mean the same everywhere.
    ``regex`` says the dialect has a regular-expression match (PostgreSQL's ``~``), which
    contract ``pattern`` checks need; SQLite has no REGEXP function unless one is loaded.
    ``max_in_list`` is the longest ``IN (...)`` list of join keys (a dynamic filter) worth
    sending: parsing a literal list costs DuckDB about 10 µs per value, PostgreSQL far less.
    """

    projections: bool = True
    filters: bool = True
    limit: bool = True
    joins: bool = False
    aggregates: bool = False
    full_sql: bool = False
    portable_filters_only: bool = False
    regex: bool = True
    max_in_list: int = 5_000


@dataclass(frozen=True)
class Freshness:
    """How new a relation's data is: what SLA monitoring, data-age metrics and cache watermarks read.

    ``as_of`` (UTC) is the newest value of the product's freshness column when it has one, else
    when the source's files last changed; None when neither is known (an empty table, a server
    source without a freshness column). ``basis`` says which, for humans.
    """

    as_of: datetime | None
    basis: str

    def age(self, now: datetime | None = None) -> float | None:
        """Seconds since ``as_of``; None when unknown."""
        if self.as_of is None:
            return None
        return ((now or datetime.now(timezone.utc)) - self.as_of).total_seconds()


@dataclass(frozen=True)
class SourceConfig:
    """Where a product's data lives, as written in its descriptor's ``spec.source``."""

    connector: str
    uri: str
    base_dir: Path | None = None
    allowed_directories: tuple[str, ...] = ()  # file access is limited to these (the gateway's source roots)

    def local_path(self) -> Path:
        """``uri`` as an absolute file-system path (file sources), relative to ``base_dir``.

        A descriptor names its files relative to its own folder, so the same product works
        wherever the gateway was started.
        """
        path = Path(self.uri)
        if not path.is_absolute():
            path = (self.base_dir or Path.cwd()) / path
        return path.resolve()


class Scan:
    """A fragment being read: the Arrow stream plus a way to stop the source's work.

    ``reader`` may be given as a function that starts the query: it is then called on the first
    use of ``reader``, so the query runs while ``cancel`` can already stop it (DuckDB and
    PostgreSQL compute a whole aggregate before they return the first batch). A scan cancelled
    before it started never starts. ``close`` is always called (by the engine) and gives the
    connection back to its pool.
    """

    def __init__(
        self,
        reader: pa.RecordBatchReader | Callable[[], pa.RecordBatchReader],
        cancel: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        if isinstance(reader, pa.RecordBatchReader):
            self._reader: pa.RecordBatchReader | None = reader
            self._start: Callable[[], pa.RecordBatchReader] | None = None
        else:
            self._reader, self._start = None, reader
        self._cancel = cancel
        self._close = close
        self._closed = False
        self.cancelled = False

    @property
    def reader(self) -> pa.RecordBatchReader:
        """The result stream; for a lazily started scan, first use runs the query."""
        if self._reader is None:
            if self.cancelled:
                raise QueryCancelled("the scan was cancelled before its query started")
            assert self._start is not None
            self._reader = self._start()
        return self._reader

    def cancel(self) -> None:
        """Ask the source to stop; safe to call from another thread, and more than once."""
        self.cancelled = True
        try:
            self._cancel()
        except Exception:  # noqa: BLE001 - a failed cancel must not mask the original error
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()


T = TypeVar("T")


class ConnectionPool(Generic[T]):
    """Idle connections for one source, one per concurrent fragment.

    Connections are never shared between threads (a shared ADBC PostgreSQL connection
    deadlocked under concurrent fetches); a connection that saw an error is discarded so a
    restarted source is reconnected to on the next scan.
    """

    def __init__(self, connect: Callable[[], T], close: Callable[[T], None], max_idle: int = 8):
        self._connect = connect
        self._close = close
        self._idle: queue.LifoQueue[T] = queue.LifoQueue(maxsize=max_idle)

    def acquire(self) -> T:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def release(self, conn: T, healthy: bool) -> None:
        if healthy:
            try:
                self._idle.put_nowait(conn)
                return
            except queue.Full:
                pass
        try:
            self._close(conn)
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
            pass

    def close_all(self) -> None:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            self.release(conn, healthy=False)


class Connector(ABC):
    """One source: a database, a file set or a remote Flight SQL server."""

    kind: ClassVar[str]
    dialect: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, config: SourceConfig) -> None:
        self.config = config

    @property
    @abstractmethod
    def source_id(self) -> str:
        """Identity of the engine behind this connector: equal ids can join inside the source."""

    @property
    def display_name(self) -> str:
        """How errors and EXPLAIN name the source: kind and location, secrets removed."""
        return f"{self.kind}:{redact_uri(self.config.uri)}"

    @abstractmethod
    def relation(self, table: str | None, query: str | None) -> exp.Expression:
        """The FROM item that reads a product: a table name or a parenthesised query."""

    @abstractmethod
    def open_scan(self, sql: str) -> Scan:
        """Start running ``sql`` (already in this connector's dialect) and stream its result."""

    def scan(self, sql: str) -> Scan:
        """Run a fragment, turning driver errors into a ``SourceUnavailable`` naming the source."""
        try:
            return self.open_scan(sql)
        except MeshError:
            raise
        except Exception as err:  # noqa: BLE001 - every driver has its own error classes
            raise self.source_error(err) from err

    def source_error(self, err: BaseException) -> SourceUnavailable:
        """The error a client sees for a driver failure: the source's name and the driver's
        first line, with anything that looks like a password removed (drivers echo URIs)."""
        return SourceUnavailable(f"source {self.display_name} failed: {redact_uri(_first_line(err))}")

    def schema(self, table: str | None, query: str | None) -> pa.Schema:
        """The Arrow schema the source reports for a product's relation (no rows are read)."""
        relation = self.relation(table, query)
        select = exp.select("*").from_(relation.copy()).limit(0)
        scan = self.scan(self.render(select))
        try:
            return scan.reader.schema
        finally:
            scan.close()

    def row_count(self, table: str | None, query: str | None) -> int:
        """Rows in the relation: the statistic the planner may use to order joins."""
        relation = self.relation(table, query)
        select = exp.select(exp.Count(this=exp.Star()).as_("n")).from_(relation.copy())
        scan = self.scan(self.render(select))
        try:
            return int(scan.reader.read_all().column(0)[0].as_py())
        finally:
            scan.close()

    def freshness(self, table: str | None, query: str | None, column: str | None = None) -> Freshness:
        """The newest ``column`` value in the relation (one ``max()`` pushed to the source), or,
        without a column, when the source's files last changed (``modified_at``)."""
        if column is None:
            modified = self.modified_at()
            return Freshness(modified, "files modified" if modified else "unknown")
        relation = self.relation(table, query)
        select = exp.select(exp.Max(this=exp.column(column, quoted=True)).as_("newest")).from_(relation.copy())
        scan = self.scan(self.render(select))
        try:
            newest = scan.reader.read_all().column(0)[0].as_py()
        finally:
            scan.close()
        return Freshness(as_utc(newest), f"max({column})")

    def modified_at(self) -> datetime | None:
        """When the source's files last changed (UTC); None for servers, which have no such time."""
        return None

    def render(self, expression: exp.Expression) -> str:
        """SQL text for this source, re-parsed in its dialect so that a mistranslation fails
        here, loudly, instead of returning wrong rows."""
        sql = expression.sql(dialect=self.dialect)
        sqlglot.parse_one(sql, read=self.dialect)
        return sql

    def close(self) -> None:
        """Release pooled connections; the gateway calls this when the source is dropped."""


C = TypeVar("C")


class PooledConnector(Connector, Generic[C]):
    """The scan machinery shared by every connector that talks to its source through a pool of
    connections (each subclass says how to connect, run a query and interrupt it).

    A scan takes its connection from the pool at once, so an unreachable source fails in
    ``scan()``, but runs the query only when the reader is first used (see ``Scan``). The stream
    is wrapped so that a driver error while reading becomes a ``SourceUnavailable`` naming the
    source (or ``QueryCancelled`` after a cancel), and so that the connection returns to the
    pool only when its result was read to the end: a failed, cancelled or half-read result can
    leave a connection unusable, and a fresh connection is cheap next to a wrong one.
    """

    #: Rows per Arrow batch, where the driver lets us choose: large enough to amortise per-batch
    #: overhead, small enough to stream and to let a cancel take effect between batches.
    batch_rows: ClassVar[int] = 65_536

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._pool: ConnectionPool[C] = ConnectionPool(self._connect, self._disconnect)
        self._closed = False

    @abstractmethod
    def _connect(self) -> C:
        """A new connection, used by one scan at a time."""

    @abstractmethod
    def _disconnect(self, conn: C) -> None:
        """Close a connection for good."""

    @abstractmethod
    def _execute(self, conn: C, sql: str) -> pa.RecordBatchReader:
        """Run ``sql`` on ``conn``; may block until the source has the first batch."""

    @abstractmethod
    def _interrupt(self, conn: C) -> None:
        """Stop the query running on ``conn``; called from another thread."""

    def _is_stale(self, err: Exception) -> bool:
        """Whether ``err`` says the connection itself is dead (the server restarted), so the
        query is worth one retry on a new connection."""
        return False

    def _adapt(self, conn: C, sql: str, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        """Hook: turn the driver's stream into the types the gateway expects."""
        return reader

    def relation(self, table: str | None, query: str | None) -> exp.Expression:
        """A table name, or ``(query) AS _src``, both parsed in this source's dialect."""
        if (table is None) == (query is None):
            raise InvalidQuery(f"source {self.display_name}: give either a table or a query")
        if table is not None:
            return exp.to_table(table, dialect=self.dialect)
        assert query is not None
        return parse_query(query, self.dialect, self.display_name).subquery("_src")

    def open_scan(self, sql: str) -> Scan:
        running = _PooledScan(self, sql)
        return Scan(running.start, running.cancel, running.close)

    def close(self) -> None:
        self._closed = True
        self._pool.close_all()


class AdbcConnector(PooledConnector[Any]):
    """Shared base of the ADBC-backed connectors (PostgreSQL, SQLite, Flight SQL).

    A pooled item is a DB-API cursor with its own connection: one connection per concurrent
    fragment (a shared ADBC PostgreSQL connection deadlocked), and the cursor's ADBC statement
    keeps the options set once at connect. Connections run in autocommit, so no pooled
    connection sits "idle in transaction" holding a snapshot (PostgreSQL) or a read lock that
    blocks writers (SQLite).
    """

    #: The driver's DB-API module, e.g. ``adbc_driver_postgresql.dbapi``.
    dbapi: ClassVar[ModuleType]

    def _driver_uri(self) -> str:
        """What the driver connects to; defaults to the descriptor's ``uri``."""
        return self.config.uri

    def _database_options(self) -> dict[str, str]:
        """ADBC database options (credentials, timeouts)."""
        return {}

    def _statement_options(self) -> dict[str, str]:
        """ADBC statement options set on every pooled cursor (batch sizes)."""
        return {}

    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {"autocommit": True}
        if options := self._database_options():
            kwargs["db_kwargs"] = options  # not every driver's connect() takes db_kwargs
        conn = self.dbapi.connect(self._driver_uri(), **kwargs)
        try:
            cursor = conn.cursor()
            if statement_options := self._statement_options():
                cursor.adbc_statement.set_options(**statement_options)
        except BaseException:
            conn.close()
            raise
        return cursor

    def _disconnect(self, conn: Any) -> None:
        try:
            conn.close()  # ADBC refuses to close a connection that still has an open statement
        finally:
            conn.connection.close()

    def _execute(self, conn: Any, sql: str) -> pa.RecordBatchReader:
        conn.execute(sql)
        return conn.fetch_record_batch()

    def _interrupt(self, conn: Any) -> None:
        conn.adbc_cancel()

    def _is_stale(self, err: Exception) -> bool:
        # Connection-level failures are OperationalError without an SQLSTATE from the server,
        # or with class 08 (connection exception) / 57P01 (admin shutdown); an SQL error
        # (syntax, division by zero) is another class, and running it again would not help.
        if not isinstance(err, self.dbapi.OperationalError):
            return False
        sqlstate = getattr(err, "sqlstate", None)
        return sqlstate is None or sqlstate.startswith("08") or sqlstate == "57P01"


class _PooledScan(Generic[C]):
    """One scan's connection and result, shared by the reading thread and a cancelling one."""

    def __init__(self, connector: PooledConnector[C], sql: str) -> None:
        self._connector = connector
        self._sql = sql
        self._lock = threading.Lock()
        self._conn: C | None = connector._pool.acquire()
        self._readers: list[pa.RecordBatchReader] = []
        self._reusable = True  # nothing started yet: the connection is as good as we got it
        self._cancelled = False

    def start(self) -> pa.RecordBatchReader:
        self._reusable = False
        try:
            source = self._execute()
            self._readers.append(source)
            assert self._conn is not None
            adapted = self._connector._adapt(self._conn, self._sql, source)
            self._readers.append(adapted)
        except Exception as err:  # noqa: BLE001 - driver errors of every kind
            raise self._failure(err) from err
        return pa.RecordBatchReader.from_batches(adapted.schema, self._batches(adapted))

    def _execute(self) -> pa.RecordBatchReader:
        if self._cancelled:
            raise QueryCancelled(f"scan of {self._connector.display_name} was cancelled before it started")
        assert self._conn is not None
        try:
            return self._connector._execute(self._conn, self._sql)
        except Exception as err:  # noqa: BLE001
            if self._cancelled or not self._connector._is_stale(err):
                raise
        # A pooled connection the server dropped (restart, idle timeout). Fragments only read,
        # so running this one again on a new connection is safe; a second failure is reported.
        with self._lock:
            stale, self._conn = self._conn, None
        self._connector._pool.release(stale, healthy=False)
        fresh = self._connector._connect()
        with self._lock:
            self._conn = fresh
        if self._cancelled:
            raise QueryCancelled(f"scan of {self._connector.display_name} was cancelled")
        return self._connector._execute(fresh, self._sql)

    def _batches(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        while True:
            if self._cancelled:
                # Sources that cannot interrupt a running query stop here, at a batch boundary.
                raise QueryCancelled(f"scan of {self._connector.display_name} was cancelled")
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                self._reusable = True
                return
            except Exception as err:  # noqa: BLE001
                raise self._failure(err) from err
            yield batch

    def _failure(self, err: Exception) -> MeshError:
        if isinstance(err, MeshError):
            return err
        if self._cancelled:
            return QueryCancelled(f"scan of {self._connector.display_name} was cancelled")
        return self._connector.source_error(err)

    def cancel(self) -> None:
        self._cancelled = True
        with self._lock:
            conn = self._conn
        if conn is not None:
            self._connector._interrupt(conn)

    def close(self) -> None:
        for reader in reversed(self._readers):
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - the connection is judged below, not by this
                pass
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # After a cancel, DuckDB keeps the interrupt pending for the next query: never reuse.
            healthy = self._reusable and not self._cancelled and not self._connector._closed
            self._connector._pool.release(conn, healthy)


def as_utc(value: Any) -> datetime | None:
    """A freshness column's value as an aware UTC datetime: dates are midnight UTC, naive
    timestamps are taken as UTC, and text (SQLite stores timestamps as text) is parsed as ISO 8601.
    Anything else (a number, unparsable text) is None: unknown, never a guess."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    return None


def files_modified_at(paths: Iterator[Path] | list[Path]) -> datetime | None:
    """The newest modification time among ``paths`` that exist (UTC); None if none does."""
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return datetime.fromtimestamp(max(times), timezone.utc) if times else None


def parse_query(query: str, dialect: str, source: str) -> exp.Query:
    """A product's ``query:`` parsed in its source's dialect; only a single read query passes."""
    try:
        parsed = sqlglot.parse_one(query, read=dialect)
    except ParseError as err:
        raise InvalidQuery(
            f"source {source}: spec.source.query does not parse as {dialect}: {_first_line(err)}"
        ) from err
    if not isinstance(parsed, exp.Query):
        raise InvalidQuery(f"source {source}: spec.source.query must be one SELECT query, not {parsed.key.upper()}")
    return parsed


def uri_without_password(uri: str) -> str:
    """The URI minus its password (userinfo or ``password=`` option): an identity for a
    server and user that can be logged and compared, unlike ``redact_uri``'s placeholder."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = userinfo.split(":", 1)[0] + "@" + host
    query = "&".join(p for p in parts.query.split("&") if p and not p.lower().startswith("password="))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_uri(uri: str) -> str:
    """Hide a password in ``scheme://user:password@host/...`` (and ``password=`` options). The
    password runs to the last ``@`` of the word: an unencoded ``@`` in it must not leave its tail."""
    uri = re.sub(r"(://[^:/@\s]+:)\S*@", r"\1***@", uri)
    return re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", uri)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


__all__ = [
    "AdbcConnector",
    "Capabilities",
    "ConnectionPool",
    "Connector",
    "PooledConnector",
    "Scan",
    "SourceConfig",
    "parse_query",
    "redact_uri",
    "uri_without_password",
]
