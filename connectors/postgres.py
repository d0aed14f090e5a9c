"""PostgreSQL through the ADBC PostgreSQL driver.

The driver hands over types it has no Arrow equivalent for as the ``arrow.opaque`` extension
type over the value's text; most notably ``numeric``. The gateway answers with PostgreSQL
semantics, where ``numeric`` is an exact decimal, so this connector turns it into Arrow
``decimal128``:

- ``numeric(p, s)`` (the column's typmod, which the driver passes in the field metadata
  ``POSTGRESQL:typmod``) becomes ``decimal128(p, s)``, batch by batch, while streaming; with
  ``p > 38`` it stays text (``string``), as no ``decimal128`` holds it.
- Unconstrained ``numeric`` (no typmod: a column declared ``numeric``, and ``sum``, ``avg`` or
  arithmetic over numerics) has no scale until the values are seen. The result is read to the
  end first (as Arrow, no Python rows) and becomes ``decimal128(38, s)`` with ``s`` the largest
  scale among its values, so no value is rounded and none fails half-way through the stream;
  if a value has no ``decimal128`` form (``NaN``, ``Infinity``, more than 38 digits) the column
  stays text, and with no values at all it is ``decimal128(38, 0)``. Casting in the fragment
  (``CAST(x AS numeric(18, 2))``, as the planner does for contract decimals) keeps streaming.
- A ``NaN`` in a ``numeric(p, s)`` column fails the scan with the column named: it has no
  decimal value.

Other opaque types (``void``, extension types unknown to the driver) become their text or
bytes storage, which every engine can handle. Connection failures (server down or restarted)
surface as ``SourceUnavailable``; a pooled connection to a restarted server is dropped and the
query retried once on a new connection (see ``AdbcConnector._is_stale``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Iterator

import adbc_driver_postgresql.dbapi
import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import AdbcConnector, Capabilities, uri_without_password

TYPMOD_KEY = b"POSTGRESQL:typmod"
VARHDRSZ = 4  # PostgreSQL stores typmod = ((precision << 16) | scale) + VARHDRSZ
MAX_DECIMAL128_DIGITS = 38


class _FromValues:
    """Marker for a column whose type only its values can tell (unconstrained numeric)."""


FROM_VALUES = _FromValues()


class PostgresConnector(AdbcConnector):
    kind: ClassVar[str] = "postgres"
    dialect: ClassVar[str] = "postgres"
    capabilities: ClassVar[Capabilities] = Capabilities(joins=True, aggregates=True, full_sql=True, max_in_list=100_000)
    dbapi = adbc_driver_postgresql.dbapi

    @property
    def source_id(self) -> str:
        # The user stays in: two products on one database but with different users must not
        # be joined inside it with one user's rights.
        return f"postgres:{uri_without_password(self.config.uri)}"

    def _adapt(self, conn: Any, sql: str, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        return with_decimals(reader)


def with_decimals(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """The driver's stream with numerics as decimals and other opaque types unwrapped."""
    targets = [target_type(field) for field in reader.schema]
    if all(target is None for target in targets):
        return reader
    batches: Iterable[pa.RecordBatch] = reader
    if any(isinstance(target, _FromValues) for target in targets):
        # Unconstrained numerics: read the whole result first, so that the scale fits every value.
        table = reader.read_all()
        batches = table.to_batches()
        targets = [
            infer_decimal(_storage(table.column(i))) if isinstance(target, _FromValues) else target
            for i, target in enumerate(targets)
        ]
    schema = _converted_schema(reader.schema, targets)
    return pa.RecordBatchReader.from_batches(schema, _convert_batches(batches, schema, targets))


def target_type(field: pa.Field) -> pa.DataType | _FromValues | None:
    """What a driver column becomes: ``None`` to keep it, ``FROM_VALUES`` for unconstrained numeric."""
    if not isinstance(field.type, pa.OpaqueType):
        return None
    if field.type.type_name != "numeric":
        return field.type.storage_type
    typmod = int((field.metadata or {}).get(TYPMOD_KEY, b"-1"))
    if typmod < VARHDRSZ:
        return FROM_VALUES
    packed = typmod - VARHDRSZ
    precision = (packed >> 16) & 0xFFFF
    scale = ((packed & 0x7FF) ^ 1024) - 1024  # 11-bit signed: PostgreSQL 15 allows scale < 0
    return pa.decimal128(precision, scale) if precision <= MAX_DECIMAL128_DIGITS else pa.string()


def infer_decimal(values: pa.ChunkedArray) -> pa.DataType:
    """``decimal128(38, s)`` holding every value exactly, or ``string`` when no decimal128 can."""
    values = values.drop_null()
    if len(values) == 0:
        return pa.decimal128(MAX_DECIMAL128_DIGITS, 0)
    if not pc.all(pc.match_substring_regex(values, r"^-?[0-9]+(\.[0-9]+)?$")).as_py():
        return pa.string()  # NaN, Infinity, -Infinity
    dot = pc.find_substring(values, ".")
    has_dot = pc.greater_equal(dot, 0)
    scale = pc.if_else(has_dot, pc.subtract(pc.subtract(pc.utf8_length(values), dot), 1), 0)
    significant = pc.utf8_length(pc.utf8_ltrim(values, characters="-0"))  # "-0.05" -> ".05"
    integer_digits = pc.if_else(has_dot, pc.subtract(pc.subtract(significant, scale), 1), significant)
    max_scale = pc.max(scale).as_py()
    if pc.max(integer_digits).as_py() + max_scale > MAX_DECIMAL128_DIGITS:
        return pa.string()
    return pa.decimal128(MAX_DECIMAL128_DIGITS, max_scale)


def _storage(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """An opaque column's text values."""
    return pa.chunked_array([chunk.storage for chunk in column.chunks], type=column.type.storage_type)


def _converted_schema(schema: pa.Schema, targets: list[pa.DataType | None]) -> pa.Schema:
    return pa.schema(
        [field if target is None else field.with_type(target) for field, target in zip(schema, targets)],
        metadata=schema.metadata,
    )


def _convert_batches(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    targets: list[pa.DataType | None],
) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        columns = []
        for column, field, target in zip(batch.columns, schema, targets):
            if target is None:
                columns.append(column)
                continue
            storage = column.storage if isinstance(column, pa.ExtensionArray) else column
            try:
                columns.append(storage.cast(target))
            except pa.ArrowInvalid as err:
                raise ValueError(
                    f"column {field.name}: a PostgreSQL numeric value has no {target} form ({err}); "
                    "cast it to text, or filter out NaN/Infinity, in the query"
                ) from err
        yield pa.RecordBatch.from_arrays(columns, schema=schema)
