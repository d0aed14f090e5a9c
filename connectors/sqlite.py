"""SQLite database files, through the ADBC SQLite driver, opened read-only.

Two limits of the driver shape this connector:

- **Types are inferred from values.** SQLite columns have no fixed type; the driver types each
  result column from the values in its first batch (``batch_rows`` rows) and fails if a later
  value does not fit (a TEXT after only NULLs, a REAL in a NUMERIC column after only whole
  numbers). An empty result would come back as all ``int64``; for that case this connector
  reports the columns' declared types instead, so ``schema()`` and ``LIMIT 0`` probes are right.
- **No cancel.** The driver does not implement ``AdbcStatementCancel``. A cancelled scan stops
  at the next batch boundary; as SQLite computes rows lazily, that stops the source's work too,
  except for a sort or a join whose first batch is still being computed (SQLite here takes no
  aggregates).

Capabilities are conservative: SQLite keeps dates as text and its ``CAST`` differs from
PostgreSQL's (``CAST('1994-01-01' AS DATE)`` is 1994), so it gets projections, filters that
compare columns with literals, limits and joins, never aggregates or arbitrary SQL.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

import adbc_driver_sqlite.dbapi
import pyarrow as pa

from connectors.base import AdbcConnector, Capabilities, files_modified_at
from gateway.errors import SourceUnavailable

TYPE_MISMATCH_HINT = (
    "; the driver types a SQLite column from its first {rows} values: CAST the column in "
    "spec.source.query (e.g. CAST(price AS REAL) or CAST(code AS TEXT))"
)


class SQLiteConnector(AdbcConnector):
    kind: ClassVar[str] = "sqlite"
    dialect: ClassVar[str] = "sqlite"
    capabilities: ClassVar[Capabilities] = Capabilities(
        joins=True, aggregates=False, full_sql=False, portable_filters_only=True, regex=False, max_in_list=50_000
    )
    dbapi = adbc_driver_sqlite.dbapi

    @property
    def source_id(self) -> str:
        return f"sqlite:{self.config.local_path()}"

    def modified_at(self) -> datetime | None:
        """The database file or its write-ahead log, whichever changed last."""
        path = self.config.local_path()
        return files_modified_at([path, path.with_name(path.name + "-wal")])

    def _connect(self) -> Any:
        path = self.config.local_path()
        if not path.is_file():  # SQLite would report this as "failed to allocate memory"
            raise SourceUnavailable(f"source {self.display_name}: no SQLite database file at {path}")
        return super()._connect()

    def _driver_uri(self) -> str:
        # mode=ro: never write, and fail on a missing file instead of creating an empty one.
        return f"file:{quote(str(self.config.local_path()))}?mode=ro"

    def _statement_options(self) -> dict[str, str]:
        return {adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(self.batch_rows)}

    def _interrupt(self, conn: Any) -> None:
        """Nothing to call: the driver cannot cancel; the scan stops at the next batch."""

    def _adapt(self, conn: Any, sql: str, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        try:
            first = reader.read_next_batch()
        except StopIteration:
            return declared_schema(conn, sql, reader.schema).empty_table().to_reader()
        return pa.RecordBatchReader.from_batches(reader.schema, itertools.chain([first], reader))

    def source_error(self, err: BaseException) -> SourceUnavailable:
        error = super().source_error(err)
        if "Type mismatch in column" in error.message:
            return SourceUnavailable(error.message + TYPE_MISMATCH_HINT.format(rows=self.batch_rows))
        return error


def declared_schema(cursor: Any, sql: str, inferred: pa.Schema) -> pa.Schema:
    """The result's columns typed by their declared SQLite types where they have one.

    SQLite knows the declared type of a result column that is a plain table column; a
    temporary view over the query exposes it through ``PRAGMA table_info`` (temporary objects
    are allowed on a read-only connection). Computed columns keep the driver's type, and so
    does every column if the query cannot be a view: this only improves a guess.
    """
    view = f"_meshgate_probe_{uuid.uuid4().hex}"
    try:
        cursor.execute(f"CREATE TEMP VIEW {view} AS {sql}")
        try:
            cursor.execute(f"PRAGMA temp.table_info({view})")
            declared = cursor.fetch_arrow_table().column("type").to_pylist()
        finally:
            cursor.execute(f"DROP VIEW temp.{view}")
    except adbc_driver_sqlite.dbapi.Error:
        return inferred
    fields = [
        field.with_type(arrow_type) if (arrow_type := affinity_type(decl)) is not None else field
        for field, decl in zip(inferred, declared)
    ]
    return pa.schema(fields, metadata=inferred.metadata)


def affinity_type(declared: str | None) -> pa.DataType | None:
    """The Arrow type the driver gives values of a declared SQLite type, by SQLite's column
    affinity rules (https://sqlite.org/datatype3.html, section 3.1), checked in its order."""
    name = (declared or "").upper()
    if not name:
        return None
    if "INT" in name:
        return pa.int64()
    if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in name:
        return pa.binary()
    if any(word in name for word in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    # NUMERIC affinity: dates and times stay the text SQLite cannot turn into numbers.
    if "DATE" in name or "TIME" in name:
        return pa.string()
    if "BOOL" in name:
        return pa.int64()
    return pa.float64()
