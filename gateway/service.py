"""One entry point per use case; the protocol layers (Flight SQL, REST, CLI) only call these.

INTERFACE DRAFT: signatures are fixed, bodies are being written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyarrow as pa

from policies import Principal

CATALOG = "mesh"
"""The one Flight SQL catalog; BI tools send ``mesh.domain.product`` three-part names."""


@dataclass(frozen=True)
class TableInfo:
    """A queryable relation as metadata calls list it."""

    catalog: str
    schema: str  # the domain
    name: str  # product name, or 'name@2' for a pinned major version
    table_type: str  # "TABLE" | "VIEW" | "SYSTEM TABLE"
    arrow_schema: pa.Schema
    description: str


@dataclass(frozen=True)
class PreparedQuery:
    """A planned statement: what it returns and which parameters it takes."""

    handle: str  # stable id (hash of SQL + principal), usable as a prepared-statement handle
    sql: str
    result_schema: pa.Schema
    parameter_schema: pa.Schema  # one field per `?`/`$n`, in order; empty when none


class GatewayService:
    def prepare(self, sql: str, principal: Principal) -> PreparedQuery:
        """Parse and plan ``sql``; raises ``gateway.errors.MeshError`` subclasses."""
        raise NotImplementedError

    def execute(
        self,
        query: PreparedQuery | str,
        principal: Principal,
        parameters: Sequence[Any] = (),
        is_cancelled: Callable[[], bool] | None = None,
    ) -> pa.RecordBatchReader:
        """Run a statement and stream its result (batches are at most a few MiB)."""
        raise NotImplementedError

    def list_catalogs(self) -> list[str]:
        raise NotImplementedError

    def list_schemas(self, catalog: str | None, schema_pattern: str | None) -> list[tuple[str, str]]:
        """(catalog, schema) pairs; patterns are SQL LIKE patterns (% and _)."""
        raise NotImplementedError

    def list_tables(
        self,
        catalog: str | None,
        schema_pattern: str | None,
        table_pattern: str | None,
        table_types: Sequence[str] = (),
    ) -> list[TableInfo]:
        raise NotImplementedError

    def table_types(self) -> list[str]:
        raise NotImplementedError
