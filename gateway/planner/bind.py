"""Bind parameter values into a cached plan and render each part in its engine's dialect.

Values become typed SQL literals built by sqlglot (never pasted into SQL text), so a string
parameter cannot change the statement's shape, in the fragments or in the residual query.
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
from sqlglot import exp

from connectors.base import Connector
from gateway.errors import InvalidQuery
from gateway.types import sql_type_name
from gateway.planner.plan import DynamicFilter, LocalRows, Plan


@dataclass(frozen=True)
class BoundFragment:
    name: str
    connector: Connector | None
    sql: str | None  # in the connector's dialect
    expected: pa.Schema | None
    products: tuple[str, ...]
    local: LocalRows | None = None  # rows served from memory, produced when the query runs
    post_sql: str | None = None  # DataFusion SQL over the fetched rows (table "__raw"), if any
    unfiltered: bool = False  # no predicates: it returns every row of its source (exact estimate)
    stage: bool = False  # computed by the engine (post_sql) from earlier fragments, before the residual


@dataclass(frozen=True)
class BoundPlan:
    fragments: list[BoundFragment]
    residual_sql: str  # for DataFusion
    output_names: list[str]
    passthrough: BoundFragment | None
    dynamic_filters: list[DynamicFilter]


def bind(plan: Plan, values: Sequence[Any] | None) -> BoundPlan:
    """Render ``plan`` with ``values``; ``None`` keeps the placeholders (for EXPLAIN)."""
    expected = len(plan.parameter_types)
    if values is not None and len(values) != expected:
        raise InvalidQuery(f"the statement takes {expected} parameter(s), {len(values)} given")
    literals = [literal(v) for v in values] if values is not None else [exp.Placeholder()] * expected
    return _render(plan, literals)


def bind_for_schema(plan: Plan) -> BoundPlan:
    """Render ``plan`` with each parameter a NULL of its inferred type, so that planning the
    result schema types ``SELECT ? AS v`` as the parameter's type, not as NULL's."""
    return _render(plan, [typed_null(t) for t in plan.parameter_types])


def typed_null(arrow_type: pa.DataType) -> exp.Expression:
    return exp.cast(exp.Null(), exp.DataType.build(sql_type_name(arrow_type), dialect="postgres"))


def _render(plan: Plan, literals: list[exp.Expression]) -> BoundPlan:
    fragments = []
    for fragment in plan.fragments:
        sql = None
        if fragment.expression is not None and fragment.connector is not None:
            sql = fragment.connector.render(_substitute(fragment.expression, literals))
        post = _substitute(fragment.post, literals).sql(dialect="postgres", identify=True) if fragment.post else None
        fragments.append(
            BoundFragment(
                fragment.name, fragment.connector, sql, fragment.expected, fragment.products, fragment.local, post,
                unfiltered=fragment.expression is not None and not fragment.expression.find(exp.Where),
                stage=fragment.stage,
            )
        )
    residual = _substitute(plan.residual, literals).sql(dialect="postgres", identify=True)
    passthrough = fragments[0] if plan.passthrough is not None else None
    return BoundPlan(fragments, residual, plan.output_names, passthrough, plan.dynamic_filters)


def _substitute(expression: exp.Expression, literals: list[exp.Expression]) -> exp.Expression:
    if not literals:
        return expression
    copy = expression.copy()
    for placeholder in list(copy.find_all(exp.Placeholder)):
        placeholder.replace(literals[int(placeholder.name)].copy())
    return copy


def literal(value: Any) -> exp.Expression:
    """A SQL literal for a bound Python value."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float, decimal.Decimal)):
        if isinstance(value, float) and value != value:
            return exp.cast(exp.Literal.string("NaN"), "DOUBLE")
        return exp.Literal.number(value)
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, dt.datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo else "TIMESTAMP"
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), kind)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    if isinstance(value, dt.time):
        return exp.cast(exp.Literal.string(value.isoformat()), "TIME")
    raise InvalidQuery(f"unsupported parameter value of type {type(value).__name__}")
