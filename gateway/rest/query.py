"""Queries over HTTP: ``POST /api/v1/query`` (any SQL) and ``POST /api/v1/data-products/{id}/query``
(one product, by columns and filters or by SQL that reads it).

Both answer through ``GatewayService.execute`` exactly as Flight SQL does: the caller's
principal, its masks and row filters, the audit log, admission control, the query timeout and
the result cache. JSON or an Arrow IPC stream by ``Accept`` (``gateway/rest/results.py``).

Parameters (``?`` or ``$1`` in the SQL) are JSON values; where the statement compares a
parameter with a product column, a string is read as that column's type (a date, a timestamp, a
decimal), as a Flight SQL client binds by the prepared statement's parameter schema.
``max_staleness`` (or the ``X-Meshgate-Max-Staleness`` header, or ``Cache-Control: max-age=N`` /
``no-cache``) bounds how old a cached answer may be, like the Flight SQL session option.
"""

from __future__ import annotations

import decimal
import difflib
import threading
import time
from typing import Any, Union

import pyarrow as pa
import sqlglot
from fastapi import APIRouter, Body, Depends, Header, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlglot import exp
from sqlglot.errors import ParseError

from gateway.cache import MAX_STALENESS_HEADER
from gateway.descriptor import Descriptor
from gateway.errors import InvalidQuery, NotFound
from gateway.names import CATALOG
from gateway.rest.app import ApiError, Problem, caller, errors
from gateway.rest.results import RESULT_CONTENT, negotiate, stream_result
from gateway.types import parse_duration
from policies import Principal

router = APIRouter(tags=["query"])

Scalar = Union[str, int, float, bool, None]


class QueryRequest(BaseModel):
    """A SQL statement (PostgreSQL dialect) and its parameter values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"sql": "SELECT status, count(*) FROM orders.orders WHERE order_date >= ? GROUP BY status", "parameters": ["2024-01-01"]}]})

    sql: str = Field(min_length=1, description="one read statement: SELECT, WITH, EXPLAIN, SHOW, DESCRIBE")
    parameters: list[Scalar] = Field([], description="values of the statement's `?` / `$n` placeholders, in order")
    default_schema: str | None = Field(None, description="the domain unqualified product names resolve in")
    max_staleness: str | float | None = Field(
        None, description="oldest cached answer accepted, e.g. 30s, 5m or seconds; 0 bypasses the result cache")


class ProductQueryRequest(BaseModel):
    """A query of one product: either `sql` that reads it (unqualified names resolve in its
    domain), or `columns` / `filters` / `where` / `order_by` / `limit` / `offset` from which the
    gateway writes `SELECT <columns> FROM <product> WHERE <where> AND <filters> ORDER BY ... LIMIT ...`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"columns": ["order_id", "amount"], "filters": {"status": ["shipped", "delivered"]},
         "where": "amount > ?", "parameters": [100], "order_by": ["amount DESC"], "limit": 10},
        {"sql": "SELECT status, count(*) FROM orders GROUP BY status"}]})

    sql: str | None = Field(None, min_length=1, description="SQL that reads this product; not with the fields below")
    columns: list[str] | None = Field(None, min_length=1, description="columns to return (default: all the caller may see)")
    filters: dict[str, Union[Scalar, list[Scalar]]] | None = Field(
        None, description="column -> value (equality; null: IS NULL) or list of values (IN), all AND-ed; values are bound, never pasted")
    where: str | None = Field(None, min_length=1, description="a SQL condition (PostgreSQL dialect), may use `?` placeholders")
    parameters: list[Scalar] = Field([], description="values of the `?` placeholders of `sql` or `where`, in order")
    order_by: list[str] | None = Field(None, description="columns, each optionally followed by ASC/DESC and NULLS FIRST/LAST")
    limit: int | None = Field(None, ge=0, description="at most this many rows")
    offset: int | None = Field(None, ge=0, description="skip this many rows first (use with order_by)")
    max_staleness: str | float | None = Field(None, description="as for POST /api/v1/query")


@router.post("/api/v1/query", responses={**RESULT_CONTENT, **errors(400, 403, 404, 406, 503, 504)},
             summary="Run a SQL query under the caller's policies")
def query(request: Request, body: QueryRequest = Body(...), principal: Principal = Depends(caller),
          accept: str | None = Header(None), cache_control: str | None = Header(None),
          x_meshgate_max_staleness: str | None = Header(None)) -> Any:
    """Run one read statement with exactly the governance of Flight SQL (masks, row filters,
    audit, admission control, timeout, result cache). Answers JSON or an Arrow IPC stream by
    `Accept`; the result metadata is also in `X-Meshgate-*` headers."""
    media_type = negotiate(accept)
    return _run(request, principal, body.sql, body.parameters, body.default_schema,
                _staleness(body.max_staleness, cache_control, x_meshgate_max_staleness), media_type)


@router.post("/api/v1/data-products/{product_id}/query",
             responses={**RESULT_CONTENT, **errors(400, 403, 404, 406, 503, 504)},
             summary="Query one data product by columns and filters, or by SQL")
def query_product(product_id: str, request: Request, body: ProductQueryRequest = Body(...),
                  principal: Principal = Depends(caller), accept: str | None = Header(None),
                  cache_control: str | None = Header(None), x_meshgate_max_staleness: str | None = Header(None)) -> Any:
    """`product_id` is `domain.product` (the newest active major) or `domain.product@MAJOR`. A
    product the caller may not read is 404, as if it did not exist. The body is either `sql`
    reading this product or the structured fields; the generated SQL is returned in the JSON
    metadata (`sql`)."""
    media_type = negotiate(accept)
    service = request.app.state.service
    descriptor = visible_product(service, principal, product_id)
    staleness = _staleness(body.max_staleness, cache_control, x_meshgate_max_staleness)
    if body.sql is not None:
        conflicting = [name for name in ("columns", "filters", "where", "order_by", "limit", "offset")
                       if getattr(body, name) is not None]
        if conflicting:
            problems = [Problem(field=name, message="give sql or the structured fields, not both") for name in conflicting]
            raise ApiError(422, "invalid request", f"give either sql or {', '.join(conflicting)}, not both",
                           conflicting[0], problems=problems)
        _require_reads(body.sql, descriptor)
        return _run(request, principal, body.sql, body.parameters, descriptor.domain, staleness, media_type)
    sql, parameters = product_sql(descriptor, product_id, body)
    return _run(request, principal, sql, parameters, None, staleness, media_type, {"sql": sql})


def visible_product(service: Any, principal: Principal, product_id: str) -> Descriptor:
    """The product version ``product_id`` names, if ``principal`` may read it; else NotFound
    (a product the caller may not read is invisible, as in Flight SQL metadata)."""
    domain, dot, name = product_id.partition(".")
    if not dot or not domain or not name:
        raise NotFound(f"'{product_id}' is not a product id: write domain.product (or domain.product@MAJOR)")
    catalog = service.registry.catalog(max_age=0)  # read your writes
    try:
        descriptor = catalog.resolve(domain, name)
    except NotFound as err:
        # the catalog's message may name other products ("did you mean ...?"), a retirement
        # note or the majors there are: only for a product the caller may read
        known = catalog.versions.get(f"{domain}.{name.partition('@')[0]}") or [
            r.descriptor for r in (catalog.retired.get(f"{domain}.{name.partition('@')[0]}") or {}).values()]
        if known and service.may_read(principal, known[0]):
            raise
        visible = [d.product_id for d in catalog.products() if service.may_read(principal, d)]
        close = difflib.get_close_matches(f"{domain}.{name.partition('@')[0]}", visible, n=3, cutoff=0.5)
        raise NotFound(f"unknown data product '{product_id}'" + (f"; did you mean {', '.join(close)}?" if close else "")) from err
    if not service.may_read(principal, descriptor):
        raise NotFound(f"unknown data product '{product_id}'")
    return descriptor


def product_sql(descriptor: Descriptor, product_id: str, body: ProductQueryRequest) -> tuple[str, list[Any]]:
    """The SQL and parameter values the structured fields of ``body`` stand for; ApiError 422
    listing every problem (unknown columns, a condition that does not parse, ...)."""
    known = [c.name for c in descriptor.columns]
    problems: list[Problem] = []

    def column(name: str, field: str) -> exp.Column:
        if name not in known:
            problems.append(Problem(field=field, message=f"{descriptor.product_id} has no column '{name}' (it has: {', '.join(known)})"))
        return exp.column(name, quoted=True)

    selected = [column(c, f"columns[{i}]") for i, c in enumerate(body.columns or ())] or [exp.Star()]
    name = product_id.split(".", 1)[1]
    select = exp.select(*selected).from_(exp.table_(name, db=descriptor.domain, quoted=True))
    parameters = list(body.parameters)
    if body.where is not None:
        try:
            condition, count = _numbered(exp.condition(body.where, dialect="postgres"))
        except (ParseError, InvalidQuery) as err:
            problems.append(Problem(field="where", message=f"not a SQL condition: {str(err).splitlines()[0]}"))
        else:
            if count != len(parameters):
                problems.append(Problem(field="parameters", message=f"where has {count} placeholder(s), {len(parameters)} value(s) given"))
            select = select.where(exp.paren(condition))
    elif parameters:
        problems.append(Problem(field="parameters", message="parameters are for placeholders of where or sql; there is neither"))

    def bound(value: Any) -> exp.Parameter:  # the next parameter (the where's, when valid, come first)
        parameters.append(value)
        return exp.Parameter(this=exp.Literal.number(len(parameters)))

    for key, value in (body.filters or {}).items():
        target = column(key, f"filters.{key}")
        if value is None:
            select = select.where(target.is_(exp.null()))
        elif isinstance(value, list):
            if not value:
                problems.append(Problem(field=f"filters.{key}", message="an empty list matches nothing"))
            select = select.where(target.isin(*[bound(v) for v in value]))
        else:
            select = select.where(target.eq(bound(value)))
    for i, text in enumerate(body.order_by or ()):
        try:
            ordered = sqlglot.parse_one(text, into=exp.Ordered, dialect="postgres")
        except ParseError:
            ordered = None
        if not isinstance(ordered, exp.Ordered) or not isinstance(ordered.this, exp.Column) or ordered.this.table:
            problems.append(Problem(field=f"order_by[{i}]", message=f"'{text}' is not a column with optional ASC/DESC, NULLS FIRST/LAST"))
            continue
        ordered.set("this", column(ordered.this.name, f"order_by[{i}]"))
        select = select.order_by(ordered)
    if body.limit is not None:
        select = select.limit(body.limit)
    if body.offset is not None:
        select = select.offset(body.offset)
    if problems:
        raise ApiError(422, "invalid request", "; ".join(f"{p.field}: {p.message}" for p in problems), problems[0].field,
                       problems=problems)
    return select.sql(dialect="postgres"), parameters


def _numbered(condition: exp.Expression) -> tuple[exp.Expression, int]:
    """``condition`` with its ``?`` placeholders written ``$1``, ``$2``... in order (as the
    planner numbers them), and how many parameters it takes."""
    positional = [p for p in condition.walk(bfs=False) if isinstance(p, exp.Placeholder)]
    numbered = [int(p.name) for p in condition.find_all(exp.Parameter) if p.name.isdigit()]
    if positional and numbered:
        raise InvalidQuery("mix of ? and $n parameters; use one style")
    for i, placeholder in enumerate(positional):
        placeholder.replace(exp.Parameter(this=exp.Literal.number(i + 1)))
    return condition, len(positional) or max(numbered, default=0)


def _require_reads(sql: str, descriptor: Descriptor) -> None:
    """``sql`` must read ``descriptor``'s product (qualified, or unqualified in its domain)."""
    try:
        statements = sqlglot.parse(sql, read="postgres")
    except ParseError:
        return  # the planner reports the syntax error with its usual message
    for statement in statements:
        for table in statement.find_all(exp.Table) if statement is not None else ():
            if table.name.split("@")[0] == descriptor.name and table.db in ("", descriptor.domain) \
                    and table.catalog in ("", CATALOG):
                return
    raise ApiError(422, "invalid request", f"the SQL does not read {descriptor.product_id}: query it (FROM {descriptor.name} "
                   f"or FROM {descriptor.product_id}), or use POST /api/v1/query for other queries", "sql")


def _run(request: Request, principal: Principal, sql: str, parameters: list[Any], default_schema: str | None,
         max_staleness: float | None, media_type: str, extra: dict[str, Any] | None = None) -> Any:
    started = time.perf_counter()
    service = request.app.state.service
    client = f"http:{request.client.host}:{request.client.port}" if request.client else "http"
    prepared = service.prepare(sql, principal, client=client, default_schema=default_schema)
    values = typed_parameters(parameters, prepared.parameter_schema)
    cancelled = threading.Event()
    reader = service.execute(prepared, principal, values, is_cancelled=cancelled.is_set, client=client,
                             default_schema=default_schema,
                             **({"max_staleness": max_staleness} if max_staleness is not None else {}))
    return stream_result(reader, media_type, started, cancelled, extra)


def typed_parameters(values: list[Any], schema: pa.Schema) -> list[Any]:
    """JSON values read as the parameter types the statement infers (a date string compared with
    a date column becomes a date); ApiError 422 naming each value that cannot be."""
    if len(values) != len(schema):
        raise InvalidQuery(f"the statement takes {len(schema)} parameter(s), {len(values)} given")
    typed, problems = [], []
    for i, (value, field) in enumerate(zip(values, schema)):
        kind = field.type
        try:
            if value is None or isinstance(value, bool) or not (
                    pa.types.is_temporal(kind) or pa.types.is_decimal(kind)):
                typed.append(value)
            elif pa.types.is_decimal(kind):
                typed.append(decimal.Decimal(str(value)))
            else:
                if not isinstance(value, str):
                    raise ValueError(f"expected an ISO 8601 string for a {kind} value")
                typed.append(pa.array([value]).cast(kind)[0].as_py())
        except (ValueError, TypeError, decimal.InvalidOperation, pa.ArrowInvalid) as err:
            problems.append(Problem(field=f"parameters[{i}]", message=f"{value!r} is not a {kind} value: {err}"))
    if problems:
        raise ApiError(422, "invalid request", "; ".join(f"{p.field}: {p.message}" for p in problems), problems[0].field,
                       problems=problems)
    return typed


def _staleness(value: str | float | None, cache_control: str | None, header: str | None = None) -> float | None:
    """Seconds from the body's ``max_staleness``, else the ``X-Meshgate-Max-Staleness`` header
    (``gateway.cache.MAX_STALENESS_HEADER``), else ``Cache-Control`` (max-age, no-cache)."""
    for given, field in ((value, "max_staleness"), (header, MAX_STALENESS_HEADER)):
        if given is None:
            continue
        try:
            seconds = parse_duration(given)
        except ValueError as err:
            raise ApiError(422, "invalid request", f"{field}: {err}", field) from None
        if seconds is not None and seconds < 0:
            raise ApiError(422, "invalid request", f"{field}: must not be negative", field)
        return seconds
    for directive in (cache_control or "").lower().split(","):
        key, _, argument = directive.strip().partition("=")
        if key in ("no-cache", "no-store"):
            return 0.0
        if key == "max-age" and argument.strip().isdigit():
            return float(argument)
    return None
