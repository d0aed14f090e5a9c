"""Turn each remaining product reference into a scan fragment with its own pushdown.

A scan asks its source for only the columns the query uses, only the rows that pass the
predicates that mention nothing but that product, and, for a plain single-table SELECT, only
``LIMIT + OFFSET`` rows (with the ORDER BY, so the source returns the right ones).  Pushed
predicates also stay in the residual query: it costs the engine little and keeps the rule
correct for every join shape.  Predicates are never pushed into the null-extended side of an
outer join, where filtering before the join would change the answer.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from connectors.base import Capabilities
from gateway.planner.context import PlanContext
from gateway.planner.fragments import columns_by_table, conjuncts, pushable, to_physical
from gateway.planner.plan import Binding, Fragment


def push_scans(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    scopes = traverse_scope(expression)
    columns = columns_by_table(scopes, ctx)
    for scope in scopes:
        for alias, source in list(scope.sources.items()):
            if not isinstance(source, exp.Table) or source.name not in ctx.bindings:
                continue
            binding = ctx.bindings[source.name]
            needed = sorted(columns.get(id(source), set()), key=_column_order(binding))
            fragment = _scan_fragment(scope, alias, source, binding, needed, ctx)
            source.replace(exp.Table(this=exp.to_identifier(fragment.name), alias=source.args["alias"].copy()))
    return expression


def _scan_fragment(
    scope: Scope, alias: str, table: exp.Table, binding: Binding, needed: list[str], ctx: PlanContext
) -> Fragment:
    contract = binding.contract_schema()
    if binding.connector is None:  # a system table: project it in memory
        assert binding.local is not None
        local = binding.local.project(needed)
        return ctx.add_fragment(lambda name: Fragment(name, None, None, None, (), local=local))

    caps = binding.connector.capabilities
    projections = [exp.column(c, table=alias, quoted=True) for c in needed] or [exp.alias_("1", "__row", quoted=True)]
    query = exp.select(*projections).from_(exp.Table(this=exp.to_identifier(table.name), alias=table.args["alias"].copy()))
    predicates = _pushable_predicates(scope, alias, caps) if caps.filters else []
    for predicate in predicates:
        query = query.where(predicate, copy=False)
    if caps.limit:
        _push_limit(scope, alias, query, predicates)
    physical = to_physical(query, ctx)
    expected = pa.schema([(c, contract[c]) for c in needed]) if needed else None
    return ctx.add_fragment(
        lambda name: Fragment(name, binding.connector, physical, expected, (binding,))
    )


def _column_order(binding: Binding):  # noqa: ANN202 - a sort key
    order = {name: i for i, name in enumerate(binding.contract_schema())}
    return lambda name: order.get(name, len(order))


def _null_extended(select: exp.Select) -> set[str]:
    """Aliases whose rows an outer join may replace with NULLs."""
    extended: set[str] = set()
    seen = [select.args["from_"].this.alias_or_name] if select.args.get("from_") else []
    for join in select.args.get("joins") or []:
        side = (join.side or "").upper()
        name = join.this.alias_or_name
        if side in ("LEFT", "FULL"):
            extended.add(name)
        if side in ("RIGHT", "FULL"):
            extended.update(seen)
        seen.append(name)
    return extended


def _pushable_predicates(scope: Scope, alias: str, caps: Capabilities) -> list[exp.Expression]:
    select = scope.expression
    if not isinstance(select, exp.Select):
        return []
    extended = _null_extended(select)
    candidates: list[exp.Expression] = []
    if alias not in extended:
        where = select.args.get("where")
        candidates += conjuncts(where.this if where else None)
    for join in select.args.get("joins") or []:
        side = (join.side or "").upper()
        own = join.this.alias_or_name == alias
        if (not side and alias not in extended) or (side == "LEFT" and own):
            candidates += conjuncts(join.args.get("on"))
    return [folded for p in candidates if (folded := pushable(p, {alias}, caps)) is not None]


def _push_limit(scope: Scope, alias: str, query: exp.Select, pushed: list[exp.Expression]) -> None:
    """Push ``LIMIT n OFFSET m`` as ``LIMIT n+m`` when the scan alone decides which rows come."""
    select = scope.expression
    if not isinstance(select, exp.Select) or not select.args.get("limit"):
        return
    if len(scope.sources) != 1 or select.args.get("joins") or select.args.get("group") or select.args.get("having"):
        return
    if select.args.get("distinct") or any(p.find(exp.AggFunc, exp.Window) for p in select.expressions):
        return
    where = select.args.get("where")
    if where is not None and len(conjuncts(where.this)) != len(pushed):
        return
    limit = select.args["limit"].expression
    offset = select.args.get("offset")
    if not (isinstance(limit, exp.Literal) and limit.is_int):
        return
    rows = int(limit.name)
    if offset is not None:
        if not (isinstance(offset.expression, exp.Literal) and offset.expression.is_int):
            return
        rows += int(offset.expression.name)
    order = select.args.get("order")
    if order is not None:
        if not all(isinstance(o.this, exp.Column) and o.this.table == alias for o in order.expressions):
            return
        query.set("order", order.copy())
    query.limit(rows, copy=False)
