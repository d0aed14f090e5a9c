"""Replace each derived product (``source.connector: mesh``) by its query, as a sub-select.

A derived product is a view over other products.  Its reference (already resolved and, by
``apply_policies``, authorized and wrapped in its *own* masks and row filters) becomes

    (SELECT CAST(__derived.col AS <contract type>) AS col, ... FROM (<its query>) AS __derived)

and the products its query reads go through the same rules as the client's own references:
resolved, authorized and governed for the *querying* principal.  So a mask or row filter of an
input can never be bypassed through a derived product (the input is a governed sub-select before
the derived query sees a row), the derived product's own policies apply on top, and the output
has the contract's columns in the contract's types.  Later rules see plain sub-selects over
products, so a derived product whose inputs live in one source still runs entirely there.

A derived product that reads itself, directly or through others, is refused with the cycle.
"""

from __future__ import annotations

from sqlglot import exp

from gateway.descriptor import Descriptor
from gateway.errors import InvalidQuery, MeshError, NotFound, PermissionDenied
from gateway.planner.apply_policies import apply_policies
from gateway.planner.context import PlanContext
from gateway.planner.name_outputs import name_outputs
from gateway.planner.plan import Binding, DerivedRead
from gateway.planner.parse_statement import parse_statement
from gateway.planner.reject_unsafe_functions import reject_unsafe_functions
from gateway.planner.resolve_products import resolve_products

DERIVED = "derived_product"
"""Meta key on a derived product's typed sub-select: the product's id (for aggregate protection)."""

MAX_DEPTH = 32
"""Derived products over derived products, at most this deep."""

_INNER = "__derived"


def expand_derived_products(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    return _expand(expression, ctx, ())


def _expand(expression: exp.Expression, ctx: PlanContext, chain: tuple[str, ...]) -> exp.Expression:
    for table in list(expression.find_all(exp.Table)):
        binding = ctx.bindings.get(table.name)
        if binding is None or binding.descriptor is None or not binding.descriptor.derived:
            continue
        descriptor = binding.descriptor
        if descriptor.product_id in chain:
            cycle = " -> ".join((*chain[chain.index(descriptor.product_id):], descriptor.product_id))
            raise InvalidQuery(f"derived product {descriptor.product_id} reads itself: {cycle}; fix its spec.source.query")
        if len(chain) >= MAX_DEPTH:
            raise InvalidQuery(f"derived products nest deeper than {MAX_DEPTH} levels: {' -> '.join(chain)}")
        before = set(ctx.bindings)
        query = _expand(_governed_inputs(descriptor, ctx), ctx, (*chain, descriptor.product_id))
        _record_inputs(descriptor, [b for name, b in ctx.bindings.items() if name not in before], ctx)
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
        table.replace(exp.Subquery(this=typed(query, descriptor), alias=alias.copy()))
    return expression


def _record_inputs(descriptor: Descriptor, added: list[Binding], ctx: PlanContext) -> None:
    """Note which stored products the derived product's rows come from (the bindings its
    expansion added, nested derived products' included), merged when it is read twice."""
    read = DerivedRead(descriptor, tuple(sorted(
        {f"{b.descriptor.product_id}@{b.descriptor.version}" for b in added if b.descriptor is not None and b.connector is not None}
    )))
    known = ctx.derived.get(read.label)
    if known is not None:
        read = DerivedRead(descriptor, tuple(sorted({*known.inputs, *read.inputs})))
    ctx.derived[read.label] = read


def _governed_inputs(descriptor: Descriptor, ctx: PlanContext) -> exp.Query:
    """The derived query with its products resolved, authorized and governed for the principal.

    Names in it are always ``domain.product`` (a session's default schema does not apply), and
    every error says which derived product it came from.
    """
    label = f"derived product {descriptor.product_id} {descriptor.version}"
    try:
        statement = parse_statement(descriptor.source.query or "")
    except MeshError as err:
        raise InvalidQuery(f"{label}: spec.source.query: {err.message}") from err
    if statement.kind != "query" or statement.expression.find(exp.Placeholder, exp.Parameter):
        raise InvalidQuery(f"{label}: spec.source.query must be one SELECT without parameters")
    query: exp.Expression = statement.expression
    default_schema, ctx.default_schema = ctx.default_schema, None
    try:
        for rule in (reject_unsafe_functions, resolve_products, apply_policies):
            query = rule(query, ctx)
    except PermissionDenied as err:
        raise PermissionDenied(f"{err.message} (read by {label})") from err
    except NotFound as err:
        raise NotFound(f"{label}: {err.message}") from err
    except InvalidQuery as err:
        raise InvalidQuery(f"{label}: {err.message}") from err
    finally:
        ctx.default_schema = default_schema
    assert isinstance(query, exp.Query)
    return query


def typed(query: exp.Query, descriptor: Descriptor) -> exp.Select:
    """The contract's columns of ``query``'s output, in the contract's order and types (also how
    ``gateway/derived_source.py`` reads a derived product's rows for its checks)."""
    problem = output_problem(query, descriptor)
    if problem is not None:
        raise InvalidQuery(f"derived product {descriptor.product_id} {descriptor.version}: {problem}")
    projections = [
        exp.alias_(
            exp.cast(exp.column(c.name, table=_INNER, quoted=True), exp.DataType.build(c.type.sql, dialect="postgres")),
            c.name,
            quoted=True,
        )
        for c in descriptor.columns
    ]
    select = exp.select(*projections).from_(exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier(_INNER))))
    select.meta[DERIVED] = descriptor.product_id
    return select


def output_problem(query: exp.Query, descriptor: Descriptor) -> str | None:
    """What is wrong with ``query``'s output columns for ``descriptor``'s contract, or None.

    Unaliased expressions get PostgreSQL's names first (``count``, ``sum``), in place; a query
    with ``*`` is checked when it runs, against its inputs' contracts.
    """
    name_outputs(query, None)  # type: ignore[arg-type]  # the rule needs no context
    if any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star)) for p in query.selects):
        return None
    returned = query.named_selects
    missing = [c.name for c in descriptor.columns if c.name not in returned]
    if not missing:
        return None
    return (f"its query returns no column {', '.join(repr(m) for m in missing)} of its contract "
            f"(it returns: {', '.join(returned)})")
