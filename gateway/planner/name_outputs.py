"""Give every projection the column name PostgreSQL would give it.

Clients see PostgreSQL's names (``count``, ``?column?``, ``case``), whatever engine computes the
result.  DataFusion refuses duplicate names in one projection, which PostgreSQL allows, so a
duplicate gets an internal alias (``count__2``) and the PostgreSQL name is restored on the
Arrow schema of the answer.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.planner.context import PlanContext

_TYPE_NAMES = {
    "INT": "int4", "INTEGER": "int4", "BIGINT": "int8", "SMALLINT": "int2", "DOUBLE": "float8",
    "FLOAT": "float4", "DECIMAL": "numeric", "VARCHAR": "varchar", "TEXT": "text", "BOOLEAN": "bool",
    "DATE": "date", "TIMESTAMP": "timestamp", "TIMESTAMPTZ": "timestamptz",
}
_FUNCTION_NAMES = {"TIMESTAMP_TRUNC": "date_trunc", "DATE_TRUNC": "date_trunc", "TIMESTAMPTRUNC": "date_trunc"}


def name_outputs(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    """Alias every unaliased, non-column projection of every SELECT with its PostgreSQL name."""
    for select in expression.find_all(exp.Select):
        for projection in select.expressions:
            if isinstance(projection, (exp.Alias, exp.Column, exp.Star)):
                continue
            projection.replace(exp.alias_(projection.copy(), postgres_name(projection), quoted=True))
    return expression


def deduplicate_outputs(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    """After star expansion: make each SELECT's names unique; remember the root's real names."""
    root_names: list[str] | None = None
    for select in expression.find_all(exp.Select):
        seen: dict[str, int] = {}
        names: list[str] = []
        for projection in select.expressions:
            name = projection.alias_or_name
            names.append(name)
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                inner = projection.this if isinstance(projection, exp.Alias) else projection
                projection.replace(exp.alias_(inner.copy(), f"{name}__{seen[name]}", quoted=True))
        if root_names is None and _is_root_select(select, expression):
            root_names = names
    ctx.output_names = root_names if root_names is not None else list(expression.named_selects)
    return expression


def _is_root_select(select: exp.Select, root: exp.Expression) -> bool:
    """The SELECT whose columns are the statement's output (the left-most one of a set op)."""
    node: exp.Expression = root
    while isinstance(node, exp.SetOperation):
        node = node.this
    return node is select


def postgres_name(node: exp.Expression) -> str:
    """PostgreSQL's default output name for an expression."""
    if isinstance(node, (exp.Alias, exp.Column)):
        return node.alias_or_name
    if isinstance(node, exp.Cast):
        if isinstance(node.this, (exp.Column, exp.Func, exp.Cast)):
            return postgres_name(node.this)
        return _TYPE_NAMES.get(node.to.this.name if hasattr(node.to.this, "name") else str(node.to.this), node.to.sql("postgres").lower())
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Exists):
        return "exists"
    if isinstance(node, exp.Boolean):
        return "bool"
    if isinstance(node, exp.Paren):
        return postgres_name(node.this)
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Query) and node.this.named_selects:
        return node.this.named_selects[0] or "?column?"
    if isinstance(node, exp.Window):
        return postgres_name(node.this)
    if isinstance(node, exp.Filter):
        return postgres_name(node.this)
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.Func):
        name = node.sql_name().upper()
        return _FUNCTION_NAMES.get(name, name.lower())
    return "?column?"
