"""Resolve every ``domain.product`` reference to a product version and its connector.

Each reference becomes a placeholder table (``__p0``, ``__p1``, ...) that keeps the alias the
query used, so later rules can reason about sources without re-reading the registry, and one
product read twice (a self-join) is two independent scans.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.descriptor import Descriptor
from gateway.errors import NotFound
from gateway.planner.context import PlanContext
from gateway.planner.plan import Binding
from gateway.names import CATALOG, SYSTEM_SCHEMA
from gateway.system_products import SYSTEM_DOMAIN, system_products


def resolve_products(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    cte_names = {cte.alias_or_name for cte in expression.find_all(exp.CTE)}
    for table in list(expression.find_all(exp.Table)):
        if not table.db and _folded(table.this) in {n.lower() for n in cte_names}:
            continue
        binding = _bind(table, ctx)
        ctx.bindings[binding.internal_name] = binding
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name, quoted=True))
        table.replace(exp.Table(this=exp.to_identifier(binding.internal_name), alias=alias.copy()))
    return expression


def _bind(table: exp.Table, ctx: PlanContext) -> Binding:
    name = f"__p{len(ctx.bindings)}"
    if table.catalog and table.catalog.lower() != CATALOG:
        raise NotFound(f"unknown catalog '{table.catalog}' in '{table.sql('postgres')}': the only catalog is '{CATALOG}'")
    if not table.db and ctx.default_schema:  # the session's schema option
        descriptor = ctx.catalog.resolve(ctx.default_schema, _folded(table.this))
        return _product_binding(name, descriptor, ctx)
    if not table.db:
        matches = [d.product_id for d in ctx.catalog.products() if d.name == table.name]
        hint = f"; did you mean {', '.join(matches)}?" if matches else ""
        raise NotFound(f"unknown relation '{table.name}': data products are named domain.product{hint}")
    schema = _folded(table.args["db"])
    if schema in (SYSTEM_SCHEMA, SYSTEM_DOMAIN):
        found = ctx.system_table(schema, _folded(table.this))
        if found is None:
            have = "schemata, tables, columns" if schema == SYSTEM_SCHEMA else ", ".join(p.descriptor.name for p in system_products())
            raise NotFound(f"unknown system table '{schema}.{table.name}' (have: {have})")
        descriptor, rows = found
        return Binding(name, descriptor, None, local=rows)
    descriptor = ctx.catalog.resolve(_folded(table.args["db"]), _folded(table.this))
    return _product_binding(name, descriptor, ctx)


def _product_binding(name: str, descriptor: Descriptor, ctx: PlanContext) -> Binding:
    """A derived product has no connector: ``expand_derived_products`` replaces it by its query."""
    return Binding(name, descriptor, None if descriptor.derived else ctx.connector_for(descriptor))


def _folded(identifier: exp.Identifier) -> str:
    """PostgreSQL folds unquoted names to lower case; quoted ones are taken as written."""
    return identifier.name if identifier.quoted else identifier.name.lower()
