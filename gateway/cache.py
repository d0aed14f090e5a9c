"""The freshness-aware cache: final results and per-source fragment results, kept while fresh.

One abstraction, two levels.  ``ResultCache`` holds Arrow tables under ``(level, key)``:

- ``result``: a query's final answer.  Its key hashes what the query really runs: every
  fragment's exact SQL (policy rewriting, bound parameters and row-filter values are inside it)
  with its source, the engine-side governance, the residual query, the output names and the
  product versions read.
- ``fragment``: one source's part of a federated query.  Its key hashes the fragment's bound SQL
  in the source's dialect, the connector's identity, the engine-side governance applied to its
  rows and the product versions, so a fragment shared by different queries is fetched once.

Two principals with the same entitlements produce the same SQL and share entries; any
difference in masks or row-filter values makes another key.  A new product version changes the
key, so entries of the old one are never served again (they age out of the LRU).

Freshness (see ``ProductFreshness``).  An entry remembers, per product, when the data in it was
current (``as_of``): the moment it was fetched, or, where the product declares
``sla.freshness_column``, the newest value of that column at that moment (so the source data's
own age counts).  A derived product (a query over other products) is in an entry too, with its
own ``sla.freshness``: its data is as old as its oldest input's, so the stricter of its SLA and
its inputs' bounds the entry.  An entry is served only while every product's age is below its
``sla.freshness`` and the entry's age (its oldest product's) is below the caller's
``max_staleness``.  ``sla.stale_while_revalidate`` lets a product's entries be served for that
much longer while one background refresh runs (never past the caller's ``max_staleness``).  A
product's *watermark* (the newest freshness-column value, else its files' modification time) is
recorded with each entry; when it moves, the source changed and dependent entries are dropped.

Bounded by bytes (``LRUCache`` with ``getsizeof``; both levels share the budget), not entries;
a result above ``max_entry_bytes`` is streamed through and not kept.  Concurrent identical
misses run the source query once: the first caller loads, the others wait and share its table
(single flight, at both levels).  An optional shared tier (``gateway.redis_tier``) lets several
gateway replicas share entries; it is consulted after memory and written after every load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

import pyarrow as pa
from cachetools import LRUCache

from gateway import metrics

log = logging.getLogger(__name__)

HIT, STALE, MISS, BYPASS = "hit", "stale", "miss", "bypass"
"""``meshgate.cache`` values: served from the cache; served from the cache past the SLA within
the product's stale-while-revalidate window (a refresh is running); fetched now (and kept if
small enough); not cacheable (no freshness SLA, system tables, no staleness allowed, or the
source's data already past its SLA)."""

RESULT, FRAGMENT = "result", "fragment"
"""Cache levels: final results and per-source fragment results (the ``level`` metric label)."""

MEMORY, REDIS = "memory", "redis"
"""Cache tiers (the ``tier`` metric label): this process, and the shared Redis tier."""

MAX_STALENESS_HEADER = "X-Meshgate-Max-Staleness"
"""HTTP request header a REST client sends to bound how old a cached answer may be (seconds or
a duration such as ``5m``; ``0`` bypasses the cache): pass ``gateway.types.parse_duration(value)`` to
``GatewayService.execute(max_staleness=...)``, as Flight SQL's ``max_staleness`` session option is."""

DEFAULT_MAX_ENTRY_BYTES = 64 * 1024**2

def default_cache_bytes() -> int:
    """1/16 of the machine's RAM (256 MiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 16
    except (ValueError, OSError, AttributeError):
        return 256 * 1024**2


def cache_key(parts: Iterable[Any]) -> str:
    """A stable hash of ``parts`` (strings, numbers, None, nested tuples/lists)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


@dataclass(frozen=True)
class ProductFreshness:
    """What the cache must know about one product an entry reads, as of the lookup."""

    product: str  # domain.name@version
    sla: float  # sla.freshness, seconds
    stale_while_revalidate: float = 0.0  # sla.stale_while_revalidate, seconds
    watermark: float | None = None  # newest freshness-column value or files' mtime (epoch s); None: unknown
    data_age_counts: bool = False  # the watermark is the data's own newest value (sla.freshness_column)
    inputs: tuple[str, ...] = ()  # a derived product: the products its data comes from (its age is their oldest's)

    def as_of(self, as_of: Mapping[str, float], default: float) -> float:
        """When this product's data in an entry (``as_of`` per product) was current: a derived
        product's data is as old as its oldest input's."""
        if self.inputs:
            return min((as_of.get(i, default) for i in self.inputs), default=default)
        return as_of.get(self.product, default)


@dataclass(frozen=True)
class Lookup:
    """One question to the cache: which entry, which products it reads, how old it may be."""

    level: str  # RESULT | FRAGMENT
    key: str
    products: tuple[ProductFreshness, ...]
    max_staleness: float | None = None  # the client's bound (seconds), when stricter than the SLAs

    def fetched_as_of(self, now: float) -> dict[str, float]:
        """When each product's data was current if fetched ``now``: the freshness column's newest
        value where the product declares one, else now."""
        return {
            p.product: min(now, p.watermark) if p.data_age_counts and p.watermark is not None else now
            for p in self.products if not p.inputs
        }


@dataclass(frozen=True)
class Entry:
    table: pa.Table
    fetched_at: float  # the cache's clock (epoch seconds) when the rows were fetched
    as_of: Mapping[str, float]  # per product: when the data in this entry was current
    watermarks: Mapping[str, float | None]  # per product: its watermark when fetched
    nbytes: int

    def age(self, now: float) -> float:
        """Seconds since the oldest product data in the entry was current."""
        return max(0.0, now - min(self.as_of.values(), default=self.fetched_at))


@dataclass(frozen=True)
class Result:
    """What ``ResultCache.fetch`` answers: the rows, whether they came from the cache, their age."""

    reader: pa.RecordBatchReader
    status: str  # HIT | STALE | MISS | BYPASS
    age_seconds: float
    as_of: Mapping[str, float] = field(default_factory=dict)  # per product, for the level above
    tier: str | None = None  # where a hit was found: MEMORY | REDIS
    reason: str = ""  # why a BYPASS


Load = Callable[[], "tuple[pa.RecordBatchReader, Mapping[str, float]]"]
"""Fetches the rows of a miss: the reader and, per product, when the data it used was current
where that is older than the fetch (fragments the load itself took from the cache)."""


class SharedTier(Protocol):
    """A second tier shared by gateway replicas (``gateway.redis_tier.RedisTier``): never raises."""

    def get(self, level: str, key: str) -> Entry | None: ...

    def put(self, level: str, key: str, entry: Entry, ttl: float) -> None: ...

    def close(self) -> None: ...


# What a cached entry is good for, for one lookup.
_FRESH, _SERVE_STALE, _UNSUITABLE, _DEAD = "fresh", "serve-stale", "unsuitable", "dead"


def _judge(entry: Entry, lookup: Lookup, now: float) -> str:
    """``_FRESH`` (serve it), ``_SERVE_STALE`` (serve it while refreshing), ``_UNSUITABLE`` (too old
    for this caller's max_staleness, others may take it) or ``_DEAD`` (a watermark moved or a
    product's SLA plus its stale-while-revalidate window passed: nobody may be served it)."""
    fresh, suitable = True, True
    for p in lookup.products:
        if entry.watermarks.get(p.product) != p.watermark:
            return _DEAD
        age = now - p.as_of(entry.as_of, entry.fetched_at)
        if age >= p.sla + p.stale_while_revalidate:
            if not p.inputs:
                return _DEAD
            suitable = False  # too old for a derived product's SLA; its inputs' rows may still serve others
        if age >= p.sla:
            fresh = False
    if not suitable or (lookup.max_staleness is not None and entry.age(now) >= lookup.max_staleness):
        return _UNSUITABLE
    return _FRESH if fresh else _SERVE_STALE


def remaining_life(entry: Entry, lookup: Lookup, now: float) -> float:
    """Seconds until no caller may be served ``entry`` any more (a shared tier's TTL)."""
    return min(
        (p.sla + p.stale_while_revalidate - (now - p.as_of(entry.as_of, entry.fetched_at)) for p in lookup.products),
        default=0.0,
    )


def past_sla(lookup: Lookup, now: float) -> str:
    """Why data fetched ``now`` could never be served from the cache (a product's source data is
    already older than its SLA), or ''."""
    fetched = lookup.fetched_as_of(now)
    for p in lookup.products:
        as_of = p.as_of(fetched, now)
        if now - as_of >= p.sla:
            where = "at its source" if not p.inputs else "at its inputs' sources"
            return (f"{p.product}'s newest data is {format_seconds(now - as_of)} old {where}, "
                    f"past its {format_seconds(p.sla)} freshness SLA")
    return ""


def format_seconds(seconds: float) -> str:
    """``42 s``, ``5.0 min``, ``3.2 h``, ``12.5 d``: an age or duration for people."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


class _Entries(LRUCache):
    """An LRU bounded by bytes that counts evictions (not removals of stale entries) per level."""

    def popitem(self) -> tuple[Any, Any]:
        (level, key), entry = super().popitem()
        metrics.CACHE_EVICTIONS.labels(level, MEMORY).inc()
        self.evictions += 1
        return (level, key), entry


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None  # set when the leader's result was kept


class ResultCache:
    """See the module docstring.  ``clock`` (default ``time.time``, epoch seconds: the data's own
    timestamps are wall-clock times) is injectable for tests; ``shared`` is the Redis tier."""

    def __init__(self, max_bytes: int, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
                 clock: Callable[[], float] = time.time, shared: SharedTier | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.clock = clock
        self.shared = shared
        self._entries = _Entries(maxsize=max(max_bytes, 1), getsizeof=lambda e: e.nbytes)
        self._entries.evictions = 0
        self._too_big: LRUCache[tuple[str, str], bool] = LRUCache(maxsize=4096)  # results above the entry limit
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0  # result level, all tiers: what a dashboard user sees
        self.fragment_hits = self.fragment_misses = 0
        _LIVE.add(self)

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)

    def level_bytes(self, level: str) -> int:
        with self._lock:
            return sum(e.nbytes for (lvl, _), e in self._entries.items() if lvl == level)

    @property
    def evictions(self) -> int:
        return int(self._entries.evictions)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self, level: str | None = None) -> None:
        """Forget this process's entries of ``level`` (default: both levels); the shared tier
        keeps its own until they expire."""
        with self._lock:
            for slot in [s for s in self._entries if level is None or s[0] == level]:
                del self._entries[slot]
            for slot in [s for s in self._too_big if level is None or s[0] == level]:
                del self._too_big[slot]

    # --- lookups ----------------------------------------------------------------------------

    def fetch(self, lookup: Lookup, load: Load, revalidate: Load | None = None) -> Result:
        """The cached answer for ``lookup`` if it may be served, else ``load()``'s (kept when it
        fits and may be served to someone).  With ``revalidate`` (a load that does not depend on
        the caller), an entry in its products' stale-while-revalidate window is served while
        ``revalidate`` refreshes it in the background, once."""
        slot = (lookup.level, lookup.key)
        reason = past_sla(lookup, self.clock())
        if reason:  # the source is behind its SLA: the cache could never serve this, nor should it try
            reader, as_of = load()
            as_of = _merged(lookup.fetched_as_of(self.clock()), as_of)
            return Result(reader, BYPASS, _age(as_of, self.clock()), as_of, reason=reason)
        while True:
            with self._lock:
                entry = self._entries.get(slot)
                if entry is not None:
                    verdict = _judge(entry, lookup, self.clock())
                    if verdict == _DEAD:
                        del self._entries[slot]
                    elif verdict == _FRESH:
                        return self._hit(entry, lookup, MEMORY)
                    elif verdict == _SERVE_STALE and revalidate is not None:
                        self._refresh_in_background(slot, lookup, revalidate)
                        return self._hit(entry, lookup, MEMORY, STALE)
                if slot in self._too_big:
                    flight = None
                else:
                    flight = self._flights.get(slot)
                    if flight is None:
                        leader = self._flights[slot] = _Flight()
                        break
            if flight is None:  # known to be too big to keep: no single flight
                self._count_miss(lookup.level)
                return self._load(slot, lookup, load, None)
            flight.done.wait()
            if flight.entry is not None and _judge(flight.entry, lookup, self.clock()) == _FRESH:
                return self._hit(flight.entry, lookup, MEMORY)
            # the leader failed, its result was not kept or does not suit us: try again (one of us leads)
        try:
            metrics.CACHE_MISSES.labels(lookup.level, MEMORY).inc()
            shared = self._from_shared(slot, lookup)
            if shared is not None:
                leader.entry = shared
                return self._hit(shared, lookup, REDIS)
            self._count(lookup.level, hit=False)
            return self._load(slot, lookup, load, leader)
        finally:
            with self._lock:
                self._flights.pop(slot, None)
            leader.done.set()

    def peek(self, lookup: Lookup) -> tuple[str, float, str]:
        """What ``fetch`` would answer now, without fetching or counting: (status, age in
        seconds, where it is or why it bypasses).  For EXPLAIN."""
        now = self.clock()
        reason = past_sla(lookup, now)
        if reason:
            return BYPASS, _age(lookup.fetched_as_of(now), now), reason
        with self._lock:
            entry = self._entries.get((lookup.level, lookup.key))
        tier = MEMORY
        if entry is None and self.shared is not None:
            entry, tier = self.shared.get(lookup.level, lookup.key), REDIS
        if entry is not None:
            verdict = _judge(entry, lookup, now)
            if verdict == _FRESH:
                return HIT, entry.age(now), tier
            if verdict == _SERVE_STALE and tier == MEMORY:
                return STALE, entry.age(now), tier
        return MISS, 0.0, ""

    # --- internals --------------------------------------------------------------------------

    def _load(self, slot: tuple[str, str], lookup: Lookup, load: Load, leader: _Flight | None) -> Result:
        """Run ``load``; keep its table (here and in the shared tier) when it fits and may be served."""
        fetched_at = self.clock()
        reader, loaded_as_of = load()
        as_of = _merged(lookup.fetched_as_of(fetched_at), loaded_as_of)
        age = _age(as_of, fetched_at)
        batches, nbytes, complete = _take(reader, self.max_entry_bytes)
        if not complete:
            with self._lock:
                self._too_big[slot] = True
            return Result(pa.RecordBatchReader.from_batches(reader.schema, _chain(batches, reader)), MISS, age, as_of)
        table = pa.Table.from_batches(batches, schema=reader.schema)
        entry = Entry(table, fetched_at, as_of, {p.product: p.watermark for p in lookup.products}, max(nbytes, 1))
        if _judge(entry, lookup, self.clock()) != _DEAD:
            with self._lock:
                self._entries[slot] = entry
            if self.shared is not None:
                self.shared.put(lookup.level, lookup.key, entry, remaining_life(entry, lookup, self.clock()))
            if leader is not None:
                leader.entry = entry
        return Result(table.to_reader(), MISS, age, as_of)

    def _from_shared(self, slot: tuple[str, str], lookup: Lookup) -> Entry | None:
        """A fresh entry from the shared tier, copied into this process; None on a miss."""
        if self.shared is None or slot in self._too_big:
            return None
        entry = self.shared.get(lookup.level, lookup.key)
        if entry is None or _judge(entry, lookup, self.clock()) != _FRESH:
            metrics.CACHE_MISSES.labels(lookup.level, REDIS).inc()
            return None
        with self._lock:
            self._entries[slot] = entry
        return entry

    def _refresh_in_background(self, slot: tuple[str, str], lookup: Lookup, revalidate: Load) -> None:
        """Start one refresh of ``slot`` unless one is running (lock held)."""
        if slot in self._flights:
            return
        leader = self._flights[slot] = _Flight()
        fresh_lookup = Lookup(lookup.level, lookup.key, lookup.products)  # kept for every caller, not this one's bound

        def refresh() -> None:
            try:
                self._count_miss(lookup.level)
                result = self._load(slot, fresh_lookup, revalidate, leader)
                for _ in result.reader:  # a result too big to keep is read to the end and dropped
                    pass
            except Exception:  # noqa: BLE001 - a failed refresh leaves the stale entry; the next caller retries
                log.warning("background refresh of a cached %s failed", lookup.level, exc_info=True)
            finally:
                with self._lock:
                    self._flights.pop(slot, None)
                leader.done.set()

        threading.Thread(target=refresh, name="cache-revalidate", daemon=True).start()

    def _hit(self, entry: Entry, lookup: Lookup, tier: str, status: str = HIT) -> Result:
        metrics.CACHE_HITS.labels(lookup.level, tier).inc()
        self._count(lookup.level, hit=True)
        return Result(entry.table.to_reader(), status, entry.age(self.clock()), entry.as_of, tier)

    def _count_miss(self, level: str) -> None:
        """A load from the sources without asking the shared tier (too big to keep, or a refresh)."""
        metrics.CACHE_MISSES.labels(level, MEMORY).inc()
        self._count(level, hit=False)

    def _count(self, level: str, hit: bool) -> None:
        if level == RESULT:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        elif hit:
            self.fragment_hits += 1
        else:
            self.fragment_misses += 1


def _merged(base: Mapping[str, float], older: Mapping[str, float]) -> dict[str, float]:
    """Per product, the older of the two times its data was current."""
    merged = dict(base)
    for product, as_of in older.items():
        merged[product] = min(as_of, merged.get(product, as_of))
    return merged


def _age(as_of: Mapping[str, float], now: float) -> float:
    return max(0.0, now - min(as_of.values(), default=now))


def _take(reader: pa.RecordBatchReader, limit: int) -> tuple[list[pa.RecordBatch], int, bool]:
    """Batches of ``reader`` until it ends (complete) or they exceed ``limit`` bytes."""
    batches: list[pa.RecordBatch] = []
    nbytes = 0
    for batch in reader:
        batches.append(batch)
        nbytes += batch.nbytes
        if nbytes > limit:
            return batches, nbytes, False
    return batches, nbytes, True


def _chain(first: list[pa.RecordBatch], rest: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    try:
        yield from first
        yield from rest
    finally:
        rest.close()


_LIVE: "weakref.WeakSet[ResultCache]" = weakref.WeakSet()
for _level in (RESULT, FRAGMENT):  # every series exists from the start (at 0): dashboards need no special case
    for _tier in (MEMORY, REDIS):
        metrics.CACHE_HITS.labels(_level, _tier)
        metrics.CACHE_MISSES.labels(_level, _tier)
    metrics.CACHE_EVICTIONS.labels(_level, MEMORY)
    metrics.CACHE_BYTES.labels(_level, MEMORY).set_function(
        lambda level=_level: sum(c.level_bytes(level) for c in list(_LIVE))  # type: ignore[misc]
    )
