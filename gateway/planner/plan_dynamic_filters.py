"""Find joins where one fragment's keys can filter another fragment at its source.

For ``small JOIN big ON small.k = big.k`` the engine can fetch ``small`` first and ask the
source of ``big`` only for rows whose key is among small's keys (dynamic filtering, or a
semi-join reduction).  This rule only records the candidates, both ways round; the engine
decides at run time, from the sources' row counts and the keys it actually got, whether to
use one.  Candidates come from inner joins, and from LEFT joins towards their right side only
(filtering the preserved side would drop rows the answer needs).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.optimizer.scope import traverse_scope

from gateway.planner.context import PlanContext
from gateway.planner.fragments import conjuncts
from gateway.planner.plan import DynamicFilter


def plan_dynamic_filters(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    fragments = {f.name: f for f in ctx.fragments if f.connector is not None}
    if len(ctx.fragments) < 2:
        return expression
    found: list[DynamicFilter] = []
    for scope in traverse_scope(expression):
        select = scope.expression
        if not isinstance(select, exp.Select) or not select.args.get("joins"):
            continue
        tables = {alias: source.name for alias, source in scope.sources.items() if isinstance(source, exp.Table) and source.name in fragments}
        right_only: set[str] = set()
        candidates: list[exp.Expression] = []
        where = select.args.get("where")
        for join in select.args["joins"]:
            side = (join.side or "").upper()
            if side in ("RIGHT", "FULL"):
                break  # keep it simple: no filters across right/full joins in this scope
            if side == "LEFT":
                right_only.add(join.this.alias_or_name)
            candidates += conjuncts(join.args.get("on"))
        else:
            if not right_only:
                candidates += conjuncts(where.this if where else None)
            for predicate in candidates:
                if not (isinstance(predicate, exp.EQ) and isinstance(predicate.this, exp.Column) and isinstance(predicate.expression, exp.Column)):
                    continue
                left, right = predicate.this, predicate.expression
                if left.table not in tables or right.table not in tables or left.table == right.table:
                    continue
                for build, probe in ((left, right), (right, left)):
                    if right_only and probe.table not in right_only:
                        continue
                    if tables[build.table] == tables[probe.table]:
                        continue
                    found.append(DynamicFilter(tables[build.table], build.name, tables[probe.table], probe.name))
    ctx.dynamic_filters = found
    return expression
