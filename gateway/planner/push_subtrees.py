"""Send a whole sub-tree to its source when every table in it lives in that one source.

A single-source statement becomes one fragment and the gateway just streams it; inside a
federated statement, a derived table, CTE or uncorrelated subquery over one source (a join, an
aggregate, a window) runs there too, so only its result crosses the wire.  Only sources that
declare ``full_sql`` take sub-trees; a correlated sub-tree stays with the engine, because it
needs the outer query's rows.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from gateway.planner.apply_policies import BARRIER
from gateway.planner.context import PlanContext
from gateway.planner.fragments import add_source_fragment, bound_tables, conjuncts, pushable, to_physical
from gateway.planner.plan import RAW_TABLE, Binding, Fragment
from gateway.planner.push_join_groups import push_join_groups
from gateway.planner.push_scans import push_scans


def push_subtrees(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    assert isinstance(expression, exp.Query)
    _push_barriers(expression, ctx)
    bindings = _single_source(expression, ctx)
    if bindings is not None:
        fragment = add_source_fragment(ctx, expression, bindings, _conform(expression, bindings, ctx))
        residual = exp.select("*").from_(exp.to_table(fragment.name))
        residual.meta["passthrough"] = True
        return residual
    pushed: list[exp.Expression] = []
    for node in list(expression.find_all(exp.Subquery, exp.CTE, bfs=True)):
        if any(node is p or _is_under(node, p) for p in pushed):
            continue
        query = node.this
        if not isinstance(query, exp.Query):
            continue
        bindings = _single_source(query, ctx)
        if bindings is None:
            continue
        fragment = add_source_fragment(ctx, query, bindings, _conform(query, bindings, ctx))
        pushed.append(node)
        if isinstance(node, exp.Subquery) and node.args.get("alias") is not None:
            node.replace(exp.Table(this=exp.to_identifier(fragment.name), alias=node.args["alias"].copy()))
        else:
            node.set("this", exp.select("*").from_(exp.to_table(fragment.name)))
    return expression


def _push_barriers(expression: exp.Query, ctx: PlanContext) -> None:
    """Each governed sub-select becomes a fragment of its own, and nothing else joins it there.

    A full-SQL source masks and filters itself; any other source returns the product's columns
    (with the row filters it can evaluate exactly) and the engine applies the governed
    sub-select to them before the query runs.  Later rules then see a plain fragment table,
    which keeps every sub-tree around it out of the source (it is not a product any more).
    """
    for node in reversed(list(expression.find_all(exp.Subquery))):  # inner barriers first
        select = node.this
        if not (isinstance(select, exp.Select) and select.meta.get(BARRIER)):
            continue
        source = select.args["from_"].this
        if not (isinstance(source, exp.Table) and source.name in ctx.bindings):
            fragment = _derived_barrier(select, ctx)
            node.replace(exp.Table(this=exp.to_identifier(fragment.name), alias=node.args["alias"].copy()))
            continue
        (table, binding), = bound_tables(select, ctx)
        assert binding.connector is not None and binding.descriptor is not None
        if binding.connector.capabilities.full_sql:
            fragment = add_source_fragment(ctx, select, [binding], _conform(select, [binding], ctx))
        else:
            fragment = _raw_fragment_with_post(select, table, binding, ctx)
        node.replace(exp.Table(this=exp.to_identifier(fragment.name), alias=node.args["alias"].copy()))


def _derived_barrier(select: exp.Select, ctx: PlanContext) -> Fragment:
    """A derived product's own governed sub-select (its masks and row filters over its query).

    It runs whole in its inputs' one full-SQL source when it can (its inputs' own barriers are
    fragments by now, so an input with governance keeps it from that); otherwise it is planned
    like a query of its own, over fragments, and the engine computes it as a *stage* before the
    query sees any of its rows.
    """
    bindings = _single_source(select, ctx)
    if bindings is not None:
        return add_source_fragment(ctx, select, bindings, None)
    for rule in (push_subtrees, push_join_groups, push_scans):
        rule(select, ctx)
    return ctx.add_fragment(lambda name: Fragment(name, None, None, None, (), post=select, stage=True))


def _raw_fragment_with_post(select: exp.Select, table: exp.Table, binding: Binding, ctx: PlanContext) -> Fragment:
    """The product's columns from the source (filters it can evaluate exactly pushed), with the
    governed sub-select as post-processing the engine runs over them."""
    caps = binding.connector.capabilities  # type: ignore[union-attr]
    alias = table.alias_or_name
    raw = exp.select(*(exp.column(name, table=alias, quoted=True) for name in binding.contract_schema())).from_(table.copy())
    where = select.args.get("where")
    for predicate in conjuncts(where.this if where else None):
        if (folded := pushable(predicate, {alias}, caps)) is not None:
            raw = raw.where(folded, copy=False)
    post = select.copy()
    post.find(exp.Table).replace(exp.Table(this=exp.to_identifier(RAW_TABLE), alias=table.args["alias"].copy()))
    expected = pa.schema(list(binding.contract_schema().items()))
    physical = to_physical(raw, ctx)
    return ctx.add_fragment(lambda name: Fragment(name, binding.connector, physical, expected, (binding,), post=post))


def _single_source(query: exp.Query, ctx: PlanContext) -> list[Binding] | None:
    """The bindings of ``query`` if it is self-contained and one full-SQL source can run it."""
    tables = bound_tables(query, ctx)
    if not tables:
        return None
    bindings = [b for _, b in tables]
    connector = bindings[0].connector
    if connector is None or not connector.capabilities.full_sql:
        return None
    if any(b.source_id != bindings[0].source_id for b in bindings):
        return None
    defined = {alias.name for alias in query.find_all(exp.TableAlias)}
    defined |= {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    for table in query.find_all(exp.Table):
        if table.name not in ctx.bindings and table.name not in defined:
            return None  # a CTE defined outside this sub-tree
    for column in query.find_all(exp.Column):
        if column.table and column.table not in defined:
            return None  # correlated with the outer query
    return bindings


def _conform(query: exp.Query, bindings: list[Binding], ctx: PlanContext) -> dict[str, pa.DataType]:
    """Output columns that are plain product columns come back in their contract's type."""
    if not isinstance(query, exp.Select):
        return {}
    by_alias = {table.alias_or_name: ctx.bindings[table.name] for table, _ in bound_tables(query, ctx)}
    conform: dict[str, pa.DataType] = {}
    for projection in query.expressions:
        inner = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(inner, exp.Column) and inner.table in by_alias:
            contract = by_alias[inner.table].contract_schema()
            if inner.name in contract:
                conform[projection.alias_or_name] = contract[inner.name]
    return conform


def _is_under(node: exp.Expression, ancestor: exp.Expression) -> bool:
    parent = node.parent
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False
