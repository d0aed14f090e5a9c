"""Descriptors for catalog tests: small products over one SQLite file (queryable for real)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from gateway.descriptor import Descriptor, validate


def sqlite_source(path: Path, table: str = "items") -> Path:
    """A SQLite file with one small table ``table`` (id, label), created once."""
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, label TEXT)")
    conn.execute(f"INSERT OR IGNORE INTO {table} VALUES (1, 'one'), (2, 'two')")
    conn.commit()
    conn.close()
    return path


def product(domain: str, name: str, source: Path, *, description: str = "", tags: tuple[str, ...] = (),
            owner: str | None = None, columns: tuple[tuple[str, str], ...] = (), version: str = "1.0.0",
            table: str = "items", sla: dict[str, Any] | None = None) -> Descriptor:
    """A product reading ``table`` of the SQLite file ``source``; ``columns`` are (name, description)
    pairs added after the table's own ``id`` and ``label`` (and read as constant NULLs by no one:
    the catalog never queries them)."""
    schema = [{"name": "id", "type": "int64", "required": True, "primary_key": True},
              {"name": "label", "type": "string"}]
    schema += [{"name": n, "type": "string", **({"description": d} if d else {})} for n, d in columns]
    doc: dict[str, Any] = {
        "apiVersion": "datamesh.io/v1",
        "kind": "DataProduct",
        "metadata": {"name": name, "domain": domain, "owner": owner or f"{domain}-team@example.com", "version": version,
                     "tags": list(tags), "description": description},
        "spec": {"source": {"connector": "sqlite", "uri": str(source), "table": table}, "schema": schema},
    }
    if sla:
        doc["spec"]["sla"] = sla
    return validate(doc, f"{domain}.{name}")
