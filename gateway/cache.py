"""The final-result cache: answers of governed, fully bound queries, kept while they are fresh.

A key is a hash of what a query really runs: every fragment's exact SQL (policy rewriting and
bound parameters and row-filter values are inside it) with its source, each fragment's engine-
side governance, the residual query, the output names and the product versions read. Two
principals with the same entitlements produce the same SQL and share entries; any difference
in masks or row-filter values makes a different key.  A new product version changes the key, so
entries of the old one are never served again (they age out of the LRU).

Freshness: an entry is served only while its age (counted from when its rows were fetched from
the sources) is below the caller's ``max_age``, the smallest ``sla.freshness`` of the products
it read, or the client's ``max_staleness`` when stricter.  The caller decides the bound; a
query over a product without a freshness SLA is not cached at all.

Bounded by bytes (``LRUCache`` with ``getsizeof``), not entries; a result above
``max_entry_bytes`` is streamed through and not kept.  Concurrent identical misses run the
source query once: the first caller loads, the others wait and share its table (single flight).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
from cachetools import LRUCache

from gateway import metrics

HIT, MISS, BYPASS = "hit", "miss", "bypass"
"""``meshgate.cache`` values: served from the cache, fetched now (and kept if small enough), or
not cacheable (no freshness SLA, system tables, or the client allows no staleness)."""

DEFAULT_MAX_ENTRY_BYTES = 64 * 1024**2

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float | None:
    """Seconds of ``30``, ``2.5``, ``'30'``, ``'500ms'``, ``'5m'``, ``'1h'``, ``'1d'``; None for None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 5m, 1h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


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
class Entry:
    table: pa.Table
    fetched_at: float  # the cache's clock when the rows were fetched from the sources
    nbytes: int


@dataclass(frozen=True)
class Result:
    """What ``ResultCache.fetch`` answers: the rows, whether they came from the cache, their age."""

    reader: pa.RecordBatchReader
    status: str  # HIT | MISS | BYPASS
    age_seconds: float


class _Entries(LRUCache):
    """An LRU bounded by bytes that counts evictions (not removals of stale entries)."""

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        metrics.CACHE_EVICTIONS.inc()
        self.evictions += 1
        return item


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None  # set when the leader's result was kept


class ResultCache:
    """See the module docstring.  ``clock`` (default ``time.monotonic``) is injectable for tests."""

    def __init__(self, max_bytes: int, max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self.clock = clock
        self._entries = _Entries(maxsize=max(max_bytes, 1), getsizeof=lambda e: e.nbytes)
        self._entries.evictions = 0
        self._too_big: LRUCache[str, bool] = LRUCache(maxsize=4096)  # keys whose result exceeded the entry limit
        self._flights: dict[str, _Flight] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        _LIVE.add(self)

    @property
    def bytes(self) -> int:
        return int(self._entries.currsize)

    @property
    def evictions(self) -> int:
        return int(self._entries.evictions)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _fresh(self, key: str, max_age: float) -> Entry | None:
        """The entry under ``key`` if younger than ``max_age`` (a stale one is dropped); lock held."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry.fetched_at >= max_age:
            return None  # too old for this caller (another may still accept it)
        return entry

    def fetch(self, key: str, max_age: float, load: Callable[[], pa.RecordBatchReader],
              drop_older_than: float | None = None) -> Result:
        """The cached answer under ``key`` if younger than ``max_age`` s, else ``load()``'s
        (kept when it fits).  ``drop_older_than`` (the products' freshness SLA) removes an entry
        that no caller may be served any more."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and drop_older_than is not None and self.clock() - entry.fetched_at >= drop_older_than:
                    del self._entries[key]
                entry = self._fresh(key, max_age)
                if entry is not None:
                    return self._hit(entry)
                if key in self._too_big:
                    flight = None
                else:
                    flight = self._flights.get(key)
                    if flight is None:
                        leader = self._flights[key] = _Flight()
                        break
            if flight is None:  # known to be too big to keep: no single flight
                self._count_miss()
                return Result(load(), MISS, 0.0)
            flight.done.wait()
            if flight.entry is not None and self.clock() - flight.entry.fetched_at < max_age:
                return self._hit(flight.entry)
            # the leader failed or its result was not kept: try again (one of us leads)
        self._count_miss()
        try:
            fetched_at = self.clock()
            reader = load()
            batches, nbytes, complete = _take(reader, self.max_entry_bytes)
            if not complete:
                with self._lock:
                    self._too_big[key] = True
                return Result(pa.RecordBatchReader.from_batches(reader.schema, _chain(batches, reader)), MISS, 0.0)
            table = pa.Table.from_batches(batches, schema=reader.schema)
            entry = Entry(table, fetched_at, max(nbytes, 1))
            with self._lock:
                self._entries[key] = entry
            leader.entry = entry
            return Result(table.to_reader(), MISS, 0.0)
        finally:
            with self._lock:
                self._flights.pop(key, None)
            leader.done.set()

    def _hit(self, entry: Entry) -> Result:
        self.hits += 1
        metrics.CACHE_HITS.inc()
        return Result(entry.table.to_reader(), HIT, max(0.0, self.clock() - entry.fetched_at))

    def _count_miss(self) -> None:
        self.misses += 1
        metrics.CACHE_MISSES.inc()


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
metrics.CACHE_BYTES.set_function(lambda: sum(c.bytes for c in list(_LIVE)))
