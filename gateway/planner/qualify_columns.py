"""Qualify every column with its table and expand ``*``, against the products' contracts.

After this rule each column names the alias it comes from, which is what lets the pushdown
rules decide which source a predicate or projection belongs to.  An unknown or ambiguous column
is the client's error, reported with the column's name.
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify

from gateway.errors import InvalidQuery
from gateway.planner.context import PlanContext
from gateway.types import sql_type_name


def qualify_columns(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    schema = {
        name: {column: sql_type_name(arrow_type) for column, arrow_type in binding.contract_schema().items()}
        for name, binding in ctx.bindings.items()
    }
    try:
        return qualify(
            expression,
            schema=schema,
            dialect="postgres",
            validate_qualify_columns=True,
            quote_identifiers=True,
        )
    except OptimizeError as err:
        raise InvalidQuery(_explain(str(err), ctx)) from err


def _explain(message: str, ctx: PlanContext) -> str:
    """sqlglot's messages speak of the internal table names; speak of products instead."""
    for name, binding in ctx.bindings.items():
        label = binding.descriptor.product_id if binding.descriptor else "information_schema"
        message = message.replace(f'"{name}"', label).replace(name, label)
    return message.rstrip(".")
