"""Helpers the pushdown rules share: building a source's fragment from part of the query."""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from gateway.planner.context import PlanContext
from gateway.planner.plan import Binding, Fragment


def bound_tables(expression: exp.Expression, ctx: PlanContext) -> list[tuple[exp.Table, Binding]]:
    """Product (and system) table references under ``expression``."""
    return [
        (table, ctx.bindings[table.name])
        for table in expression.find_all(exp.Table)
        if table.name in ctx.bindings
    ]


def to_physical(query: exp.Query, ctx: PlanContext) -> exp.Query:
    """A copy of ``query`` in which each placeholder table is the source's real relation."""
    physical = query.copy()
    for table, binding in bound_tables(physical, ctx):
        assert binding.connector is not None and binding.descriptor is not None
        source = binding.descriptor.source
        relation = binding.connector.relation(source.table, source.query)
        alias = table.args.get("alias")
        relation.set("alias", alias.copy() if alias else None)
        table.replace(relation)
    return physical


def product_labels(bindings: list[Binding]) -> tuple[str, ...]:
    """``domain.name@version`` of each product read, for EXPLAIN and audit."""
    return tuple(
        sorted({f"{b.descriptor.product_id}@{b.descriptor.version}" for b in bindings if b.descriptor is not None})
    )


def add_source_fragment(
    ctx: PlanContext, query: exp.Query, bindings: list[Binding], conform: dict[str, pa.DataType] | None
) -> Fragment:
    """Register a fragment that runs ``query`` (placeholder tables) on the bindings' source."""
    connector = bindings[0].connector
    physical = to_physical(query, ctx)
    expected = pa.schema(list(conform.items())) if conform else None
    return ctx.add_fragment(lambda name: Fragment(name, connector, physical, expected, product_labels(bindings)))
