"""Enforce governance by rewriting: each governed product reference becomes a masked, filtered
sub-select, before any other rule sees the query.

``customers.customers AS c`` becomes ``(SELECT id, <mask>(email) AS email, ... FROM __p0 WHERE
<row filters>) AS c``.  Everything the query does with a column (WHERE, JOIN, GROUP BY, ORDER BY,
DISTINCT, windows, functions of it) then sees the masked value, and rows a filter removes do not
exist for it.  The sub-select is marked as a *barrier*: the pushdown rules run it as a fragment
of its own (in the source where the source can evaluate it, else in the engine before the
query), never merged with the query's own predicates, so no predicate of the client's can be
evaluated on a filtered row (the division-by-zero side channel).

Principal-dependent values in row filters (``{user.region}``) become typed literals built by
sqlglot, never SQL text.  Access is decided here too: a denied product stops planning before
any source is contacted.
"""

from __future__ import annotations

import re
from typing import Any

import sqlglot
from sqlglot import exp

from gateway.descriptor import Column, Descriptor
from gateway.errors import InvalidQuery, PermissionDenied
from gateway.planner.bind import literal
from gateway.planner.context import PlanContext
from policies.decision import ColumnMask, Decision, RowFilter

_USER_REFERENCE = re.compile(r"\{(user\.[A-Za-z_][A-Za-z0-9_]*)\}")
BARRIER = "governed"


def apply_policies(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    for table in list(expression.find_all(exp.Table)):
        binding = ctx.bindings.get(table.name)
        if binding is None or binding.descriptor is None:
            continue
        decision = ctx.decide(binding.descriptor)
        ctx.decisions[binding.descriptor.product_id] = decision
        if not decision.allowed:
            raise PermissionDenied(
                f"access to {binding.descriptor.product_id} denied: {decision.denied_by or 'no policy allows it'}"
            )
        if decision.masks or decision.row_filters:
            table.replace(governed_subselect(table, binding.descriptor, decision))
    return expression


def governed_subselect(table: exp.Table, descriptor: Descriptor, decision: Decision) -> exp.Subquery:
    """``(SELECT masked columns FROM table WHERE filters) AS alias``, marked as a barrier."""
    masks = {m.column: m for m in decision.masks}
    inner = exp.Table(this=exp.to_identifier(table.name), alias=exp.TableAlias(this=exp.to_identifier(table.name)))
    projections = [_masked(column, masks.get(column.name)) for column in descriptor.columns]
    select = exp.select(*projections).from_(inner)
    for row_filter in decision.row_filters:
        select = select.where(_predicate(row_filter), copy=False)
    select.meta[BARRIER] = True
    return exp.Subquery(this=select, alias=table.args["alias"].copy())


def _masked(column: Column, mask: ColumnMask | None) -> exp.Expression:
    ref = exp.column(column.name, quoted=True)
    if mask is None:
        return ref
    return exp.alias_(mask_expression(ref, column, mask), column.name, quoted=True)


def mask_expression(ref: exp.Expression, column: Column, mask: ColumnMask) -> exp.Expression:
    """The SQL (PostgreSQL dialect, transpiled per source) that masks ``ref``; same type out."""
    sql_type = exp.DataType.build(column.type.sql, dialect="postgres")
    is_text = column.type.name == "string"
    text = exp.cast(ref.copy(), "TEXT")
    if mask.kind == "null" or (mask.kind == "redact" and not is_text):
        return exp.cast(exp.Null(), sql_type)
    if mask.kind == "redact":
        return exp.Literal.string("[REDACTED]")
    if mask.kind == "hash":
        hashed = exp.MD5(this=text)
        return hashed if is_text else exp.cast(exp.Null(), sql_type)
    if mask.kind == "email":
        return exp.func("regexp_replace", text, exp.Literal.string("^[^@]*"), exp.Literal.string("***"))
    if mask.kind == "last4":
        return exp.DPipe(this=exp.Literal.string("***"), expression=exp.func("right", text, exp.Literal.number(4)))
    if mask.kind == "first4":
        return exp.DPipe(this=exp.func("left", text, exp.Literal.number(4)), expression=exp.Literal.string("***"))
    if mask.kind == "year_only":
        if column.type.name not in ("date", "timestamp", "timestamptz"):
            return exp.cast(exp.Null(), sql_type)
        return exp.cast(exp.func("date_trunc", exp.Literal.string("year"), ref.copy()), sql_type)
    if mask.kind == "custom" and mask.expression:
        parsed = sqlglot.parse_one(mask.expression.replace("{column}", f'"{column.name}"'), read="postgres")
        return exp.cast(parsed, sql_type)
    raise InvalidQuery(f"policy {mask.policy}: unknown mask '{mask.kind}' on {column.name}")


def _predicate(row_filter: RowFilter) -> exp.Expression:
    """Parse a filter with each ``{user.x}`` replaced by a bound literal of the principal's value."""
    values: dict[str, Any] = {}

    def placeholder(match: re.Match[str]) -> str:
        name = f"__bind_{len(values)}"
        key = match.group(1)
        if key not in row_filter.bindings:
            raise PermissionDenied(f"policy {row_filter.policy}: the principal has no attribute '{key[5:]}' it needs")
        values[name] = row_filter.bindings[key]
        return name

    predicate = sqlglot.parse_one(_USER_REFERENCE.sub(placeholder, row_filter.sql), read="postgres")
    for column in list(predicate.find_all(exp.Column)):
        if column.name in values and not column.table:
            column.replace(literal(values[column.name]))
    return predicate
