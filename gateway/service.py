"""One entry point per use case; the protocol layers (Flight SQL, REST, CLI) only call these.

The service owns the moving parts of a query: the registry snapshot it plans against, the plan
cache, admission control (how many queries run at once), the per-query deadline, and the engine.
"""

from __future__ import annotations

import fnmatch
import hashlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import pyarrow as pa
from cachetools import LRUCache
from sqlglot import exp

from connectors.base import Connector
from gateway.contract_keys import ForeignKey, KeyColumn, TableFilter, foreign_keys, primary_keys
from gateway.derived_source import DerivedSources
from gateway.descriptor import Descriptor
from gateway.engine import MIN_PROBE_RATIO, Engine, QueryControl, conform_schema
from gateway.audit import AuditLog
from gateway import metrics
from gateway.cache import BYPASS, DEFAULT_MAX_ENTRY_BYTES, Load, ResultCache, Result, default_cache_bytes
from gateway.query_cache import FragmentUses, QueryCache
from gateway.watermarks import Watermarks
from gateway.errors import MeshError, NotFound, QueryCancelled, ResourceExhausted, ShuttingDown
from gateway.names import CATALOG, SYSTEM_SCHEMA
from gateway.policy_report import ProductDecision, Rewrite
from gateway.query_history import QueryEntry, QueryHistory
from gateway.planner import Plan, PlanContext, bind, parse_statement, plan_statement
from gateway.planner.bind import BoundFragment, bind_for_schema, typed_null, BoundPlan
from gateway.planner.plan import Fragment, LocalRows
from gateway.registry import Catalog, Registry
from gateway.sources import SourceManager
from gateway.home import meshgate_home
from gateway.lifecycle import StatusChange, set_status
from gateway.publishing import PublishReport, publish
from gateway.source_roots import SourceRoots, state_files
from gateway.system_products import SystemScope
from gateway.system_tables import listed_relations, system_relation, system_table
from policies import Principal
from policies.decision import Decision
from policies.engine import PolicyEngine


@dataclass(frozen=True)
class TableInfo:
    """A queryable relation as metadata calls list it."""

    catalog: str
    schema: str  # the domain
    name: str  # product name, or 'name@2' for a pinned major version
    table_type: str  # "TABLE" | "VIEW" | "SYSTEM TABLE"
    arrow_schema: pa.Schema
    description: str
    column_descriptions: Mapping[str, str] = field(default_factory=dict)  # from the contract


@dataclass(frozen=True)
class PreparedQuery:
    """A planned statement: what it returns and which parameters it takes."""

    handle: str  # stable id (hash of the SQL), usable as a prepared-statement handle
    sql: str
    result_schema: pa.Schema
    parameter_schema: pa.Schema  # one field per `?`/`$n`, in order; empty when none


@dataclass(frozen=True)
class Settings:
    """Operational limits, from ``meshgate serve`` flags."""

    query_timeout: float = 300.0
    memory_limit: int = 4 * 1024**3
    max_concurrent_queries: int = 8
    max_queued_queries: int = 64
    plan_cache_size: int = 512
    cache_bytes: int | None = None  # result cache size; None: 1/16 of RAM; 0: no result cache
    cache_max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES  # larger results are not cached
    cache_redis: str | None = None  # redis://host:port/db: a shared tier for several replicas


@dataclass(frozen=True)
class _Planned:
    kind: str  # 'query' | 'explain' | 'show' | 'describe'
    plan: Plan
    schema: pa.Schema
    estimates: dict[str, int | None]  # rows per fragment, for dynamic filtering


EXPLAIN_SCHEMA = pa.schema([
    ("step", pa.string()), ("source", pa.string()), ("products", pa.string()), ("sql", pa.string()), ("cache", pa.string()),
])
"""``cache``: what the result cache (on the result row) and the fragment cache (on each fragment
row) would answer now: ``hit (memory, age 12 s)``, ``stale (...)``, ``miss`` or ``bypass: why``."""


class GatewayService:
    def __init__(
        self,
        registry: Registry,
        settings: Settings = Settings(),
        policies: PolicyEngine | None = None,
        audit: AuditLog | None = None,
        cache: ResultCache | None = None,
        source_roots: SourceRoots | None = None,
    ) -> None:
        """``cache`` replaces the result cache ``settings`` describe (tests give one with their own clock).
        ``source_roots``: where file sources may live (default: $MESHGATE_HOME and the registry's
        folder; the registry, the audit log are never readable as sources)."""
        self.registry = registry
        self.policies = policies if policies is not None else PolicyEngine.load()
        self.audit = audit if audit is not None else AuditLog(registry.path.parent / "audit.log")
        self.settings = settings
        if source_roots is None:
            source_roots = SourceRoots.of([meshgate_home(), registry.path.parent])
        self.sources = SourceManager(source_roots.adding(forbidden=state_files(registry.path, self.audit.path)))
        self.engine = Engine(settings.memory_limit)
        self._plans: LRUCache[tuple[str, int], _Planned] = LRUCache(maxsize=settings.plan_cache_size)
        self._plans_lock = threading.Lock()
        self._bound: LRUCache[tuple[int, tuple[tuple[str, str], ...]], tuple[_Planned, BoundPlan]] = LRUCache(maxsize=1024)
        self._admission = _Admission(settings.max_concurrent_queries, settings.max_queued_queries)
        self.stats = {"plans_built": 0, "plan_cache_hits": 0}
        self._row_counts: dict[str, int | None] = {}
        self.recent: deque[QueryControl] = deque(maxlen=100)  # newest last; what each query sent
        size = default_cache_bytes() if settings.cache_bytes is None else settings.cache_bytes
        self._owns_cache = cache is None  # a cache given to us is closed by whoever made it
        if cache is None and size > 0:
            from gateway.redis_tier import RedisTier

            shared = RedisTier(settings.cache_redis) if settings.cache_redis else None
            cache = ResultCache(size, settings.cache_max_entry_bytes, shared=shared)
        self.cache = cache
        self.watermarks = Watermarks(cache.clock if cache is not None else time.time)
        self.query_cache = QueryCache(cache, self.watermarks) if cache is not None else None
        self.history = QueryHistory(self.audit.path)  # recent queries; earlier ones from the audit log
        self.derived_sources = DerivedSources(registry.catalog, self.sources, self.engine, settings.query_timeout)
        """Products' rows for the platform's checks (SLA monitor): derived ones through this gateway."""
        self.sla_monitor: Any = None  # the background SLA monitor when one runs (gateway/sla_monitor.py), for /readyz and REST

    # --- queries ----------------------------------------------------------------------------

    def prepare(
        self, sql: str, principal: Principal, client: str | None = None, default_schema: str | None = None
    ) -> PreparedQuery:
        """Parse and plan ``sql``; raises ``gateway.errors.MeshError`` subclasses (audited).
        ``default_schema`` is the domain unqualified product names resolve in (a session option)."""
        planned = self._planned_or_audit(sql, principal, client, default_schema)
        parameters = pa.schema([pa.field(f"${i + 1}", t) for i, t in enumerate(planned.plan.parameter_types)])
        handle = hashlib.sha256(sql.encode()).hexdigest()[:32]
        return PreparedQuery(handle, sql, planned.schema, parameters)

    def execute(
        self,
        query: PreparedQuery | str,
        principal: Principal,
        parameters: Sequence[Any] = (),
        is_cancelled: Callable[[], bool] | None = None,
        client: str | None = None,
        default_schema: str | None = None,
        max_staleness: float | None = None,
    ) -> pa.RecordBatchReader:
        """Run a statement and stream its result (batches of at most a few MiB).

        Every statement is audited: a refused or failed one when it fails, an answered one
        before its first batch is returned (durably), completed with its row count at the end.

        A query whose products all declare ``sla.freshness`` is answered from the result cache,
        and each fragment of a federated query whose products do from the fragment cache, while
        the cached data is younger than the products' SLAs and than ``max_staleness`` (seconds:
        Flight SQL's session option, REST's ``X-Meshgate-Max-Staleness`` header) when given; see
        ``gateway.cache``.  The result's schema metadata says ``meshgate.cache`` (hit, stale,
        miss or bypass), ``meshgate.age_seconds`` (how old its oldest data is),
        ``meshgate.products`` (the versions read), on a hit ``meshgate.cache_tier`` (memory or
        redis), and for a federated query ``meshgate.fragment_cache`` (``f0=hit,f1=miss``).
        """
        sql = query.sql if isinstance(query, PreparedQuery) else query
        planned = self._planned_or_audit(sql, principal, client, default_schema)
        if planned.kind == "explain":
            return self._explain(planned.plan, parameters, max_staleness).to_reader()
        control = self._control(is_cancelled)
        bound = self._bind(planned, parameters)
        self.recent.append(control)
        for decision in planned.plan.decisions.values():
            metrics.POLICY_DECISIONS.labels(_decision_label(decision)).inc()
        audit = dict(client=client, products=_versions(planned.plan), decisions=planned.plan.decisions)
        entry = self.history.begin(principal, sql, client, audit["products"], control.sent)
        started = time.perf_counter()
        slots: list[_Slot] = []
        load, uses = self._load(planned, bound, control, slots, max_staleness)
        try:
            lookup = self.query_cache.result_lookup(planned.plan, bound, max_staleness) if self.query_cache else "no cache"
            if isinstance(lookup, str):
                reader, as_of = load()
                result = Result(reader, BYPASS, _age(as_of, self.watermarks.clock()), as_of, reason=lookup)
            else:
                if self._admission.draining:
                    raise ShuttingDown("the gateway is shutting down and accepts no new queries")
                revalidate = lambda: self._load(planned, bound, self._control(None), [], None)[0]()  # noqa: E731
                result = self.cache.fetch(lookup, load, revalidate)  # type: ignore[union-attr]
        except BaseException as err:
            for slot in slots:
                slot.release()
            self.audit.begin(principal, sql, fragments=control.sent, status="error", error=str(err), record_id=entry.id, **audit)
            self.history.finish(entry, "cancelled" if isinstance(err, QueryCancelled) else "error", error=str(err))
            raise
        cache: dict[str, Any] = {"cache": result.status, "age_seconds": round(result.age_seconds, 3)}
        if uses.results:
            cache["fragment_cache"] = uses.statuses()
        deprecated = self._deprecated(planned.plan)
        if deprecated:
            cache["deprecated"] = deprecated
        record = self.audit.begin(principal, sql, fragments=control.sent, extra=cache, record_id=entry.id, **audit)
        self.history.cached(entry, result.status, result.age_seconds, uses.statuses() if uses.results else None)
        metadata = {
            b"meshgate.cache": result.status.encode(),
            b"meshgate.age_seconds": f"{result.age_seconds:.3f}".encode(),
            b"meshgate.products": ",".join(planned.plan.products).encode(),
        }
        if result.tier:
            metadata[b"meshgate.cache_tier"] = result.tier.encode()
        if deprecated:
            metadata[b"meshgate.deprecated"] = "; ".join(deprecated).encode()
        if uses.results:
            metadata[b"meshgate.fragment_cache"] = ",".join(f"{k}={v}" for k, v in uses.statuses().items()).encode()
        schema = result.reader.schema.with_metadata({**(result.reader.schema.metadata or {}), **metadata})
        finishing = self._finishing(result.reader, slots, record, _descriptors(planned.plan), started, entry,
                                    metrics.consumer_domain(principal))
        return pa.RecordBatchReader.from_batches(schema, finishing)

    def _control(self, is_cancelled: Callable[[], bool] | None) -> QueryControl:
        return QueryControl(
            deadline=time.monotonic() + self.settings.query_timeout,
            is_cancelled=is_cancelled or (lambda: False),
            timeout_seconds=self.settings.query_timeout,
        )

    def _load(
        self, planned: _Planned, bound: BoundPlan, control: QueryControl, slots: list[_Slot], max_staleness: float | None
    ) -> tuple[Load, FragmentUses]:
        """How to run the query on the sources (within admission control, fragments through the
        fragment cache), and the record of how its fragments were served."""
        uses = FragmentUses({})
        if self.query_cache is not None and not (max_staleness is not None and max_staleness <= 0):
            control.fragment_cache, uses = self.query_cache.fragment_hook(planned.plan, max_staleness)

        def load() -> tuple[pa.RecordBatchReader, dict[str, float]]:
            slots.append(slot := self._admission.enter(control))
            try:
                reader = self.engine.execute(bound, control, planned.estimates)
            except BaseException:
                slot.release()
                raise
            return pa.RecordBatchReader.from_batches(reader.schema, _releasing(reader, slot)), uses.as_of()

        return load, uses

    def _deprecated(self, plan: Plan) -> list[str]:
        """A note per deprecated product version the plan reads: audited and returned in the
        result's metadata (``meshgate.deprecated``), so consumers learn before it is retired."""
        catalog = self.registry.catalog()
        return [f"{d.product_id}@{d.version} is {record.note()}"
                for d in _descriptors(plan) if (record := catalog.deprecation(d)) is not None]

    def _bind(self, planned: _Planned, parameters: Sequence[Any]) -> BoundPlan:
        """``bind()`` memoized per plan and parameter values: rendering SQL costs more than a cache hit."""
        key = (id(planned), tuple((type(v).__name__, repr(v)) for v in parameters))
        with self._plans_lock:
            found = self._bound.get(key)
        if found is not None and found[0] is planned:
            return found[1]
        bound = bind(planned.plan, list(parameters))
        with self._plans_lock:
            self._bound[key] = (planned, bound)
        return bound

    def _finishing(
        self, reader: pa.RecordBatchReader, slots: list[_Slot], record: str, products: Sequence[Descriptor], started: float,
        entry: QueryEntry, consumer_domain: str = "unknown",
    ) -> Iterator[pa.RecordBatch]:
        """Yield the reader's batches; when the stream ends or is dropped, free the query's slot,
        complete its audit record and history entry with the rows and bytes returned and count
        it in the product metrics (``consumer_domain``: the querying principal's domain, a
        bounded label)."""
        rows, size, status, error = 0, 0, "ok", None
        try:
            for batch in reader:
                rows += batch.num_rows
                size += batch.nbytes
                yield batch
        except BaseException as err:
            status, error = ("cancelled" if isinstance(err, (GeneratorExit, QueryCancelled)) else "error"), str(err)
            raise
        finally:
            for slot in slots:
                slot.release()
            reader.close()
            self.audit.complete(record, rows=rows, status=status, error=error, bytes_out=size, durable=False)
            self.history.finish(entry, status, rows, size, error)
            if status == "ok":
                elapsed = time.perf_counter() - started
                for d in products:
                    product = metrics.product_label(d.product_id)
                    metrics.PRODUCT_QUERIES.labels(product, metrics.domain_label(d.domain), consumer_domain).inc()
                    metrics.PRODUCT_ROWS.labels(product).inc(rows)
                    metrics.PRODUCT_QUERY_DURATION.labels(product).observe(elapsed)

    # --- governance, without running anything ----------------------------------------------

    def evaluate(self, principal: Principal, product: str, action: str = "read") -> ProductDecision:
        """What governance decides for ``principal`` doing ``action`` on ``product``
        (``domain.name``, or ``domain.name@MAJOR`` for a pinned major); NotFound if unknown."""
        domain, dot, name = product.partition(".")
        if not dot or not domain or not name:
            raise NotFound(f"'{product}' is not a product id: write domain.product")
        descriptor = self.registry.catalog().resolve(domain.lower(), name)
        self.policies.reload_if_changed(min_interval=1.0)
        return self._product_decision(descriptor, action, self._decide(principal, descriptor, action))

    def rewrite(self, sql: str, principal: Principal) -> Rewrite:
        """The governed form of ``sql`` for ``principal`` (no source is contacted, nothing is
        audited): the planner's rules up to and including aggregate protection, with product
        placeholders named again as ``domain.product``. Raises InvalidQuery/NotFound for bad SQL."""
        from gateway.planner.optimizer import RULES
        from gateway.planner.protect_aggregates import protect_aggregates
        from gateway.planner.resolve_products import resolve_products

        catalog = self.registry.catalog()
        self.policies.reload_if_changed(min_interval=1.0)
        statement = parse_statement(sql)
        if statement.subject is not None:
            catalog.resolve(statement.subject.db, statement.subject.name)
        system_names: list[str] = []

        def system(schema: str, name: str) -> tuple[Descriptor | None, LocalRows] | None:
            if schema == SYSTEM_SCHEMA:  # named back by _name_products, in order
                system_names.append(name)
            return system_relation(catalog, schema, name, SystemScope(principal, self, catalog, self._visible(principal)))

        ctx = PlanContext(catalog, lambda _descriptor: None, system, lambda d: self.policies.decide(principal, d))  # type: ignore[arg-type,return-value]
        expression: exp.Expression = statement.expression.copy()
        rules = RULES[: RULES.index(protect_aggregates) + 1]
        at = rules.index(resolve_products) + 1
        for rule in rules[:at]:
            expression = rule(expression, ctx)
        decisions: dict[str, ProductDecision] = {}
        for binding in ctx.bindings.values():
            d = binding.descriptor
            if d is not None and f"{d.product_id}@{d.version}" not in decisions:
                decisions[f"{d.product_id}@{d.version}"] = self._product_decision(d, "read", self.policies.decide(principal, d))
        products = tuple(decisions.values())
        if not all(p.allowed for p in products):
            return Rewrite(sql, products, None)
        for rule in rules[at:]:
            expression = rule(expression, ctx)
        _name_products(expression, ctx, catalog, iter(system_names))
        governed = expression.sql("postgres", pretty=True)
        if statement.kind == "explain":
            governed = "EXPLAIN " + governed
        return Rewrite(sql, products, governed)

    def _product_decision(self, descriptor: Descriptor, action: str, decision: Decision) -> ProductDecision:
        from gateway.planner.apply_policies import _predicate, mask_expression

        columns = {c.name: c for c in descriptor.columns}
        masks = tuple(
            (m, mask_expression(exp.column(m.column, quoted=True), columns[m.column], m).sql("postgres"))
            for m in decision.masks
            if m.column in columns
        )
        filters = tuple((f, _predicate(f).sql("postgres")) for f in decision.row_filters)
        rules = self.policies.policy_set
        sizes = {r.id: r.min_group_size for r in rules.aggregates}
        own = (descriptor.raw.get("spec", {}).get("policies") or {}).get("min_group_size")
        if own is not None:
            sizes[f"{descriptor.product_id}@{descriptor.version}#min_group_size"] = int(own)
        mask_ids = frozenset(r.id for r in rules.masks) | frozenset(p for p in decision.policies if "#masks[" in p)
        return ProductDecision(descriptor, action, decision, masks, filters, sizes, mask_ids)

    def explain(self, sql: str, principal: Principal, max_staleness: float | None = None) -> pa.Table:
        planned = self._planned(sql, principal)
        return self._explain(planned.plan, None, max_staleness)

    def _explain(self, plan: Plan, parameters: Sequence[Any] | None, max_staleness: float | None = None) -> pa.Table:
        bound = bind(plan, list(parameters) if parameters else None)
        if self.query_cache is not None:
            result_cache, fragment_cache = self.query_cache.explain(plan, bound, max_staleness)
        else:
            result_cache, fragment_cache = "bypass: no cache (--cache-bytes 0)", {}
        rows: list[tuple[str, str, str, str, str]] = []
        for fragment in bound.fragments:
            if fragment.stage:
                rows.append((f"stage {fragment.name}", "datafusion", "", fragment.post_sql or "", "computed from the fragments it reads"))
                continue
            source = fragment.connector.display_name if fragment.connector else "system (in memory)"
            rows.append((f"fragment {fragment.name}", source, ", ".join(fragment.products), fragment.sql or "(in memory)",
                         fragment_cache.get(fragment.name, "")))
        for f in bound.dynamic_filters:
            rows.append((
                "dynamic filter", "", "",
                f"{f.probe}.{f.probe_column} IN (keys of {f.build}.{f.build_column}) when {f.probe}'s sources hold "
                f">= {MIN_PROBE_RATIO}x the rows of {f.build}'s and {f.build} returns no more keys than "
                f"{f.probe}'s source takes in one IN list", "",
            ))
        if bound.passthrough is not None:
            rows.append(("result", "passthrough", "", f"stream of fragment {bound.passthrough.name}", result_cache))
        else:
            rows.append(("residual", "datafusion", "", bound.residual_sql, result_cache))
        columns = list(zip(*rows))
        return pa.table([pa.array(list(c), pa.string()) for c in columns], schema=EXPLAIN_SCHEMA)

    def _planned_or_audit(
        self, sql: str, principal: Principal, client: str | None, default_schema: str | None = None
    ) -> _Planned:
        """Plan ``sql``; a refusal or failure is audited before it reaches the client."""
        try:
            return self._planned(sql, principal, default_schema)
        except MeshError as err:
            denied = err.status == "PERMISSION_DENIED"
            if denied:
                metrics.POLICY_DECISIONS.labels("deny").inc()
            status = "denied" if denied else "error"
            record = self.audit.begin(principal, sql, client=client, allowed=not denied,
                                      reasons=[err.message] if denied else None, status=status, error=err.message)
            self.history.refused(record, principal, sql, client, status, err.message)
            raise

    def _planned(self, sql: str, principal: Principal, default_schema: str | None = None) -> _Planned:
        """The cached plan for ``sql`` at the current registry generation, or a new one.

        Plans embed the principal's governance (masks, row-filter values), so the principal's
        identity, roles and attributes are part of the key.
        """
        catalog = self.registry.catalog()
        self.policies.reload_if_changed(min_interval=1.0)
        key = (sql, default_schema, catalog.generation, self.policies.generation, principal.name, tuple(sorted(principal.roles)),
               tuple(sorted((k, repr(v)) for k, v in principal.attributes.items())))
        with self._plans_lock:
            cached = self._plans.get(key)
        if cached is not None:
            self.stats["plan_cache_hits"] += 1
            return cached
        statement = parse_statement(sql)
        if statement.subject is not None:
            catalog.resolve(statement.subject.db, statement.subject.name)
        ctx = PlanContext(
            catalog,
            self.sources.connector_for,
            lambda schema, name: system_relation(catalog, schema, name, SystemScope(principal, self, catalog, self._visible(principal))),
            lambda descriptor: self._decide(principal, descriptor),
            default_schema=default_schema,
        )
        plan = plan_statement(sql, statement, ctx)
        schema = EXPLAIN_SCHEMA if statement.kind == "explain" else self._result_schema(plan)
        estimates = self._estimates(plan) if plan.dynamic_filters and statement.kind != "explain" else {}
        planned = _Planned(statement.kind, plan, schema, estimates)
        self.stats["plans_built"] += 1
        with self._plans_lock:
            self._plans[key] = planned
        return planned

    def _decide(self, principal: Principal, descriptor: Descriptor, action: str = "read") -> Decision:
        """The policy engine's decision, timed (``policy_evaluation_seconds``)."""
        with metrics.POLICY_EVALUATION.time():
            return self.policies.decide(principal, descriptor, action)

    def _estimates(self, plan: Plan) -> dict[str, int | None]:
        """Rows each fragment's products hold (the largest one's), from cached source statistics."""
        estimates: dict[str, int | None] = {}
        for fragment in plan.fragments:
            counts = [self._row_count(b.descriptor, b.connector) for b in fragment.bindings if b.descriptor and b.connector]
            estimates[fragment.name] = None if not counts or None in counts else max(counts)  # type: ignore[type-var]
        return estimates

    def _row_count(self, descriptor: Descriptor, connector: Connector) -> int | None:
        """A product version's row count, asked once; a source that cannot say gives None."""
        key = f"{descriptor.product_id}@{descriptor.version}"
        if key not in self._row_counts:
            try:
                self._row_counts[key] = connector.row_count(descriptor.source.table, descriptor.source.query)
            except MeshError:
                self._row_counts[key] = None
        return self._row_counts[key]

    def _result_schema(self, plan: Plan) -> pa.Schema:
        bound = bind_for_schema(plan)
        schemas: dict[str, pa.Schema] = {}
        for fragment, bound_fragment in zip(plan.fragments, bound.fragments):  # a stage reads earlier ones
            schemas[fragment.name] = (
                self.engine.stage_schema(schemas, bound_fragment.post_sql) if bound_fragment.stage and bound_fragment.post_sql
                else self._fragment_schema(fragment, bound_fragment, plan)
            )
        return self.engine.result_schema(bound, schemas)

    def _fragment_schema(self, fragment: Fragment, bound: BoundFragment, plan: Plan) -> pa.Schema:
        """A fragment's output schema, after the engine's post-processing where it has any."""
        schema = self._source_schema(fragment, plan)
        return self.engine.post_schema(schema, bound.post_sql) if bound.post_sql else schema

    def _source_schema(self, fragment: Fragment, plan: Plan) -> pa.Schema:
        """What the source returns: known from the contract for scans, else asked of the source."""
        if fragment.local is not None:
            return fragment.local.schema
        assert fragment.connector is not None and fragment.expression is not None
        names = fragment.expression.named_selects
        if fragment.expected is not None and list(fragment.expected.names) == list(names):
            return fragment.expected
        if names == ["__row"]:
            return pa.schema([("__row", pa.int64())])
        probe = exp.select("*").from_(fragment.expression.copy().subquery("_probe")).limit(0)
        for placeholder in list(probe.find_all(exp.Placeholder)):
            placeholder.replace(typed_null(plan.parameter_types[int(placeholder.name)]))
        scan = fragment.connector.scan(fragment.connector.render(probe))
        try:
            return conform_schema(scan.reader.schema, fragment.expected)
        finally:
            scan.close()

    # --- publishing and lifecycle -------------------------------------------------------------

    def publish(
        self,
        descriptors: Sequence[Descriptor | Mapping[str, Any]],
        principal: Principal,
        *,
        run_quality: bool = True,
        dry_run: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> PublishReport:
        """Check and publish descriptors atomically (``gateway/publishing.py``): every check of
        every version in the report; raises ``Conflict`` when another publisher won a race."""
        return publish(descriptors, principal, registry=self.registry, policies=self.policies, sources=self.sources,
                       run_quality=run_quality, dry_run=dry_run, progress=progress, engine=self.engine)

    def set_status(
        self,
        product_id: str,
        version_or_major: str,
        status: str,
        principal: Principal,
        *,
        reason: str = "",
        replaced_by: str = "",
        force: bool = False,
    ) -> StatusChange:
        """Deprecate or retire a product, a major (``"2"``) or a version (``"2.1.0"``)
        (``gateway/lifecycle.py``): needs owner:<domain> or admin; retiring waits for the notice."""
        return set_status(self.registry, self.policies, product_id, version_or_major, status, principal,
                          reason=reason, replaced_by=replaced_by, force=force)

    # --- metadata -----------------------------------------------------------------------------

    def list_catalogs(self) -> list[str]:
        return [CATALOG]

    def visible_to(self, principal: Principal) -> MetadataView:
        """This service's metadata as ``principal`` may see it (products it may read)."""
        return MetadataView(self, principal)

    def may_read(self, principal: Principal, descriptor: Descriptor) -> bool:
        """Whether ``principal`` may read ``descriptor``: what listings and lookups by id show it
        (a product it may not read is invisible, as in Flight SQL metadata)."""
        return self._visible(principal)(descriptor)

    def _visible(self, principal: Principal | None) -> Callable[[Descriptor], bool]:
        if principal is None:
            return lambda descriptor: True
        return lambda descriptor: self.policies.decide(principal, descriptor).allowed

    def list_schemas(
        self, catalog: str | None, schema_pattern: str | None, principal: Principal | None = None
    ) -> list[tuple[str, str]]:
        """(catalog, schema) pairs; patterns are SQL LIKE patterns (% and _). With a principal,
        only domains with a product it may read."""
        if catalog not in (None, "", CATALOG):
            return []
        snapshot = self.registry.catalog()
        if principal is None:
            domains = [*snapshot.domains(), SYSTEM_SCHEMA]
        else:
            domains = sorted({d for d, _, _ in listed_relations(snapshot, self._visible(principal))}) + [SYSTEM_SCHEMA]
        return [(CATALOG, d) for d in domains if _like(d, schema_pattern)]

    def list_tables(
        self,
        catalog: str | None,
        schema_pattern: str | None,
        table_pattern: str | None,
        table_types: Sequence[str] = (),
        principal: Principal | None = None,
    ) -> list[TableInfo]:
        """Relations matching the patterns; with a principal, only products it may read."""
        if catalog not in (None, "", CATALOG):
            return []
        snapshot = self.registry.catalog()
        visible = self._visible(principal)
        infos = [
            TableInfo(
                CATALOG,
                domain,
                name,
                "VIEW" if d.source.connector == "mesh" else "TABLE",
                pa.schema([pa.field(c.name, c.type.arrow, nullable=not c.required) for c in d.columns]),
                _remarks(d, snapshot),
                {c.name: c.description for c in d.columns if c.description},
            )
            for domain, name, d in listed_relations(snapshot, visible)
        ]
        infos += [
            TableInfo(CATALOG, SYSTEM_SCHEMA, name, "SYSTEM TABLE", table.schema, f"information_schema.{name}")
            for name in ("schemata", "tables", "columns")
            if (table := system_table(snapshot, name, visible)) is not None
        ]
        wanted = {t.upper() for t in table_types}
        return [
            t
            for t in infos
            if _like(t.schema, schema_pattern) and _like(t.name, table_pattern) and (not wanted or t.table_type in wanted)
        ]

    def table_types(self) -> list[str]:
        return ["SYSTEM TABLE", "TABLE", "VIEW"]

    def primary_keys(self, where: TableFilter, principal: Principal | None = None) -> list[KeyColumn]:
        """Primary-key columns the contracts declare (``primary_key: true``); with a principal,
        only of products it may read."""
        return primary_keys(self.registry.catalog(), where, self._visible(principal))

    def foreign_keys(self, primary: TableFilter | None = None, foreign: TableFilter | None = None,
                     principal: Principal | None = None) -> list[ForeignKey]:
        """Foreign keys the contracts declare (``references``), filtered by either side; with a
        principal, only between products it may read."""
        return foreign_keys(self.registry.catalog(), primary, foreign, self._visible(principal))

    def catalog(self) -> Catalog:
        return self.registry.catalog()

    def drain(self, grace_period: float) -> bool:
        """Refuse new queries, then wait up to ``grace_period`` s for running ones to finish."""
        return self._admission.drain(grace_period)

    def close(self) -> None:
        if self._owns_cache and self.cache is not None and self.cache.shared is not None:
            self.cache.shared.close()
        self.engine.close()
        self.sources.close()
        self.audit.close()


class MetadataView:
    """A service's metadata use cases bound to one principal, for the protocol layers' listings
    (GetDbSchemas, GetTables): a principal is shown only the products it may read."""

    def __init__(self, service: GatewayService, principal: Principal) -> None:
        self._service = service
        self._principal = principal

    def list_schemas(self, catalog: str | None, schema_pattern: str | None) -> list[tuple[str, str]]:
        return self._service.list_schemas(catalog, schema_pattern, self._principal)

    def list_tables(
        self, catalog: str | None, schema_pattern: str | None, table_pattern: str | None, table_types: Sequence[str] = ()
    ) -> list[TableInfo]:
        return self._service.list_tables(catalog, schema_pattern, table_pattern, table_types, self._principal)

    def primary_keys(self, where: TableFilter) -> list[KeyColumn]:
        return self._service.primary_keys(where, self._principal)

    def foreign_keys(self, primary: TableFilter | None = None, foreign: TableFilter | None = None) -> list[ForeignKey]:
        return self._service.foreign_keys(primary, foreign, self._principal)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)  # the other calls answer about one named table or the server


class _Slot:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._release()


class _Admission:
    """At most ``limit`` queries run at once; up to ``queue`` more wait, the rest are refused."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit = limit
        self.queue = queue
        self.running = 0
        self.waiting = 0
        self.draining = False
        self._cond = threading.Condition()

    def enter(self, control: QueryControl) -> _Slot:
        with self._cond:
            if self.draining:
                raise ShuttingDown("the gateway is shutting down and accepts no new queries")
            if self.running >= self.limit and self.waiting >= self.queue:
                raise ResourceExhausted(
                    f"gateway is at capacity: {self.running} queries running and {self.waiting} waiting "
                    "(--max-concurrent-queries); retry shortly"
                )
            self.waiting += 1
            try:
                while self.running >= self.limit:
                    self._cond.wait(timeout=0.1)
                    control.check()
            finally:
                self.waiting -= 1
            self.running += 1
        return _Slot(self._leave)

    def _leave(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify_all()

    def drain(self, grace_period: float) -> bool:
        deadline = time.monotonic() + grace_period
        with self._cond:
            self.draining = True
            while self.running and time.monotonic() < deadline:
                self._cond.wait(timeout=0.1)
            return self.running == 0


def _name_products(expression: exp.Expression, ctx: PlanContext, catalog: Catalog, system_names: Iterator[str]) -> None:
    """Give the planner's placeholder tables (``__p0``) their product names back, in place."""
    names: dict[str, tuple[str, str]] = {}  # placeholder -> (schema, table)
    for placeholder, binding in ctx.bindings.items():
        d = binding.descriptor
        if d is None:
            names[placeholder] = ("information_schema", next(system_names, placeholder))
        else:
            newest = catalog.versions.get(d.product_id, (d,))[0]
            names[placeholder] = (d.domain, d.name if newest.major == d.major else f"{d.name}@{d.major}")
    for table in list(expression.find_all(exp.Table)):
        if table.name in names and not table.db:
            schema, name = names[table.name]
            table.set("this", exp.to_identifier(name, quoted=True))
            table.set("db", exp.to_identifier(schema, quoted=True))
    for identifier in list(expression.find_all(exp.Identifier)):
        if identifier.name in names and not isinstance(identifier.parent, exp.Table):
            identifier.set("this", names[identifier.name][1].split("@")[0])


def _releasing(reader: pa.RecordBatchReader, slot: _Slot) -> Iterator[pa.RecordBatch]:
    """The reader's batches; its admission slot is freed as soon as the last one is read."""
    try:
        yield from reader
    finally:
        slot.release()


def _descriptors(plan: Plan) -> list[Descriptor]:
    """The product versions a plan reads, once each: those its fragments scan and the derived
    products expanded into them (a query of a derived product counts for it and its inputs)."""
    found = {(b.descriptor.product_id, b.descriptor.version): b.descriptor
             for f in plan.fragments for b in f.bindings if b.descriptor is not None}
    found.update({(r.descriptor.product_id, r.descriptor.version): r.descriptor for r in plan.derived})
    return list(found.values())


def _age(as_of: Mapping[str, float], now: float) -> float:
    """Seconds since the oldest data in a result was current (0 when all of it was fetched now)."""
    return max(0.0, now - min(as_of.values(), default=now))


def _decision_label(decision: Decision) -> str:
    if not decision.allowed:
        return "deny"
    return "transform" if decision.masks or decision.row_filters or decision.min_group_size else "allow"


def _versions(plan: Plan) -> list[tuple[str, str]]:
    return [tuple(label.rsplit("@", 1)) for label in plan.products]  # type: ignore[misc]


def _remarks(descriptor: Descriptor, catalog: Catalog) -> str:
    """GetTables' remarks: the description, prefixed with the deprecation notice when there is one."""
    record = catalog.deprecation(descriptor)
    return f"DEPRECATED ({record.note()}). {descriptor.description}".strip() if record else descriptor.description


def _like(value: str, pattern: str | None) -> bool:
    """SQL LIKE (``%``, ``_``) as used by Flight SQL metadata filters."""
    if pattern is None or pattern == "":
        return True
    translated = "".join("*" if ch == "%" else "?" if ch == "_" else "[" + ch + "]" if ch in "*?[" else ch for ch in pattern)
    return fnmatch.fnmatchcase(value, translated)


