"""DuckDB database files, and the in-process DuckDB engine that the parquet connector shares.

Every connection is opened with extension auto-install and auto-load off (a query must never
download code) and with ``integer_division`` on, so ``7 / 2`` is ``3`` as in PostgreSQL, whose
semantics the gateway answers with. DuckDB allows one open result per connection, so each scan
gets its own connection (a cursor of the database) from the pool.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from datetime import datetime
from typing import Any, ClassVar

import duckdb
import pyarrow as pa

from connectors.base import Capabilities, PooledConnector, SourceConfig, files_modified_at

DUCKDB_SETTINGS: dict[str, Any] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "integer_division": True,
}


class DuckDBEngineConnector(PooledConnector[duckdb.DuckDBPyConnection]):
    """Shared base of the DuckDB-run sources: one database handle, a cursor per scan.

    The database is opened on the first scan, not when the connector is created, so a registry
    of many products does not open every file at start-up.
    """

    dialect: ClassVar[str] = "duckdb"
    capabilities: ClassVar[Capabilities] = Capabilities(joins=True, aggregates=True, full_sql=True)

    def __init__(self, config: SourceConfig) -> None:
        super().__init__(config)
        self._database: duckdb.DuckDBPyConnection | None = None
        self._database_lock = threading.Lock()

    @abstractmethod
    def _open_database(self) -> duckdb.DuckDBPyConnection:
        """The database every scan's cursor is taken from."""

    def _connect(self) -> duckdb.DuckDBPyConnection:
        with self._database_lock:
            if self._database is None:
                self._database = self._open_database()
            return self._database.cursor()

    def _disconnect(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.close()

    def _execute(self, conn: duckdb.DuckDBPyConnection, sql: str) -> pa.RecordBatchReader:
        return conn.sql(sql).to_arrow_reader(self.batch_rows)

    def _interrupt(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.interrupt()

    def close(self) -> None:
        """Close the idle cursors and the database. A scan still running in another thread (a
        cancelled query's fetch winding down) keeps the database busy and DuckDB refuses to
        close it then: it is dropped instead, and closes when that last cursor is released."""
        super().close()
        with self._database_lock:
            if self._database is not None:
                try:
                    self._database.close()
                except duckdb.Error:
                    pass
                self._database = None


class DuckDBConnector(DuckDBEngineConnector):
    """A DuckDB database file, opened read-only.

    External file access is off as well: a product's ``query:`` reads the database's tables,
    not arbitrary files on the gateway's host (``read_csv('/etc/passwd')``, ``ATTACH``).
    """

    kind: ClassVar[str] = "duckdb"

    @property
    def source_id(self) -> str:
        return f"duckdb:{self.config.local_path()}"

    def modified_at(self) -> datetime | None:
        """The database file or its write-ahead log, whichever changed last."""
        path = self.config.local_path()
        return files_modified_at([path, path.with_name(path.name + ".wal")])

    def _open_database(self) -> duckdb.DuckDBPyConnection:
        config = {**DUCKDB_SETTINGS, "enable_external_access": False}
        return duckdb.connect(str(self.config.local_path()), read_only=True, config=config)
