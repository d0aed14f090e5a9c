"""Helpers the pushdown rules share: building a source's fragment from part of the query."""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp
from sqlglot.optimizer.scope import Scope
from sqlglot.optimizer.simplify import simplify

from connectors.base import Capabilities
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


def add_source_fragment(
    ctx: PlanContext, query: exp.Query, bindings: list[Binding], conform: dict[str, pa.DataType] | None
) -> Fragment:
    """Register a fragment that runs ``query`` (placeholder tables) on the bindings' source."""
    connector = bindings[0].connector
    physical = to_physical(query, ctx)
    expected = pa.schema(list(conform.items())) if conform else None
    return ctx.add_fragment(lambda name: Fragment(name, connector, physical, expected, tuple(bindings)))


def columns_by_table(scopes: list[Scope], ctx: PlanContext) -> dict[int, set[str]]:
    """Which columns of each product reference the whole statement uses (correlated uses too)."""
    used: dict[int, set[str]] = {}
    for scope in scopes:
        for column in scope.columns:
            if not column.table:
                continue
            owner: Scope | None = scope
            while owner is not None and column.table not in owner.sources:
                owner = owner.parent
            if owner is None:
                continue
            source = owner.sources[column.table]
            if isinstance(source, exp.Table) and source.name in ctx.bindings:
                used.setdefault(id(source), set()).add(column.name)
    return used


_PORTABLE = (
    exp.Column, exp.Literal, exp.Boolean, exp.Null, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.And, exp.Or, exp.Not, exp.Is, exp.In, exp.Between, exp.Paren, exp.Neg, exp.Placeholder,
    exp.Identifier, exp.DataType, exp.Tuple,
)
"""Expression nodes whose meaning is the same in every SQL engine (SQLite included)."""

_NOT_PUSHABLE = (exp.Rand, exp.Subquery, exp.AggFunc, exp.Window, exp.Exists)


def conjuncts(condition: exp.Expression | None) -> list[exp.Expression]:
    """The AND-ed parts of a condition, looking through parentheses."""
    if condition is None:
        return []
    if isinstance(condition, exp.Paren):
        return conjuncts(condition.this)
    if isinstance(condition, exp.And):
        return conjuncts(condition.left) + conjuncts(condition.right)
    return [condition]


def pushable(predicate: exp.Expression, aliases: set[str], caps: Capabilities) -> exp.Expression | None:
    """``predicate`` with constants folded, if a source with ``caps`` holding exactly the tables
    ``aliases`` can evaluate it; otherwise None."""
    columns = list(predicate.find_all(exp.Column))
    if not columns or not all(c.table in aliases for c in columns) or predicate.find(*_NOT_PUSHABLE):
        return None
    folded = simplify(predicate.copy())
    if caps.portable_filters_only and not all(isinstance(n, _PORTABLE) or _is_date_literal(n) for n in folded.walk()):
        return None
    return folded


def _is_date_literal(node: exp.Expression) -> bool:
    """``DATE '1994-01-01'`` is portable: SQLite stores dates as ISO text, which compares right."""
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string:
        return node.to.is_type(exp.DataType.Type.DATE)
    parent = node.parent
    return isinstance(parent, exp.Cast) and _is_date_literal(parent)
