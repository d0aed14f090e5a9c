"""A derived product's rows as a source the platform checks: the quality gates, the SLA probe,
row count and freshness of products with ``source.connector: mesh``.

A derived product has no source of its own: its rows are its query over other products. To
check it like any product, ``DerivedConnector`` presents it as a ``Connector`` to the code that
checks sources (``gateway.quality.run_gates``, ``gateway.sla_monitor.measure``): its relation
is the product's query typed by its contract (``expand_derived_products.typed``, the same
typing a client's query gets) and each of its scans is planned by the gateway's planner (inputs
resolved, derived inputs expanded, fragments pushed to their sources) and run by its engine.

**As whom.** These reads run as the platform itself (``PLATFORM_DECISION``): every product is
readable, with no mask, row filter or minimum group size, whoever publishes or whatever the
monitor checks. A check must see the real rows: a redacted email would fail its pattern rule, a
row filter would hide the failing rows, and a publisher's own entitlements must not decide
whether a product is fit to publish. This is safe because only numbers leave a check: the count
of rows failing a rule, a row count, the newest freshness value and whether the probe answered;
no row or value reaches a user, the audit log or the result cache (these reads use neither).

**Freshness** of a derived product is the oldest of its inputs' freshness (each stored product
it reads, directly or through other derived products, measured as the SLA monitor measures it:
its ``sla.freshness_column``, else its files' modification time): its rows are no newer than
its stalest input. It is unknown when any input's is.

An input that cannot be read (retired, its source down or outside the source roots) makes the
scan fail with that input named: a gate then fails (closed), the probe reports unavailability.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from sqlglot import exp

from connectors.base import Capabilities, Connector, Freshness, Scan, SourceConfig
from gateway.descriptor import Descriptor
from gateway.errors import InvalidQuery, NotFound
from gateway.lineage import query_references
from gateway.planner import PlanContext, bind, parse_statement, plan_statement
from gateway.planner.expand_derived_products import typed
from gateway.sources import SourceManager
from policies.decision import Decision

if TYPE_CHECKING:
    from gateway.engine import Engine
    from gateway.registry import Catalog

PLATFORM_DECISION = Decision(
    True, ("the platform checks a derived product over its inputs' real rows: only counts leave the check",),
    policies=("platform",),
)
"""Governance for the platform's own reads (see the module docstring): allowed, nothing applied."""

DEFAULT_TIMEOUT = 300.0


class DerivedSources:
    """Connectors for products to check: a ``DerivedConnector`` for a derived product, the
    ``SourceManager``'s connector for any other.

    ``catalog`` gives the products inputs resolve against (a publication passes the registry
    plus its batch, so a derived product may be published with its inputs); ``engine`` is the
    gateway's, or one made on first use and closed by ``close`` (publishing from the CLI starts
    no engine unless a derived product is checked)."""

    def __init__(self, catalog: Callable[[], Catalog], sources: SourceManager, engine: Engine | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.catalog = catalog
        self.sources = sources
        self.timeout = timeout
        self._engine = engine
        self._owns_engine = engine is None
        self._lock = threading.Lock()

    def connector_for(self, descriptor: Descriptor) -> Connector:
        return DerivedConnector(descriptor, self) if descriptor.derived else self.sources.connector_for(descriptor)

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from gateway.engine import Engine

                self._engine = Engine(1024**3, fetch_threads=4)
            return self._engine

    def scan(self, sql: str) -> Scan:
        """Plan ``sql`` (PostgreSQL dialect, naming products) as the platform and run it."""
        from gateway.engine import QueryControl

        statement = parse_statement(sql)
        ctx = PlanContext(self.catalog(), self.sources.connector_for, _no_system_relations, lambda _d: PLATFORM_DECISION)
        plan = plan_statement(sql, statement, ctx)
        cancelled = threading.Event()
        control = QueryControl(time.monotonic() + self.timeout, cancelled.is_set, self.timeout)
        reader = self.engine.execute(bind(plan, []), control)
        return Scan(reader, cancelled.set, reader.close)

    def stored_inputs(self, descriptor: Descriptor) -> list[Descriptor]:
        """The stored (not derived) products a derived product reads, directly or through other
        derived products, each once; NotFound when one does not resolve."""
        catalog = self.catalog()
        found: dict[str, Descriptor] = {}
        pending, seen = [descriptor], {descriptor.product_id}
        while pending:
            for domain, name in query_references(pending.pop()):
                d = catalog.resolve(domain, name)
                if not d.derived:
                    found.setdefault(f"{d.product_id}@{d.version}", d)
                elif d.product_id not in seen:
                    seen.add(d.product_id)
                    pending.append(d)
        return list(found.values())

    def close(self) -> None:
        if self._owns_engine and self._engine is not None:
            self._engine.close()


class DerivedConnector(Connector):
    """One derived product's rows, read through the gateway as the platform (module docstring)."""

    kind = "mesh"
    dialect = "postgres"
    capabilities = Capabilities(joins=True, aggregates=True, full_sql=True)

    def __init__(self, descriptor: Descriptor, sources: DerivedSources) -> None:
        super().__init__(SourceConfig("mesh", descriptor.product_id))
        self.descriptor = descriptor
        self.derived_sources = sources

    @property
    def source_id(self) -> str:
        return f"mesh:{self.descriptor.product_id}@{self.descriptor.version}"

    @property
    def display_name(self) -> str:
        return f"mesh:{self.descriptor.product_id} (a query over other products)"

    def relation(self, table: str | None, query: str | None) -> exp.Expression:
        """The product's query, typed by its contract, as ``(...) AS _rows``."""
        label = f"derived product {self.descriptor.product_id} {self.descriptor.version}"
        statement = parse_statement(query or "")
        if statement.kind != "query":
            raise InvalidQuery(f"{label}: spec.source.query must be one SELECT")
        try:
            rows = typed(statement.expression, self.descriptor)
        except InvalidQuery as err:
            raise InvalidQuery(f"{label}: {err.message}") from err
        return rows.subquery("_rows")

    def open_scan(self, sql: str) -> Scan:
        try:
            return self.derived_sources.scan(sql)
        except NotFound as err:
            raise NotFound(f"derived product {self.descriptor.product_id} reads {err.message}") from err

    def freshness(self, table: str | None, query: str | None, column: str | None = None) -> Freshness:
        """The oldest of its stored inputs' freshness (module docstring); ``column`` is not used."""
        oldest: tuple[Freshness, Descriptor] | None = None
        for d in self.derived_sources.stored_inputs(self.descriptor):
            found = self.derived_sources.connector_for(d).freshness(d.source.table, d.source.query, d.sla.freshness_column)
            if found.as_of is None:
                return Freshness(None, f"unknown: input {d.product_id} ({found.basis})")
            if oldest is None or found.as_of < oldest[0].as_of:  # type: ignore[operator]
                oldest = (found, d)
        if oldest is None:
            return Freshness(None, "unknown: it reads no stored product")
        return Freshness(oldest[0].as_of, f"oldest input {oldest[1].product_id}: {oldest[0].basis}")


def _no_system_relations(_schema: str, _name: str) -> None:
    """The platform's checks read data products only (a system relation is NotFound)."""
    return None


__all__ = ["DerivedConnector", "DerivedSources", "PLATFORM_DECISION"]
