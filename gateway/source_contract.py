"""Does a source's real table satisfy a product's contract?

Every contract column must exist in the source's relation (matched case-insensitively, as the
planner does) in an Arrow type the gateway can return as the contract's type. Used by
``product validate`` and by publishing (``gateway/publishing.py``), before a version goes live.
"""

from __future__ import annotations

import pyarrow as pa

from gateway.descriptor import Descriptor


def contract_problems(descriptor: Descriptor, actual: pa.Schema, connector_kind: str) -> list[str]:
    """Contract columns missing from the source's schema or in a type that cannot become the
    contract's, each with its path."""
    fields = {f.name.lower(): f for f in actual}
    problems = []
    for i, column in enumerate(descriptor.columns):
        field = fields.get(column.name.lower())
        if field is None:
            problems.append(f"spec.schema[{i}]: column '{column.name}' is missing from the source "
                            f"(it has: {', '.join(f.name for f in actual)})")
            continue
        if not type_fits(column.type.name, field.type, connector_kind):
            problems.append(f"spec.schema[{i}].type: the source's '{field.name}' is {field.type}, "
                            f"which cannot be returned as {column.type.name}")
    return problems


def extra_columns(descriptor: Descriptor, actual: pa.Schema) -> list[str]:
    """Source columns the contract does not publish (not a problem; worth saying)."""
    return sorted({f.name for f in actual} - {c.name for c in descriptor.columns})


def type_fits(contract: str, source: pa.DataType, connector_kind: str) -> bool:
    """Can a source value of Arrow type ``source`` be returned as contract type ``contract``?
    SQLite stores dates and timestamps as text and numerics as REAL, so text is accepted for
    temporal columns and a float for a decimal from SQLite."""
    t = pa.types
    if t.is_null(source) or contract == "string":
        return True
    textual = t.is_string(source) or t.is_large_string(source) or t.is_string_view(source)
    if contract == "boolean":
        return t.is_boolean(source) or (connector_kind == "sqlite" and t.is_integer(source))
    if contract in ("int32", "int64"):
        return t.is_integer(source)
    if contract in ("float", "double"):
        return t.is_integer(source) or t.is_floating(source) or t.is_decimal(source)
    if contract.startswith("decimal"):
        return t.is_integer(source) or t.is_decimal(source) or (connector_kind == "sqlite" and t.is_floating(source))
    if contract == "date":
        return t.is_date(source) or t.is_timestamp(source) or (connector_kind == "sqlite" and textual)
    if contract in ("timestamp", "timestamptz"):
        return t.is_timestamp(source) or t.is_date(source) or (connector_kind == "sqlite" and textual)
    if contract == "binary":
        return t.is_binary(source) or t.is_large_binary(source) or t.is_fixed_size_binary(source)
    return False
