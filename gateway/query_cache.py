"""The cache as a query uses it: the lookups a bound plan makes at each level, and why not.

``gateway.cache.ResultCache`` stores and judges entries; this module knows plans and products:
what a result's or a fragment's key is made of, which products (with their freshness SLA,
stale-while-revalidate window and current watermark) an entry depends on, and the engine's
fragment hook through which a federated query's fragments come from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pyarrow as pa

from connectors.base import Connector
from gateway.cache import (
    BYPASS,
    FRAGMENT,
    HIT,
    RESULT,
    STALE,
    Lookup,
    ProductFreshness,
    Result,
    ResultCache,
    cache_key,
    format_seconds,
)
from gateway.descriptor import Descriptor
from gateway.engine import FragmentCache
from gateway.planner.bind import BoundFragment, BoundPlan
from gateway.planner.plan import Fragment, Plan
from gateway.watermarks import Watermarks


def _derived(plan: Plan, reads: set[str]) -> tuple[ProductFreshness, ...]:
    """The derived products of ``plan`` whose rows come from any of ``reads`` (``domain.name@version``)
    and that declare their own ``sla.freshness``: each bounds an entry of those inputs, its data as
    old as the oldest of them (one without its own SLA is bounded by its inputs' alone)."""
    found = []
    for read in plan.derived:
        inputs = tuple(i for i in read.inputs if i in reads)
        sla = read.descriptor.sla.freshness
        if inputs and sla is not None:
            found.append(ProductFreshness(read.label, sla, read.descriptor.sla.stale_while_revalidate, inputs=inputs))
    return tuple(found)


@dataclass
class FragmentUses:
    """How each fragment of one execution was served (name -> cache Result), filled by the hook."""

    results: dict[str, Result]

    def as_of(self) -> dict[str, float]:
        """Per product, when the oldest data the fragments used was current."""
        merged: dict[str, float] = {}
        for result in self.results.values():
            for product, as_of in result.as_of.items():
                merged[product] = min(as_of, merged.get(product, as_of))
        return merged

    def statuses(self) -> dict[str, str]:
        return {name: result.status for name, result in sorted(self.results.items())}


class QueryCache:
    """The two cache levels for the service's plans; ``watermarks`` shares the cache's clock."""

    def __init__(self, cache: ResultCache, watermarks: Watermarks) -> None:
        self.cache = cache
        self.watermarks = watermarks

    # --- lookups ----------------------------------------------------------------------------

    def result_lookup(self, plan: Plan, bound: BoundPlan, max_staleness: float | None) -> Lookup | str:
        """The final result's lookup, or why the result is not cached."""
        if any(f.local is not None for f in bound.fragments):
            return "system tables are not cached"
        products = self._bounds(plan, [b for f in plan.fragments for b in f.bindings], max_staleness)
        if isinstance(products, str):
            return products
        key = cache_key([
            RESULT,
            *((f.name, f.connector.display_name if f.connector else None, f.sql, f.post_sql) for f in bound.fragments),
            bound.residual_sql, bound.passthrough is not None, tuple(bound.output_names), plan.products,
        ])
        return Lookup(RESULT, key, products, max_staleness)

    def fragment_lookup(
        self, plan: Plan, fragment: Fragment, bound: BoundFragment, sql: str, max_staleness: float | None
    ) -> Lookup | str:
        """A fragment's lookup for ``sql`` (its bound SQL, possibly with a dynamic filter), or why
        it is not cached.  The key is what the source is asked and how its rows are governed (so
        a derived product's query shares fragments with direct queries of its inputs); the
        derived products of ``plan`` it feeds bound how old its rows may be for this query."""
        connector = fragment.connector
        if connector is None or fragment.local is not None:
            return "in memory"
        products = self._bounds(plan, list(fragment.bindings), max_staleness)
        if isinstance(products, str):
            return products
        key = cache_key([
            FRAGMENT, connector.kind, connector.source_id, sql, bound.post_sql, str(bound.expected), bound.products,
        ])
        return Lookup(FRAGMENT, key, products, max_staleness)

    def _bounds(self, plan: Plan, bindings: list, max_staleness: float | None) -> tuple[ProductFreshness, ...] | str:  # noqa: ANN001
        """The freshness bounds of an entry reading ``bindings`` (the stored products and the
        derived products of ``plan`` they feed), or why it is not cached."""
        products = self._products([b for b in bindings if b.descriptor and b.connector])
        if isinstance(products, str):
            return products
        if max_staleness is not None and max_staleness <= 0:
            return "the client allows no staleness (max_staleness 0)"
        return products + _derived(plan, {p.product for p in products})

    def _products(self, bindings: list) -> tuple[ProductFreshness, ...] | str:  # noqa: ANN001 - planner Bindings
        found: dict[str, ProductFreshness] = {}
        for binding in bindings:
            d: Descriptor = binding.descriptor
            label = f"{d.product_id}@{d.version}"
            if label in found:
                continue
            sla = d.sla.freshness
            if sla is None:
                return f"{d.product_id} declares no sla.freshness"
            found[label] = self._freshness(d, binding.connector, label, sla)
        if not found:
            return "reads no data product"
        return tuple(found[label] for label in sorted(found))

    def _freshness(self, descriptor: Descriptor, connector: Connector, label: str, sla: float) -> ProductFreshness:
        return ProductFreshness(
            label, sla, descriptor.sla.stale_while_revalidate, self.watermarks.current(descriptor, connector),
            data_age_counts=descriptor.sla.freshness_column is not None,
        )

    # --- the engine's fragment hook ---------------------------------------------------------

    def fragment_hook(self, plan: Plan, max_staleness: float | None) -> tuple[FragmentCache, FragmentUses]:
        """The engine's ``QueryControl.fragment_cache`` for one execution of ``plan``, and the
        record of how each fragment was served."""
        by_name = {f.name: f for f in plan.fragments}
        uses = FragmentUses({})

        def through(bound: BoundFragment, sql: str, load) -> pa.Table:  # noqa: ANN001
            lookup = self.fragment_lookup(plan, by_name[bound.name], bound, sql, max_staleness)
            if isinstance(lookup, str):
                return load()
            result = self.cache.fetch(lookup, lambda: (load().to_reader(), {}))
            uses.results[bound.name] = result
            return result.reader.read_all()

        return through, uses

    # --- EXPLAIN ------------------------------------------------------------------------------

    def explain(self, plan: Plan, bound: BoundPlan, max_staleness: float | None) -> tuple[str, Mapping[str, str]]:
        """What the result level and each fragment would be now: ``hit (memory, age 12 s)``,
        ``stale (...)``, ``miss`` or ``bypass: why``."""
        result = self.result_lookup(plan, bound, max_staleness)
        overall = self._describe(result)
        fragments: dict[str, str] = {}
        probes = {f.probe for f in bound.dynamic_filters}
        by_name = {f.name: f for f in plan.fragments}
        for f in bound.fragments:
            if bound.passthrough is not None:
                fragments[f.name] = "its rows are the result (cached at the result level)"
                continue
            if f.local is not None or f.sql is None:
                fragments[f.name] = "bypass: in memory"
                continue
            text = self._describe(self.fragment_lookup(plan, by_name[f.name], f, f.sql, max_staleness))
            if f.name in probes:
                text += " (unless a dynamic filter changes its SQL at run time)"
            fragments[f.name] = text
        return overall, fragments

    def _describe(self, lookup: Lookup | str) -> str:
        if isinstance(lookup, str):
            return f"{BYPASS}: {lookup}"
        status, age, where = self.cache.peek(lookup)
        if status == HIT:
            return f"hit ({where}, age {format_seconds(age)})"
        if status == STALE:
            return f"stale ({where}, age {format_seconds(age)}: served while one refresh runs)"
        if status == BYPASS:
            return f"{BYPASS}: {where}"
        return status
