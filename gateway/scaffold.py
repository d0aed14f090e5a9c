"""``meshgate product init``: a descriptor scaffolded from a real source table.

The contract's columns and types come from the Arrow schema the source reports (the same one
``product validate`` compares against, so the scaffold validates by construction); ``required``
comes from the source's NOT NULL constraints where its catalog says (SQLite, DuckDB,
PostgreSQL); owner and description are placeholders the owner is meant to replace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from connectors.base import Connector
from gateway.errors import InvalidRequest, MeshError

PLACEHOLDER_OWNER = "owner@example.com"


def contract_type(arrow: pa.DataType) -> str:
    """The contract type a source column of Arrow type ``arrow`` is published as."""
    t = pa.types
    if t.is_boolean(arrow):
        return "boolean"
    if t.is_integer(arrow):
        return "int32" if arrow.bit_width <= 32 and t.is_signed_integer(arrow) or arrow.bit_width <= 16 else "int64"
    if t.is_floating(arrow):
        return "float" if arrow.bit_width <= 32 else "double"
    if t.is_decimal(arrow):
        return f"decimal({arrow.precision},{arrow.scale})"
    if t.is_date(arrow):
        return "date"
    if t.is_timestamp(arrow):
        return "timestamptz" if arrow.tz else "timestamp"
    if t.is_binary(arrow) or t.is_large_binary(arrow) or t.is_fixed_size_binary(arrow):
        return "binary"
    return "string"


def required_columns(connector: Connector, table: str | None) -> set[str]:
    """Columns the source declares NOT NULL, lower-cased; empty when its catalog cannot say."""
    if not table:
        return set()
    parts = table.split(".")
    name, schema = parts[-1], (parts[-2] if len(parts) > 1 else None)
    literal = exp.Literal.string
    if connector.kind == "sqlite":
        sql = f"SELECT name FROM pragma_table_info({literal(name).sql('sqlite')}) WHERE \"notnull\" = 1"
    elif connector.kind in ("duckdb", "postgres"):
        where = f"table_name = {literal(name).sql()} AND is_nullable = 'NO'"
        if schema:
            where += f" AND table_schema = {literal(schema).sql()}"
        elif connector.kind == "postgres":
            where += " AND table_schema = current_schema()"
        sql = f"SELECT column_name FROM information_schema.columns WHERE {where}"
    else:
        return set()
    try:
        scan = connector.scan(sql)
        try:
            return {str(v).lower() for v in scan.reader.read_all().column(0).to_pylist()}
        finally:
            scan.close()
    except MeshError:
        return set()


def scaffold(
    connector: Connector,
    *,
    uri: str,
    table: str | None,
    query: str | None,
    domain: str,
    name: str,
    owner: str = PLACEHOLDER_OWNER,
    version: str = "1.0.0",
) -> dict[str, Any]:
    """A descriptor document for the relation ``table``/``query`` of ``connector``."""
    if connector.kind not in ("parquet",) and not (table or query):
        raise InvalidRequest("give --table (or --query) for the source relation to describe")
    actual = connector.schema(table, query)
    required = required_columns(connector, table)
    columns = []
    for field in actual:
        column: dict[str, Any] = {"name": field.name, "type": contract_type(field.type)}
        if field.name.lower() in required or not field.nullable:
            column["required"] = True
        column["description"] = f"TODO: describe {field.name}"
        columns.append(column)
    bad = [c["name"] for c in columns if not _is_name(c["name"])]
    if bad:
        raise InvalidRequest(f"column name(s) {', '.join(bad)} are not lower-case SQL names ([a-z][a-z0-9_]*); "
                             "give --query with aliases that are")
    source: dict[str, Any] = {"connector": connector.kind, "uri": uri}
    if table:
        source["table"] = table
    if query:
        source["query"] = query
    return {
        "apiVersion": "datamesh.io/v1",
        "kind": "DataProduct",
        "metadata": {
            "name": name,
            "domain": domain,
            "owner": owner,
            "version": version,
            "tags": [],
            "description": f"TODO: what {domain}.{name} holds, for whom, and how fresh it is",
        },
        "spec": {
            "source": source,
            "schema": columns,
            "compatibility": "backward",
            "deprecation": {"notice_days": 30},
            "quality": [],
        },
    }


def descriptor_uri(uri: str, connector_kind: str, descriptor_dir: Path) -> str:
    """A file source's ``uri`` rewritten relative to the descriptor's folder (descriptors name
    their files relative to themselves); other URIs unchanged."""
    if connector_kind not in ("sqlite", "duckdb", "parquet") or "://" in uri:
        return uri
    path = Path(uri).expanduser()
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        return os.path.relpath(absolute, descriptor_dir.resolve())
    except ValueError:
        return str(absolute)


def _is_name(text: str) -> bool:
    from gateway.descriptor import NAME

    return bool(NAME.match(text))
