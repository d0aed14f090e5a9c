"""What the gateway tells Flight SQL clients about its SQL: GetSqlInfo and GetXdbcTypeInfo.

JDBC's ``DatabaseMetaData`` and ADBC's ``get_info`` are answered from these tables, and BI tools
decide from them what SQL to generate (quoting, NULL ordering, whether to try transactions or
DDL).  The answers describe the PostgreSQL dialect the gateway accepts and its read-only nature;
they are static facts, so they live here as data rather than in the request handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import pyarrow as pa

import gateway
from gateway.flight import FlightSql_pb2 as pb


@dataclass(frozen=True)
class Int32:
    """An int32 answer (an enum ordinal or a bitmask); a bare ``int`` is an int64 answer."""

    value: int


SqlInfoValue = str | bool | int | Int32 | Sequence[str] | Mapping[int, Sequence[int]]

# The spec's union member order is its type codes 0..5; ADBC and JDBC read members by code.
_VALUE_TYPE = pa.dense_union(
    [
        pa.field("string_value", pa.string(), nullable=False),
        pa.field("bool_value", pa.bool_(), nullable=False),
        pa.field("bigint_value", pa.int64(), nullable=False),
        pa.field("int32_bitmask", pa.int32(), nullable=False),
        pa.field("string_list", pa.list_(pa.string()), nullable=False),
        pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), nullable=False),
    ]
)
SQL_INFO_SCHEMA = pa.schema(
    [pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", _VALUE_TYPE, nullable=False)]
)


def bits(*positions: int) -> Int32:
    """A bitmask answer from the enum values whose bits are set."""
    return Int32(sum(1 << p for p in positions))


def _to(*targets: int) -> list[int]:
    return sorted(set(targets))


_NUMERIC = (
    pb.SQL_CONVERT_BIGINT,
    pb.SQL_CONVERT_INTEGER,
    pb.SQL_CONVERT_SMALLINT,
    pb.SQL_CONVERT_DECIMAL,
    pb.SQL_CONVERT_NUMERIC,
    pb.SQL_CONVERT_FLOAT,
    pb.SQL_CONVERT_REAL,
)
_TEXT = (pb.SQL_CONVERT_VARCHAR, pb.SQL_CONVERT_CHAR, pb.SQL_CONVERT_LONGVARCHAR)
# CAST(x AS t) pairs the engine evaluates (PostgreSQL semantics: anything casts to text, text
# casts to anything that parses, numbers among themselves, date <-> timestamp).
_CONVERSIONS: dict[int, list[int]] = {
    **{n: _to(*_NUMERIC, *_TEXT, pb.SQL_CONVERT_BIT) for n in _NUMERIC},
    **{
        t: _to(*_NUMERIC, *_TEXT, pb.SQL_CONVERT_BIT, pb.SQL_CONVERT_DATE, pb.SQL_CONVERT_TIMESTAMP, pb.SQL_CONVERT_VARBINARY)
        for t in _TEXT
    },
    pb.SQL_CONVERT_BIT: _to(pb.SQL_CONVERT_BIT, pb.SQL_CONVERT_INTEGER, pb.SQL_CONVERT_BIGINT, *_TEXT),
    pb.SQL_CONVERT_DATE: _to(pb.SQL_CONVERT_DATE, pb.SQL_CONVERT_TIMESTAMP, *_TEXT),
    pb.SQL_CONVERT_TIMESTAMP: _to(pb.SQL_CONVERT_DATE, pb.SQL_CONVERT_TIMESTAMP, *_TEXT),
    pb.SQL_CONVERT_VARBINARY: _to(pb.SQL_CONVERT_VARBINARY, *_TEXT),
}

_NO_LIMIT = 0  # JDBC's "no limit, or not known" for the SQL_MAX_* answers


# JDBC asks for the keywords that are *not* SQL:2003 keywords; these are PostgreSQL's that the
# gateway's dialect knows, plus its own SHOW/DESCRIBE/EXPLAIN.
KEYWORDS = [
    "ANALYSE", "ANALYZE", "DESCRIBE", "EXPLAIN", "ILIKE", "LIMIT", "NOTNULL", "OFFSET",
    "SHOW", "TABLES", "SCHEMAS", "VERBOSE",
]
NUMERIC_FUNCTIONS = [
    "ABS", "ACOS", "ASIN", "ATAN", "ATAN2", "CBRT", "CEIL", "COS", "COT", "DEGREES",
    "EXP", "FLOOR", "LN", "LOG", "LOG10", "PI", "POWER", "RADIANS", "RANDOM", "ROUND",
    "SIGN", "SIN", "SQRT", "TAN", "TRUNC",
]
STRING_FUNCTIONS = [
    "ASCII", "BTRIM", "CHARACTER_LENGTH", "CHR", "CONCAT", "CONCAT_WS", "INITCAP", "LEFT",
    "LENGTH", "LOWER", "LPAD", "LTRIM", "MD5", "OCTET_LENGTH", "REPEAT", "REPLACE", "REVERSE",
    "RIGHT", "RPAD", "RTRIM", "SPLIT_PART", "STARTS_WITH", "STRPOS", "SUBSTR", "SUBSTRING",
    "TRANSLATE", "TRIM", "UPPER",
]
SYSTEM_FUNCTIONS = ["COALESCE", "GREATEST", "LEAST", "NULLIF"]
DATETIME_FUNCTIONS = [
    "CURRENT_DATE", "CURRENT_TIMESTAMP", "DATE_PART", "DATE_TRUNC", "EXTRACT", "MAKE_DATE",
    "NOW", "TO_CHAR", "TO_TIMESTAMP",
]



def sql_info_values() -> dict[int, SqlInfoValue]:
    """Every SqlInfo id the gateway answers, with its value in the type the spec prescribes.

    Ids whose answer would be NULL (the Substrait versions: Substrait is not supported) are left
    out, as the spec allows; a client then falls back to its default.
    """
    return {
        pb.FLIGHT_SQL_SERVER_NAME: "meshgate",
        pb.FLIGHT_SQL_SERVER_VERSION: gateway.__version__,
        pb.FLIGHT_SQL_SERVER_ARROW_VERSION: pa.__version__,
        pb.FLIGHT_SQL_SERVER_READ_ONLY: True,
        pb.FLIGHT_SQL_SERVER_SQL: True,
        pb.FLIGHT_SQL_SERVER_SUBSTRAIT: False,
        pb.FLIGHT_SQL_SERVER_TRANSACTION: Int32(pb.SQL_SUPPORTED_TRANSACTION_NONE),
        pb.FLIGHT_SQL_SERVER_CANCEL: True,
        pb.FLIGHT_SQL_SERVER_BULK_INGESTION: False,
        pb.FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED: False,
        pb.FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT: Int32(0),  # prepared handles live until closed
        pb.FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT: Int32(0),
        pb.SQL_DDL_CATALOG: False,
        pb.SQL_DDL_SCHEMA: False,
        pb.SQL_DDL_TABLE: False,
        # PostgreSQL folds unquoted names to lower case and keeps quoted ones exactly; the enum
        # has no "case-sensitive" member, so quoted identifiers report UNKNOWN.
        pb.SQL_IDENTIFIER_CASE: Int32(pb.SQL_CASE_SENSITIVITY_LOWERCASE),
        pb.SQL_IDENTIFIER_QUOTE_CHAR: '"',
        pb.SQL_QUOTED_IDENTIFIER_CASE: Int32(pb.SQL_CASE_SENSITIVITY_UNKNOWN),
        # Policies decide per principal and product, so not every listed table is selectable.
        pb.SQL_ALL_TABLES_ARE_SELECTABLE: False,
        pb.SQL_NULL_ORDERING: Int32(pb.SQL_NULLS_SORTED_HIGH),  # PostgreSQL: NULL sorts as largest
        pb.SQL_KEYWORDS: KEYWORDS,
        pb.SQL_NUMERIC_FUNCTIONS: NUMERIC_FUNCTIONS,
        pb.SQL_STRING_FUNCTIONS: STRING_FUNCTIONS,
        pb.SQL_SYSTEM_FUNCTIONS: SYSTEM_FUNCTIONS,
        pb.SQL_DATETIME_FUNCTIONS: DATETIME_FUNCTIONS,
        # Metadata patterns support % and _ but no escape character, so none is advertised: a
        # client that escaped `_` in product names would otherwise match nothing.
        pb.SQL_SEARCH_STRING_ESCAPE: "",
        pb.SQL_EXTRA_NAME_CHARACTERS: "",
        pb.SQL_SUPPORTS_COLUMN_ALIASING: True,
        pb.SQL_NULL_PLUS_NULL_IS_NULL: True,
        pb.SQL_SUPPORTS_CONVERT: _CONVERSIONS,
        pb.SQL_SUPPORTS_TABLE_CORRELATION_NAMES: True,
        pb.SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES: False,
        pb.SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY: True,
        pb.SQL_SUPPORTS_ORDER_BY_UNRELATED: True,
        pb.SQL_SUPPORTED_GROUP_BY: bits(pb.SQL_GROUP_BY_UNRELATED, pb.SQL_GROUP_BY_BEYOND_SELECT),
        pb.SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE: False,
        pb.SQL_SUPPORTS_NON_NULLABLE_COLUMNS: True,  # contract columns marked `required`
        pb.SQL_SUPPORTED_GRAMMAR: bits(pb.SQL_MINIMUM_GRAMMAR, pb.SQL_CORE_GRAMMAR),
        pb.SQL_ANSI92_SUPPORTED_LEVEL: bits(pb.ANSI92_ENTRY_SQL, pb.ANSI92_INTERMEDIATE_SQL),
        pb.SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY: False,
        pb.SQL_OUTER_JOINS_SUPPORT_LEVEL: Int32(pb.SQL_FULL_OUTER_JOINS),
        pb.SQL_SCHEMA_TERM: "domain",  # a schema is a data-mesh domain
        pb.SQL_PROCEDURE_TERM: "procedure",
        pb.SQL_CATALOG_TERM: "catalog",
        pb.SQL_CATALOG_AT_START: True,
        pb.SQL_SCHEMAS_SUPPORTED_ACTIONS: bits(),
        pb.SQL_CATALOGS_SUPPORTED_ACTIONS: bits(),
        pb.SQL_SUPPORTED_POSITIONED_COMMANDS: bits(),
        pb.SQL_SELECT_FOR_UPDATE_SUPPORTED: False,
        pb.SQL_STORED_PROCEDURES_SUPPORTED: False,
        pb.SQL_SUPPORTED_SUBQUERIES: bits(
            pb.SQL_SUBQUERIES_IN_COMPARISONS, pb.SQL_SUBQUERIES_IN_EXISTS, pb.SQL_SUBQUERIES_IN_INS
        ),
        pb.SQL_CORRELATED_SUBQUERIES_SUPPORTED: True,
        pb.SQL_SUPPORTED_UNIONS: bits(pb.SQL_UNION, pb.SQL_UNION_ALL),
        **{
            limit: _NO_LIMIT
            for limit in (
                pb.SQL_MAX_BINARY_LITERAL_LENGTH,
                pb.SQL_MAX_CHAR_LITERAL_LENGTH,
                pb.SQL_MAX_COLUMN_NAME_LENGTH,
                pb.SQL_MAX_COLUMNS_IN_GROUP_BY,
                pb.SQL_MAX_COLUMNS_IN_INDEX,
                pb.SQL_MAX_COLUMNS_IN_ORDER_BY,
                pb.SQL_MAX_COLUMNS_IN_SELECT,
                pb.SQL_MAX_COLUMNS_IN_TABLE,
                pb.SQL_MAX_CONNECTIONS,
                pb.SQL_MAX_CURSOR_NAME_LENGTH,
                pb.SQL_MAX_INDEX_LENGTH,
                pb.SQL_DB_SCHEMA_NAME_LENGTH,
                pb.SQL_MAX_PROCEDURE_NAME_LENGTH,
                pb.SQL_MAX_CATALOG_NAME_LENGTH,
                pb.SQL_MAX_ROW_SIZE,
                pb.SQL_MAX_STATEMENT_LENGTH,
                pb.SQL_MAX_STATEMENTS,
                pb.SQL_MAX_TABLE_NAME_LENGTH,
                pb.SQL_MAX_TABLES_IN_SELECT,
                pb.SQL_MAX_USERNAME_LENGTH,
            )
        },
        pb.SQL_MAX_ROW_SIZE_INCLUDES_BLOBS: False,
        pb.SQL_DEFAULT_TRANSACTION_ISOLATION: Int32(pb.SQL_TRANSACTION_NONE),
        pb.SQL_TRANSACTIONS_SUPPORTED: False,
        pb.SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS: bits(pb.SQL_TRANSACTION_NONE),
        pb.SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT: False,
        pb.SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED: False,
        pb.SQL_SUPPORTED_RESULT_SET_TYPES: bits(pb.SQL_RESULT_SET_TYPE_FORWARD_ONLY),
        pb.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED: bits(),
        pb.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_FORWARD_ONLY: bits(pb.SQL_RESULT_SET_CONCURRENCY_READ_ONLY),
        pb.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_SENSITIVE: bits(),
        pb.SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_INSENSITIVE: bits(),
        pb.SQL_BATCH_UPDATES_SUPPORTED: False,
        pb.SQL_SAVEPOINTS_SUPPORTED: False,
        pb.SQL_NAMED_PARAMETERS_SUPPORTED: False,
        pb.SQL_LOCATORS_UPDATE_COPY: False,
        pb.SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED: False,
    }


def sql_info_table(requested: Iterable[int] = ()) -> pa.Table:
    """The GetSqlInfo answer: the requested ids (all when none are named) the gateway knows.

    Unknown ids are skipped rather than rejected: the spec lets servers answer a subset, and
    clients ask for ids newer than the server.
    """
    values = sql_info_values()
    wanted = list(dict.fromkeys(requested)) or sorted(values)
    rows = [(info, values[info]) for info in wanted if info in values]
    members: list[list[object]] = [[] for _ in _VALUE_TYPE]
    type_codes: list[int] = []
    offsets: list[int] = []
    for _, value in rows:
        code = _member(value)
        type_codes.append(code)
        offsets.append(len(members[code]))
        members[code].append(value.value if isinstance(value, Int32) else _plain(value))
    children = [pa.array(m, type=_VALUE_TYPE.field(i).type) for i, m in enumerate(members)]
    union = pa.UnionArray.from_dense(
        pa.array(type_codes, pa.int8()),
        pa.array(offsets, pa.int32()),
        children,
        [f.name for f in _VALUE_TYPE],
    ).view(_VALUE_TYPE)  # same layout; the view carries the spec's non-nullable members
    return pa.table([pa.array([info for info, _ in rows], pa.uint32()), union], schema=SQL_INFO_SCHEMA)


def _member(value: SqlInfoValue) -> int:
    """The union type code for ``value`` (bool before int: bool is an int in Python)."""
    if isinstance(value, str):
        return 0
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 2
    if isinstance(value, Int32):
        return 3
    if isinstance(value, Mapping):
        return 5
    return 4


def _plain(value: SqlInfoValue) -> object:
    """``value`` in the form ``pa.array`` expects (a map is a list of key/value pairs)."""
    return list(value.items()) if isinstance(value, Mapping) else value


# --- GetXdbcTypeInfo --------------------------------------------------------------------------

XDBC_TYPE_INFO_SCHEMA = pa.schema(
    [
        pa.field("type_name", pa.string(), nullable=False),
        pa.field("data_type", pa.int32(), nullable=False),
        pa.field("column_size", pa.int32()),
        pa.field("literal_prefix", pa.string()),
        pa.field("literal_suffix", pa.string()),
        pa.field("create_params", pa.list_(pa.field("item", pa.string(), nullable=False))),
        pa.field("nullable", pa.int32(), nullable=False),
        pa.field("case_sensitive", pa.bool_(), nullable=False),
        pa.field("searchable", pa.int32(), nullable=False),
        pa.field("unsigned_attribute", pa.bool_()),
        pa.field("fixed_prec_scale", pa.bool_(), nullable=False),
        pa.field("auto_increment", pa.bool_()),
        pa.field("local_type_name", pa.string()),
        pa.field("minimum_scale", pa.int32()),
        pa.field("maximum_scale", pa.int32()),
        pa.field("sql_data_type", pa.int32(), nullable=False),
        pa.field("datetime_subcode", pa.int32()),
        pa.field("num_prec_radix", pa.int32()),
        pa.field("interval_precision", pa.int32()),
    ]
)


@dataclass(frozen=True)
class XdbcType:
    """One SQL type the gateway returns, as JDBC ``getTypeInfo`` / ODBC ``SQLGetTypeInfo`` list it."""

    type_name: str  # PostgreSQL's name, as gateway.types.sql_type_name spells it
    data_type: int
    column_size: int | None = None
    quoted: bool = False  # literals are written '...'
    create_params: tuple[str, ...] | None = None
    case_sensitive: bool = False
    searchable: int = pb.SEARCHABLE_BASIC
    numeric: bool = False
    scale: tuple[int, int] | None = None  # (minimum, maximum)
    datetime_subcode: int | None = None
    num_prec_radix: int | None = None

    def row(self) -> dict[str, object]:
        return {
            "type_name": self.type_name,
            "data_type": self.data_type,
            "column_size": self.column_size,
            "literal_prefix": "'" if self.quoted else None,
            "literal_suffix": "'" if self.quoted else None,
            "create_params": list(self.create_params) if self.create_params is not None else None,
            "nullable": pb.NULLABILITY_NULLABLE,
            "case_sensitive": self.case_sensitive,
            "searchable": self.searchable,
            "unsigned_attribute": False if self.numeric else None,
            "fixed_prec_scale": False,
            "auto_increment": False if self.numeric else None,
            "local_type_name": None,
            "minimum_scale": self.scale[0] if self.scale else None,
            "maximum_scale": self.scale[1] if self.scale else None,
            # datetime types report the generic DATETIME code here, the subtype in the subcode
            "sql_data_type": pb.XDBC_DATETIME if self.datetime_subcode is not None else self.data_type,
            "datetime_subcode": self.datetime_subcode,
            "num_prec_radix": self.num_prec_radix,
            "interval_precision": None,
        }


XDBC_TYPES: tuple[XdbcType, ...] = (
    XdbcType("boolean", pb.XDBC_BIT, 1),
    XdbcType("smallint", pb.XDBC_SMALLINT, 5, numeric=True, scale=(0, 0), num_prec_radix=10),
    XdbcType("integer", pb.XDBC_INTEGER, 10, numeric=True, scale=(0, 0), num_prec_radix=10),
    XdbcType("bigint", pb.XDBC_BIGINT, 19, numeric=True, scale=(0, 0), num_prec_radix=10),
    XdbcType("real", pb.XDBC_REAL, 24, numeric=True, num_prec_radix=2),
    XdbcType("double precision", pb.XDBC_DOUBLE, 53, numeric=True, num_prec_radix=2),
    # Arrow's decimal128 bounds what the gateway can return, not PostgreSQL's 1000 digits.
    XdbcType("numeric", pb.XDBC_NUMERIC, 38, create_params=("precision", "scale"), numeric=True, scale=(0, 38), num_prec_radix=10),
    XdbcType("varchar", pb.XDBC_VARCHAR, quoted=True, create_params=("length",), case_sensitive=True, searchable=pb.SEARCHABLE_FULL),
    XdbcType("text", pb.XDBC_VARCHAR, quoted=True, case_sensitive=True, searchable=pb.SEARCHABLE_FULL),
    XdbcType("date", pb.XDBC_DATE, 10, quoted=True, datetime_subcode=pb.XDBC_SUBCODE_DATE),
    XdbcType("timestamp", pb.XDBC_TIMESTAMP, 26, quoted=True, scale=(0, 6), datetime_subcode=pb.XDBC_SUBCODE_TIMESTAMP),
    XdbcType("timestamptz", pb.XDBC_TIMESTAMP, 32, quoted=True, scale=(0, 6), datetime_subcode=pb.XDBC_SUBCODE_TIMESTAMP_WITH_TIMEZONE),
    XdbcType("bytea", pb.XDBC_VARBINARY, quoted=True),
)


def xdbc_type_info_table(data_type: int | None = None) -> pa.Table:
    """The GetXdbcTypeInfo answer, ordered by data_type then type_name as the spec asks."""
    types = sorted((t for t in XDBC_TYPES if data_type is None or t.data_type == data_type), key=lambda t: (t.data_type, t.type_name))
    return pa.Table.from_pylist([t.row() for t in types], schema=XDBC_TYPE_INFO_SCHEMA)

