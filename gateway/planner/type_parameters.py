"""Infer each parameter's type from what it is compared with, for the prepared-statement schema.

JDBC and ADBC bind values by the parameter schema a prepared statement advertises; a parameter
compared with a product column takes that column's contract type, any other one is text.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from gateway.planner.context import PlanContext

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)


def type_parameters(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    by_alias = {
        table.alias_or_name: ctx.bindings[table.name].contract_schema()
        for table in expression.find_all(exp.Table)
        if table.name in ctx.bindings
    }
    for placeholder in expression.find_all(exp.Placeholder):
        index = int(placeholder.name)
        ctx.parameter_types[index] = ctx.parameter_types[index] or _type_from_context(placeholder, by_alias)
    ctx.parameter_types = [t or pa.string() for t in ctx.parameter_types]
    return expression


def _type_from_context(placeholder: exp.Placeholder, by_alias: dict[str, dict[str, pa.DataType]]) -> pa.DataType | None:
    parent = placeholder.parent
    while isinstance(parent, (exp.Paren, exp.Tuple)) or isinstance(parent, exp.In):
        if isinstance(parent, exp.In):
            column = parent.this
            break
        parent = parent.parent
    else:
        if not isinstance(parent, (*_COMPARISONS, exp.Between)):
            return None
        column = parent.this if parent.this is not placeholder else parent.expression
    if isinstance(column, exp.Column) and column.table in by_alias:
        return by_alias[column.table].get(column.name)
    return None
