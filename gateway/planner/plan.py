"""What the planner produces: fragments for the sources and the residual query for the engine.

A plan is built once per (SQL text, registry generation) and cached; it holds sqlglot
expressions that may still contain parameter placeholders, and is rendered into concrete SQL
(``bind``) for each execution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
from sqlglot import exp

from connectors.base import Connector
from gateway.descriptor import Descriptor
from policies.decision import Decision


@dataclass(frozen=True)
class LocalRows:
    """Rows the gateway serves from memory (system tables and products): a known schema now, the
    rows when the query runs, so a cached plan of ``mesh.queries`` still shows the latest queries."""

    schema: pa.Schema
    produce: Callable[[], pa.Table]

    @classmethod
    def of(cls, table: pa.Table) -> LocalRows:
        return cls(table.schema, lambda: table)

    def project(self, columns: list[str]) -> LocalRows:
        """Only ``columns`` (the first column when none is needed, to keep the row count)."""
        keep = columns or [self.schema.names[0]]
        produce = self.produce
        return LocalRows(pa.schema([self.schema.field(c) for c in keep]), lambda: produce().select(keep))

    def rows(self) -> pa.Table:
        table = self.produce()
        if not table.schema.equals(self.schema):
            table = table.select(self.schema.names).cast(self.schema)
        return table


@dataclass(frozen=True)
class Binding:
    """A product reference resolved to one version and the connector that serves it."""

    internal_name: str  # the placeholder table name the planner uses, e.g. "__p0"
    descriptor: Descriptor | None  # None for information_schema tables
    connector: Connector | None  # None for system tables and products (served from memory)
    local: LocalRows | None = None  # system tables and products: their rows

    @property
    def source_id(self) -> str:
        return self.connector.source_id if self.connector else "system"

    def contract_schema(self) -> dict[str, pa.DataType]:
        if self.descriptor is not None:
            return {c.name: c.type.arrow for c in self.descriptor.columns}
        assert self.local is not None
        return {f.name: f.type for f in self.local.schema}


RAW_TABLE = "__raw"
"""What a fragment's ``post`` query calls the rows fetched from the source."""


@dataclass
class Fragment:
    """One piece of work for one source, with the product columns it returns."""

    name: str  # the table name the residual query reads it as, e.g. "f0"
    connector: Connector | None
    expression: exp.Query | None  # PostgreSQL-dialect AST with physical relations; None = local
    expected: pa.Schema | None  # contract-typed output to conform to; None = take the source's
    bindings: tuple[Binding, ...]  # the product references it reads
    local: LocalRows | None = None
    post: exp.Select | None = None  # engine-side governance over the fetched rows (table RAW_TABLE)
    stage: bool = False  # no source: ``post`` runs in the engine over earlier fragments (by name)

    @property
    def products(self) -> tuple[str, ...]:
        """``domain.name@version`` of each product read, for EXPLAIN and audit."""
        return tuple(
            sorted({f"{b.descriptor.product_id}@{b.descriptor.version}" for b in self.bindings if b.descriptor is not None})
        )


@dataclass(frozen=True)
class DerivedRead:
    """A derived product a plan reads (expanded into its query) and the stored products its rows
    come from, directly or through other derived products: what its freshness is measured by
    (the result cache) and what it is counted under (product metrics, deprecation notes)."""

    descriptor: Descriptor
    inputs: tuple[str, ...]  # domain.name@version of each stored product read, sorted

    @property
    def label(self) -> str:
        return f"{self.descriptor.product_id}@{self.descriptor.version}"


@dataclass(frozen=True)
class DynamicFilter:
    """``probe.probe_column IN (keys of build.build_column)`` may be added to fragment ``probe``."""

    build: str
    build_column: str
    probe: str
    probe_column: str


@dataclass
class Plan:
    """A planned read statement."""

    sql: str
    residual: exp.Query  # runs in DataFusion over the fragments (names f0, f1, ...)
    fragments: list[Fragment]
    output_names: list[str]  # PostgreSQL's column names, duplicates allowed
    parameter_types: list[pa.DataType] = field(default_factory=list)
    products: tuple[str, ...] = ()
    dynamic_filters: list[DynamicFilter] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)  # product id -> governance applied
    derived: tuple[DerivedRead, ...] = ()  # the derived products read, with their stored inputs

    @property
    def passthrough(self) -> Fragment | None:
        """The fragment whose rows are the whole answer (single-source query), if any."""
        if len(self.fragments) == 1 and self.residual.meta.get("passthrough"):
            return self.fragments[0]
        return None
