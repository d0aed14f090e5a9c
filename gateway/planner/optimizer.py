"""The planner: a pipeline of small AST-to-AST rules, in the shape of sqlglot's optimizer.

Each rule is one module exporting one function ``rule(expression, ctx) -> expression``; the
order below is the whole algorithm.  Governance (``apply_policies``) runs right after products
are resolved, so every later rule sees the governed query and nothing can push around it;
derived products are then expanded into their (governed) queries.
"""

from __future__ import annotations

from typing import Callable

from sqlglot import exp

from gateway.planner.apply_policies import apply_policies
from gateway.planner.context import PlanContext
from gateway.planner.expand_derived_products import expand_derived_products
from gateway.planner.name_outputs import deduplicate_outputs, name_outputs
from gateway.planner.number_parameters import number_parameters
from gateway.planner.parse_statement import Statement
from gateway.planner.plan import Plan
from gateway.planner.plan_dynamic_filters import plan_dynamic_filters
from gateway.planner.protect_aggregates import protect_aggregates
from gateway.planner.push_join_groups import push_join_groups
from gateway.planner.push_scans import push_scans
from gateway.planner.push_subtrees import push_subtrees
from gateway.planner.qualify_columns import qualify_columns
from gateway.planner.reject_unsafe_functions import reject_unsafe_functions
from gateway.planner.resolve_products import resolve_products
from gateway.planner.type_parameters import type_parameters

Rule = Callable[[exp.Expression, PlanContext], exp.Expression]

RULES: tuple[Rule, ...] = (
    reject_unsafe_functions,
    resolve_products,
    apply_policies,
    expand_derived_products,
    number_parameters,
    name_outputs,
    qualify_columns,
    deduplicate_outputs,
    protect_aggregates,
    type_parameters,
    push_subtrees,
    push_join_groups,
    push_scans,
    plan_dynamic_filters,
)


def plan_statement(sql: str, statement: Statement, ctx: PlanContext) -> Plan:
    expression: exp.Expression = statement.expression.copy()
    for rule in RULES:
        expression = rule(expression, ctx)
    assert isinstance(expression, exp.Query)
    derived = {f"{b.descriptor.product_id}@{b.descriptor.version}" for b in ctx.bindings.values() if b.descriptor and b.descriptor.derived}
    products = tuple(sorted({p for f in ctx.fragments for p in f.products} | derived))
    return Plan(
        sql, expression, ctx.fragments, ctx.output_names, list(ctx.parameter_types), products, ctx.dynamic_filters,
        ctx.decisions, tuple(ctx.derived[label] for label in sorted(ctx.derived)),
    )
