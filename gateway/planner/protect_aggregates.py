"""Suppress small groups in aggregates over products that declare ``min_group_size``.

An aggregate over few rows can reveal an individual (the average salary of a team of one).
Every SELECT that aggregates rows of such a product gets ``HAVING count(*) >= N``; an ungrouped
aggregate is one group, so a narrow WHERE yields no row at all instead of a revealing one.
Queries that do not aggregate are governed by masks and row filters alone.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from gateway.planner.context import PlanContext
from gateway.planner.expand_derived_products import DERIVED


def protect_aggregates(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    sizes = {pid: d.min_group_size for pid, d in ctx.decisions.items() if d.min_group_size}
    if not sizes:
        return expression
    for scope in traverse_scope(expression):
        select = scope.expression
        if not isinstance(select, exp.Select) or not _aggregates(select):
            continue
        minimum = max((sizes.get(pid, 0) for pid in _products_under(scope, ctx)), default=0)
        if minimum:
            guard = exp.GTE(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(minimum))
            having = select.args.get("having")
            select.set("having", exp.Having(this=exp.and_(having.this, guard) if having else guard))
    return expression


def _aggregates(select: exp.Select) -> bool:
    """Whether this SELECT itself aggregates rows (a window function does not)."""
    if select.args.get("group"):
        return True
    return any(
        agg.find_ancestor(exp.Window) is None and agg.find_ancestor(exp.Select) is select
        for projection in select.expressions
        for agg in projection.find_all(exp.AggFunc)
    )


def _products_under(scope: Scope, ctx: PlanContext) -> set[str]:
    """Products whose rows feed this scope: its FROM/JOIN sources, through subqueries and CTEs."""
    found: set[str] = set()
    for source in scope.sources.values():
        nodes = [source.expression] if isinstance(source, Scope) else [source]
        for node in nodes:
            for table in node.find_all(exp.Table) if not isinstance(node, exp.Table) else [node]:
                binding = ctx.bindings.get(table.name)
                if binding is not None and binding.descriptor is not None:
                    found.add(binding.descriptor.product_id)
            found.update(s.meta[DERIVED] for s in node.find_all(exp.Select) if DERIVED in s.meta)  # derived products' own
    return found
