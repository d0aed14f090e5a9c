"""Contract column types and their Arrow and SQL spellings.

A contract names a type once (``decimal(12,2)``, ``timestamptz``); the gateway needs it as an
Arrow type (to conform what a source returns), as a PostgreSQL type name (DESCRIBE,
information_schema) and as an XDBC/JDBC name for metadata.  Keeping the three mappings in one
table means a new type cannot be half-supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")


@dataclass(frozen=True)
class ContractType:
    """A validated contract type: its canonical spelling and its Arrow and SQL forms."""

    name: str
    arrow: pa.DataType
    sql: str

    @property
    def family(self) -> str:
        """What kind of values the type holds, which decides the constraints a column may carry
        (``min`` on a number or a date, ``pattern`` on a string, ``enum`` not on a boolean):
        ``string``, ``boolean``, ``integer``, ``number``, ``date``, ``timestamp`` or ``binary``."""
        if self.name.startswith("decimal(") or self.name in ("float", "double"):
            return "number"
        return _FAMILIES[self.name]


_SIMPLE: dict[str, tuple[pa.DataType, str]] = {
    "string": (pa.string(), "text"),
    "boolean": (pa.bool_(), "boolean"),
    "int32": (pa.int32(), "integer"),
    "int64": (pa.int64(), "bigint"),
    "float": (pa.float32(), "real"),
    "double": (pa.float64(), "double precision"),
    "date": (pa.date32(), "date"),
    "timestamp": (pa.timestamp("us"), "timestamp"),
    "timestamptz": (pa.timestamp("us", tz="UTC"), "timestamptz"),
    "binary": (pa.binary(), "bytea"),
}
_FAMILIES = {
    "string": "string", "boolean": "boolean", "int32": "integer", "int64": "integer", "date": "date",
    "timestamp": "timestamp", "timestamptz": "timestamp", "binary": "binary",
}
_ALIASES = {"int": "int32", "long": "int64", "bigint": "int64", "bool": "boolean"}

TYPE_NAMES = sorted([*_SIMPLE, "decimal(p,s)", *_ALIASES])
"""Every spelling a descriptor may use, for error messages."""


def parse_type(text: str) -> ContractType:
    """Turn a descriptor's type string into a ``ContractType``; ``ValueError`` names the problem."""
    if not isinstance(text, str):
        raise ValueError(f"type must be a string, got {type(text).__name__}")
    name = text.strip().lower()
    name = _ALIASES.get(name, name)
    if name in _SIMPLE:
        arrow, sql = _SIMPLE[name]
        return ContractType(name, arrow, sql)
    match = _DECIMAL.match(name)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2))
        if not 1 <= precision <= 38 or scale > precision:
            raise ValueError(f"decimal({precision},{scale}): precision must be 1-38 and scale <= precision")
        return ContractType(f"decimal({precision},{scale})", pa.decimal128(precision, scale), f"numeric({precision},{scale})")
    raise ValueError(f"unknown type '{text}' (known: {', '.join(TYPE_NAMES)})")


def sql_type_name(arrow_type: pa.DataType) -> str:
    """The PostgreSQL name for an Arrow type, for relations that are not products (results)."""
    for arrow, sql in _SIMPLE.values():
        if arrow_type == arrow:
            return sql
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    if pa.types.is_integer(arrow_type):
        return "smallint" if arrow_type.bit_width <= 16 else "integer" if arrow_type.bit_width == 32 else "bigint"
    if pa.types.is_floating(arrow_type):
        return "real" if arrow_type.bit_width == 32 else "double precision"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "text"
    return str(arrow_type)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float | None:
    """Seconds of ``30``, ``2.5``, ``'30'``, ``'500ms'``, ``'5m'``, ``'1h'``, ``'1d'``; None for None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 5m, 1h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
