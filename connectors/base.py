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
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Generic, TypeVar

import pyarrow as pa
import sqlglot
from sqlglot import exp

from gateway.errors import SourceUnavailable


@dataclass(frozen=True)
class Capabilities:
    """What part of a query a source can evaluate itself.

    ``portable_filters_only`` marks engines whose expression semantics differ from
    PostgreSQL's beyond what the dialect translation covers (SQLite keeps dates as text, say):
    they get only comparisons of columns with literals, which mean the same everywhere.
    """

    projections: bool = True
    filters: bool = True
    limit: bool = True
    joins: bool = False
    aggregates: bool = False
    full_sql: bool = False
    portable_filters_only: bool = False


@dataclass(frozen=True)
class SourceConfig:
    """Where a product's data lives, as written in its descriptor's ``spec.source``."""

    connector: str
    uri: str
    base_dir: Path | None = None


class Scan:
    """A fragment being read: the Arrow stream plus a way to stop the source's work.

    ``close`` is always called (by the engine) and gives the connection back to its pool.
    """

    def __init__(
        self,
        reader: pa.RecordBatchReader,
        cancel: Callable[[], None],
        close: Callable[[], None],
    ) -> None:
        self.reader = reader
        self._cancel = cancel
        self._close = close
        self._closed = False

    def cancel(self) -> None:
        """Ask the source to stop; safe to call from another thread, and more than once."""
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
        except SourceUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - every driver has its own error classes
            raise SourceUnavailable(f"source {self.display_name} failed: {_first_line(err)}") from err

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

    def render(self, expression: exp.Expression) -> str:
        """SQL text for this source, re-parsed in its dialect so that a mistranslation fails
        here, loudly, instead of returning wrong rows."""
        sql = expression.sql(dialect=self.dialect)
        sqlglot.parse_one(sql, read=self.dialect)
        return sql

    def close(self) -> None:
        """Release pooled connections; the gateway calls this when the source is dropped."""


def redact_uri(uri: str) -> str:
    """Hide a password in ``scheme://user:password@host/...`` (and ``password=`` options)."""
    uri = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)
    return re.sub(r"(?i)(password=)[^&;\s]*", r"\1***", uri)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:500]


__all__ = [
    "Capabilities",
    "ConnectionPool",
    "Connector",
    "Scan",
    "SourceConfig",
    "redact_uri",
]
