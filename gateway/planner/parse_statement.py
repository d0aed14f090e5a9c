"""Parse one statement and let only reads through.

The gateway is read-only by design: anything that is not SELECT, WITH, a set operation, VALUES,
EXPLAIN or one of the catalog statements (SHOW, DESCRIBE) is rejected before it goes near a
source, with a message saying what was refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway.errors import InvalidQuery

_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:\(\s*FORMAT\s+\w+\s*\)\s*)?", re.IGNORECASE)
_SHOW = re.compile(r"^\s*SHOW\s+(TABLES|SCHEMAS|DATABASES)\s*;?\s*$", re.IGNORECASE)
_READS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Values)


@dataclass(frozen=True)
class Statement:
    """A parsed read: ``kind`` is 'query', 'explain' or 'describe'/'show' (already rewritten)."""

    kind: str
    expression: exp.Query
    subject: exp.Table | None = None  # DESCRIBE's product, which must exist


def parse_statement(sql: str) -> Statement:
    """Parse ``sql`` (PostgreSQL dialect); catalog statements become information_schema queries."""
    if not sql or not sql.strip():
        raise InvalidQuery("empty statement: send one SELECT, WITH, VALUES, EXPLAIN, SHOW or DESCRIBE")
    explain = _EXPLAIN.match(sql)
    if explain:
        return Statement("explain", parse_statement(sql[explain.end():]).expression)
    show = _SHOW.match(sql)
    if show:
        what = show.group(1).upper()
        text = (
            "SELECT table_schema, table_name, table_type, remarks FROM information_schema.tables "
            "ORDER BY table_schema, table_name"
            if what == "TABLES"
            else "SELECT schema_name FROM information_schema.schemata ORDER BY schema_name"
        )
        return Statement("show", _parse_one(text))
    expression = _parse_one(sql)
    if isinstance(expression, exp.Describe):
        return _describe(expression)
    if isinstance(expression, exp.Subquery):
        expression = expression.unnest()
    if isinstance(expression, exp.Values):
        expression = _select_from_values(expression)
    if not isinstance(expression, _READS):
        kind = expression.key.upper() if not isinstance(expression, exp.Command) else str(expression.this).upper()
        raise InvalidQuery(
            f"{kind} statements are not allowed: meshgate is read-only and accepts SELECT, WITH, "
            "set operations, VALUES, EXPLAIN, SHOW TABLES, SHOW SCHEMAS and DESCRIBE"
        )
    return Statement("query", expression)


def _select_from_values(values: exp.Values) -> exp.Select:
    """``VALUES ...`` as ``SELECT * FROM (VALUES ...)``, with PostgreSQL's column1, column2 names.

    sqlglot parses ``VALUES ... ORDER BY ... LIMIT ... OFFSET ...`` into the VALUES node itself;
    those clauses move to the SELECT, where they apply to the rows (inside a derived table's
    VALUES they would be dropped or refused by the engine).
    """
    clauses = {key: values.args.get(key) for key in ("order", "limit", "offset")}
    values = values.copy()
    for key in clauses:
        values.set(key, None)
    width = len(values.expressions[0].expressions) if values.expressions else 0
    alias = exp.TableAlias(
        this=exp.to_identifier("*VALUES*", quoted=True),
        columns=[exp.to_identifier(f"column{i + 1}") for i in range(width)],
    )
    values.set("alias", alias)  # the tree sqlglot parses for ``FROM (VALUES ...) AS a(c1, c2)``
    select = exp.select("*").from_(values)
    for key, clause in clauses.items():
        if clause is not None:
            select.set(key, clause)
    return select


def _parse_one(sql: str) -> exp.Expression:
    try:
        expressions = [e for e in sqlglot.parse(sql, read="postgres") if e is not None]
    except (ParseError, TokenError) as err:
        raise InvalidQuery(f"syntax error: {_describe_parse_error(err)}") from err
    if not expressions:
        raise InvalidQuery("empty statement")
    if len(expressions) > 1:
        raise InvalidQuery(f"one statement at a time, got {len(expressions)}")
    return expressions[0]


def _describe(statement: exp.Describe) -> Statement:
    table = statement.this
    if not isinstance(table, exp.Table) or not table.db:
        raise InvalidQuery("DESCRIBE takes a product name: DESCRIBE domain.product")
    query = sqlglot.parse_one(
        "SELECT column_name, data_type, is_nullable, column_comment FROM information_schema.columns "
        "WHERE table_schema = {schema} AND table_name = {name} ORDER BY ordinal_position".format(
            schema=exp.Literal.string(table.db).sql("postgres"),
            name=exp.Literal.string(table.name).sql("postgres"),
        ),
        read="postgres",
    )
    return Statement("describe", query, subject=table)


def _describe_parse_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if errors:
        first = errors[0]
        where = f" at line {first.get('line')}, column {first.get('col')}" if first.get("line") else ""
        return f"{first.get('description', 'invalid SQL')}{where} near '{first.get('highlight', '')}'"
    return str(err).splitlines()[0]
