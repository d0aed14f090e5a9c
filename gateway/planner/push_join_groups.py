"""Join tables that live in the same source inside that source, even in a federated query.

In ``customer JOIN nation JOIN orders`` with customer and nation in PostgreSQL and orders
elsewhere, PostgreSQL joins customer with nation and sends one result, instead of the gateway
fetching both tables and joining them itself.  Only inner joins are regrouped (an outer join
keeps its tables' order and scans); a group must be connected by join predicates, so the rule
never asks a source for a cross product the query did not.

Each group becomes one fragment whose columns are named ``alias__column``; the group's tables
leave the residual query's FROM list, their ON conditions move to WHERE (equivalent for inner
joins), and every column of a member becomes a column of the fragment.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from gateway.planner.context import PlanContext
from gateway.planner.fragments import columns_by_table, conjuncts, pushable, to_physical
from gateway.planner.plan import Fragment


def push_join_groups(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    scopes = traverse_scope(expression)
    used = columns_by_table(scopes, ctx)
    for scope in scopes:
        select = scope.expression
        if not isinstance(select, exp.Select) or not _inner_joins_only(select):
            continue
        for group in _groups(scope, select, ctx):
            _replace_group(select, group, used, ctx)
    return expression


def _inner_joins_only(select: exp.Select) -> bool:
    joins = select.args.get("joins") or []
    return bool(joins) and all(not j.side and (j.kind or "INNER").upper() in ("INNER", "CROSS") for j in joins)


def _members(select: exp.Select) -> list[exp.Table]:
    """The tables of the FROM list, in order."""
    items = [select.args["from_"].this] + [j.this for j in select.args.get("joins") or []]
    return [t for t in items if isinstance(t, exp.Table)]


def _all_conjuncts(select: exp.Select) -> list[exp.Expression]:
    where = select.args.get("where")
    found = conjuncts(where.this if where else None)
    for join in select.args.get("joins") or []:
        found += conjuncts(join.args.get("on"))
    return found


def _groups(scope: Scope, select: exp.Select, ctx: PlanContext) -> list[list[exp.Table]]:
    """Connected sets of two or more tables of one join-capable source."""
    by_source: dict[str, list[exp.Table]] = {}
    for table in _members(select):
        binding = ctx.bindings.get(table.name)
        if binding is None or binding.connector is None or not binding.connector.capabilities.joins:
            continue
        by_source.setdefault(binding.source_id, []).append(table)
    groups = []
    for tables in by_source.values():
        if len(tables) < 2:
            continue
        caps = ctx.bindings[tables[0].name].connector.capabilities  # type: ignore[union-attr]
        parent = {t.alias_or_name: t.alias_or_name for t in tables}
        for predicate in _all_conjuncts(select):
            aliases = {c.table for c in predicate.find_all(exp.Column)}
            if len(aliases) >= 2 and aliases <= set(parent) and isinstance(predicate, exp.EQ) and pushable(predicate, aliases, caps):
                first, *rest = sorted(aliases)
                for other in rest:
                    parent[_root(parent, other)] = _root(parent, first)
        components: dict[str, list[exp.Table]] = {}
        for table in tables:
            components.setdefault(_root(parent, table.alias_or_name), []).append(table)
        groups += [members for members in components.values() if len(members) >= 2]
    return groups


def _root(parent: dict[str, str], alias: str) -> str:
    """Union-find: the representative of ``alias``'s connected set of tables."""
    while parent[alias] != alias:
        alias = parent[alias]
    return alias


def _replace_group(select: exp.Select, group: list[exp.Table], used: dict[int, set[str]], ctx: PlanContext) -> None:
    aliases = {t.alias_or_name for t in group}
    bindings = [ctx.bindings[t.name] for t in group]
    caps = bindings[0].connector.capabilities  # type: ignore[union-attr]
    columns = [(t.alias_or_name, column, ctx.bindings[t.name]) for t in group for column in sorted(used.get(id(t), set()))]
    projections = [exp.alias_(exp.column(c, table=a, quoted=True), f"{a}__{c}", quoted=True) for a, c, _ in columns]
    query = exp.select(*(projections or [exp.alias_("1", "__row", quoted=True)]))
    query = query.from_(group[0].copy())
    for table in group[1:]:
        query = query.join(table.copy(), join_type="CROSS")
    for predicate in _all_conjuncts(select):
        if (folded := pushable(predicate, aliases, caps)) is not None:
            query = query.where(folded, copy=False)
    expected = pa.schema([(f"{a}__{c}", b.contract_schema()[c]) for a, c, b in columns]) if columns else None
    physical = to_physical(query, ctx)
    fragment = ctx.add_fragment(lambda name: Fragment(name, bindings[0].connector, physical, expected, tuple(bindings)))
    group_alias = f"{fragment.name}_join"
    _detach_members(select, group, fragment.name, group_alias)
    for column in list(select.find_all(exp.Column)):
        if column.table in aliases:
            column.replace(exp.column(f"{column.table}__{column.name}", table=group_alias, quoted=True))


def _detach_members(select: exp.Select, group: list[exp.Table], fragment_name: str, alias: str) -> None:
    """Put the fragment where the group's first table was; drop the others, keeping their ON."""
    replacement = exp.Table(this=exp.to_identifier(fragment_name), alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
    first, *others = group
    moved: list[exp.Expression] = []
    for join in list(select.args.get("joins") or []):
        if any(join.this is t for t in others):
            on = join.args.get("on")
            if on is not None:
                moved.append(on.copy())
            join.pop()
    first.replace(replacement)
    for condition in moved:
        select.where(condition, copy=False)
