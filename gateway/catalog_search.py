"""Catalog search: find data products across every domain by name, description, columns, tags,
owner or domain, ranked so the product a consumer most likely wants comes first.

An in-memory inverted index over the registry's catalog snapshot (the newest version of each
product), rebuilt when the registry's generation changes, so a search never touches SQLite or a
source. Ranking, in order of precedence:

1. an **exact** name or product id (``orders``, ``sales.orders``) comes first;
2. **text relevance**: each query term is matched (stemmed: ``customers`` finds ``customer``;
   a term of three letters or more also matches as a prefix, at a discount) against the name,
   tags, domain, column names, description, column tags, column descriptions and owner, in
   decreasing weight; rarer terms count more (idf); products matching more of the terms rank
   above products matching fewer (the relevance is multiplied by the squared share matched),
   and a name made only of query terms counts 1.5 times;
3. **boosts**: usage from the audit log (``gateway/usage.py``: queries and distinct consumers,
   up to x1.5 for the most used product of the mesh) and health (the newest SLA check breached:
   x0.5; the newest quality score q: x(0.6 + 0.4 q); unknown health: x0.9; a deprecated version:
   x0.3).

Each hit says why it matched (which fields and columns, with the query terms they matched) and
what boosted or lowered it. A search only returns products the principal may read (the same
decision as metadata listings), so a search never reveals a product's existence to someone who
could not query it.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from gateway.descriptor import Descriptor
from gateway.registry import Catalog
from gateway.system_products import SystemScope, system_product
from gateway.usage import UsageIndex, service_usage

FIELD_WEIGHTS: dict[str, float] = {
    "name": 10.0,
    "tag": 6.0,
    "domain": 4.0,
    "column": 4.0,
    "description": 3.0,
    "column_tag": 3.0,
    "column_description": 2.0,
    "owner": 2.0,
}
"""How much a term matching each field is worth (before idf and boosts)."""

NAME_COVERED = 1.5
"""A product whose every name word is a query term (``customers`` for "customer") is worth this
much more than one whose name only contains a term (``customer_revenue``)."""
PREFIX_QUALITY = 0.6
"""A term matching only as a prefix of a word (``cust`` in ``customers``) counts this much."""
MAX_PREFIX_EXPANSIONS = 64
PLACES_KEPT = 4096
"""Entries whose word places (for the reasons of a hit) are kept per index."""
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
REBUILD_WAIT = 0.25
"""Seconds a search waits for the index of a new catalog snapshot before using the previous one."""
HEALTH_MAX_AGE = 1.0
"""Seconds a snapshot of the products' health (quality scores, SLA checks) is reused."""

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """Lower-case words of ``text``; underscores and punctuation separate words."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A light English stemmer, enough for catalog words: plurals fold onto their singular."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Health:
    """What the platform last measured about a product; None: never measured."""

    quality_score: float | None = None  # 0..1, the newest quality check
    sla_met: bool | None = None  # the newest SLA check met every target
    sla_breaches: tuple[str, ...] = ()  # e.g. ("freshness: 3h old, SLA 1h",)
    status: str = "active"  # active | deprecated


HealthSource = Callable[[], Mapping[str, Health]]
"""Every product's health at once (a bulk read: search reads it at most every HEALTH_MAX_AGE s)."""


@dataclass(frozen=True)
class Match:
    """One field of a product that matched query terms."""

    field: str  # a FIELD_WEIGHTS key
    value: str  # the name, tag, column, owner or domain that matched (for column_* the column)
    terms: tuple[str, ...]  # the query terms it matched (as typed)
    prefix: bool  # matched only as a word prefix

    def to_json(self) -> dict[str, Any]:
        value = self.value if len(self.value) <= 160 else self.value[:157] + "..."
        return {"field": self.field, "value": value, "terms": list(self.terms), "prefix": self.prefix}

    def reason(self) -> str:
        terms = ", ".join(f"'{t}'" for t in self.terms)
        how = " (prefix)" if self.prefix else ""
        where = {
            "name": f"name {self.value}",
            "tag": f"tag {self.value}",
            "domain": f"domain {self.value}",
            "column": f"column {self.value}",
            "description": "description",
            "column_tag": f"a tag of column {self.value}",
            "column_description": f"description of column {self.value}",
            "owner": f"owner {self.value}",
        }[self.field]
        return f"{where} matches {terms}{how}"


@dataclass(frozen=True)
class Hit:
    """One search result: the product's catalog entry, its score and why it is here."""

    descriptor: Descriptor
    score: float
    exact: bool
    matches: tuple[Match, ...]
    why: tuple[str, ...]
    queries: int
    consumers: int
    last_queried: datetime | None
    popularity: float  # 0..10, relative to the most used product
    health: Health
    versions: tuple[str, ...]  # the newest version of each active major, newest first

    @property
    def product_id(self) -> str:
        return self.descriptor.product_id

    def to_json(self) -> dict[str, Any]:
        """The seed design's catalog entry (product_id ... popularity_score) plus score and reasons."""
        d = self.descriptor
        sla = d.raw.get("spec", {}).get("sla") or {}
        return {
            "product_id": d.product_id,
            "name": d.name,
            "domain": d.domain,
            "description": d.description,
            "owner": d.owner,
            "version": d.version,
            "versions": list(self.versions),
            "status": self.health.status,
            "tags": list(d.tags),
            "sla": dict(sla),
            "sla_met": self.health.sla_met,
            "sla_breaches": list(self.health.sla_breaches),
            "quality_score": self.health.quality_score,
            "consumers": self.consumers,
            "queries": self.queries,
            "last_queried": _iso(self.last_queried),
            "popularity_score": self.popularity,
            "score": round(self.score, 4),
            "exact_match": self.exact,
            "matches": [m.to_json() for m in self.matches],
            "why": list(self.why),
        }


@dataclass(frozen=True)
class SearchResults:
    query: str
    hits: tuple[Hit, ...]
    total: int  # every visible product that matched, not only the ones returned
    search_time_ms: float

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query, "results": [h.to_json() for h in self.hits], "total_results": self.total,
                "search_time_ms": round(self.search_time_ms, 3)}


# --- the index -------------------------------------------------------------------------------------


@dataclass
class _Entry:
    descriptor: Descriptor
    versions: tuple[str, ...]
    deprecated: bool = False  # its newest version is deprecated (still queryable, ranked lower)


_FIELD_BITS = {name: 1 << n for n, name in enumerate(FIELD_WEIGHTS)}
_MASK_WEIGHTS = np.array([sum(w for name, w in FIELD_WEIGHTS.items() if mask & _FIELD_BITS[name])
                          for mask in range(1 << len(FIELD_WEIGHTS))])
"""The summed weight of every combination of fields a word can occur in (by bit mask)."""

_Analysis = tuple[dict[str, int], int]
"""A product's words: stemmed word -> bit mask of the fields it occurs in; its name's word count."""


class _Index:
    """One catalog snapshot, indexed: per stemmed word, the entries it occurs in and a weight
    for the fields it occurs in there (numpy arrays, so scoring a term over thousands of entries
    is a few vector operations). ``analyses`` carries each product version's word analysis over
    from the previous snapshot (versions never change), so a rebuild analyses new versions only."""

    def __init__(self, catalog: Catalog, analyses: dict[tuple[str, str], _Analysis] | None = None) -> None:
        self.generation = catalog.generation
        self.entries: list[_Entry] = []
        self.by_name: dict[str, list[int]] = {}  # name and product id -> entries
        self.analyses: dict[tuple[str, str], _Analysis] = {}
        by_domain: dict[str, list[int]] = {}
        by_tag: dict[str, list[int]] = {}
        by_owner: dict[str, list[int]] = {}
        name_lengths: list[int] = []
        postings: dict[str, tuple[list[int], list[int]]] = {}  # word -> (entries, field masks)
        previous = analyses or {}
        for i, d in enumerate(catalog.products()):
            self.entries.append(_Entry(d, tuple(m.version for m in catalog.majors(d.product_id)),
                                       catalog.deprecation(d) is not None))
            self.by_name.setdefault(d.name, []).append(i)
            self.by_name.setdefault(d.product_id, []).append(i)
            by_domain.setdefault(d.domain, []).append(i)
            for tag in {t.lower() for t in d.tags}:
                by_tag.setdefault(tag, []).append(i)
            owner = d.owner.lower()
            for key in {owner, owner.split("@")[0]}:
                by_owner.setdefault(key, []).append(i)
            key = (d.product_id, d.version)
            analysis = previous.get(key) or _analyse(d)
            self.analyses[key] = analysis
            masks, name_length = analysis
            name_lengths.append(name_length)
            for root, mask in masks.items():
                found = postings.get(root)
                if found is None:
                    found = postings[root] = ([], [])
                found[0].append(i)
                found[1].append(mask)
        self.size = len(self.entries)
        self.docs: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.in_name: dict[str, np.ndarray] = {}
        name_bit = _FIELD_BITS["name"]
        for root, (docs, masks) in postings.items():
            bits = np.array(masks, np.int32)
            self.docs[root] = np.array(docs, np.int32)
            self.weights[root] = _MASK_WEIGHTS[bits]
            self.in_name[root] = (bits & name_bit) != 0
        self.vocabulary = sorted(postings)
        self.name_lengths = np.array(name_lengths, np.int32)
        self.by_domain = {k: np.array(v, np.int32) for k, v in by_domain.items()}
        self.by_tag = {k: np.array(v, np.int32) for k, v in by_tag.items()}
        self.by_owner = {k: np.array(v, np.int32) for k, v in by_owner.items()}
        self._places: dict[int, dict[str, tuple[tuple[str, str], ...]]] = {}
        self._places_lock = threading.Lock()

    def places(self, i: int) -> dict[str, tuple[tuple[str, str], ...]]:
        """Where in entry ``i`` each of its words occurs: (field, value) pairs, for explaining a
        hit; worked out when first asked and kept for the most recently explained entries (as
        tuples of strings, which the garbage collector stops tracking: a large cache of lists
        would make its full collections, and so searches, slow)."""
        found = self._places.get(i)
        if found is not None:
            return found
        places: dict[str, list[tuple[str, str]]] = {}
        for field_name, text, value in _fields(self.entries[i].descriptor):
            for word in words(text):
                where = places.setdefault(_stem(word), [])
                if (field_name, value) not in where:
                    where.append((field_name, value))
        found = {root: tuple(where) for root, where in places.items()}
        with self._places_lock:
            if len(self._places) >= PLACES_KEPT:
                self._places.pop(next(iter(self._places)), None)
            self._places[i] = found
        return found

    def expand(self, term: str) -> list[tuple[str, bool]]:
        """Index words a query term matches: itself, and words it is a prefix of (3+ letters)."""
        found = [(term, False)] if term in self.docs else []
        if len(term) >= 3:
            start = bisect.bisect_left(self.vocabulary, term)
            for word in self.vocabulary[start:start + MAX_PREFIX_EXPANSIONS + 1]:
                if not word.startswith(term):
                    break
                if word != term:
                    found.append((word, True))
        return found

    def any_of(self, groups: Mapping[str, np.ndarray], keys: Iterable[str]) -> np.ndarray:
        """A mask of the entries in any of the ``keys`` groups."""
        mask = np.zeros(self.size, bool)
        for key in keys:
            found = groups.get(key)
            if found is not None:
                mask[found] = True
        return mask


def _fields(d: Descriptor) -> Iterable[tuple[str, str, str]]:
    yield "name", d.name, d.name
    yield "domain", d.domain, d.domain
    yield "owner", d.owner, d.owner
    if d.description:
        yield "description", d.description, d.description
    for tag in d.tags:
        yield "tag", tag, tag
    for column in d.columns:
        yield "column", column.name, column.name
        if column.description:
            yield "column_description", column.description, column.name
        for tag in column.spec.get("tags") or ():
            yield "column_tag", str(tag), column.name
        if column.spec.get("pii"):
            yield "column_tag", "pii", column.name


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return stem(word)


def _analyse(d: Descriptor) -> _Analysis:
    masks: dict[str, int] = {}
    for field_name, text, _ in _fields(d):
        bit = _FIELD_BITS[field_name]
        for word in words(text):
            root = _stem(word)
            masks[root] = masks.get(root, 0) | bit
    return masks, len({_stem(w) for w in words(d.name)})


@dataclass
class _Signals:
    """Per-entry usage and health, and the boost they give; rebuilt when usage or health changes."""

    key: Hashable
    queries: np.ndarray
    consumers: np.ndarray
    last: np.ndarray  # epoch seconds, NaN: never queried
    popularity: np.ndarray
    health: list[Health]
    boost: np.ndarray


UNKNOWN_HEALTH = Health()


def health_boost(health: Health) -> float:
    """How health moves a product's rank: breached SLA x0.5, quality q x(0.6 + 0.4 q), unknown
    x0.9 (a product known to be healthy ranks above one never checked), deprecated x0.3."""
    factor = 1.0
    if health.sla_met is False:
        factor *= 0.5
    factor *= 0.6 + 0.4 * health.quality_score if health.quality_score is not None else 0.9
    if health.status == "deprecated":
        factor *= 0.3
    return factor


class CatalogSearch:
    """Search over a registry's catalog, with usage and health signals; thread-safe.

    ``catalog`` returns the current snapshot (``Registry.catalog``); ``usage`` is the audit log's
    usage index (None: no usage signal); ``health`` returns every product's health.
    """

    def __init__(self, catalog: Callable[[], Catalog], usage: UsageIndex | None = None,
                 health: HealthSource | None = None) -> None:
        self._catalog = catalog
        self._usage = usage
        self._health = health
        self._lock = threading.Lock()
        self._index: _Index | None = None
        self._rebuilt: threading.Event | None = None  # set when the running rebuild is done
        self._signals: _Signals | None = None
        self._health_at = float("-inf")
        self._health_map: Mapping[str, Health] = {}
        self._health_version = 0
        self._visible: dict[Hashable, np.ndarray] = {}

    # --- snapshots ---------------------------------------------------------------------------------

    def index(self) -> _Index:
        """The index of the current catalog snapshot. After a registration the index is rebuilt
        in the background (analysing only new versions); a search waits for it up to
        REBUILD_WAIT seconds, then uses the previous snapshot's index until it is ready, so a
        large catalog's rebuild never stalls searches."""
        catalog = self._catalog()
        index = self._index
        if index is None:
            with self._lock:
                if self._index is None:
                    self._index = _Index(catalog)
                return self._index
        if index.generation == catalog.generation:
            return index
        with self._lock:
            rebuilt = self._rebuilt
            if rebuilt is None:
                rebuilt = self._rebuilt = threading.Event()
                threading.Thread(target=self._rebuild, args=(rebuilt,), name="catalog-index", daemon=True).start()
        rebuilt.wait(REBUILD_WAIT)
        return self._index  # type: ignore[return-value]

    def _rebuild(self, done: threading.Event) -> None:
        try:
            while (catalog := self._catalog()).generation != self._index.generation:  # type: ignore[union-attr]
                fresh = _Index(catalog, self._index.analyses)  # type: ignore[union-attr]
                with self._lock:
                    self._index = fresh
                    self._visible.clear()
        finally:
            with self._lock:
                self._rebuilt = None
            done.set()

    def signals(self, index: _Index) -> _Signals:
        """Usage and health per entry; recomputed when the index, the usage or the health changed."""
        now = time.monotonic()
        if self._health is not None and now - self._health_at >= HEALTH_MAX_AGE:
            health = self._health()
            if health != self._health_map:
                self._health_map, self._health_version = health, self._health_version + 1
            self._health_at = now
        if self._usage is not None:
            self._usage.refresh(block=False)
        key = (index.generation, self._usage.generation if self._usage is not None else 0, self._health_version)
        signals = self._signals
        if signals is not None and signals.key == key:
            return signals
        activity = self._usage.activity() if self._usage is not None else {}
        used = [activity.get(e.descriptor.product_id, (0, 0, math.nan)) for e in index.entries]
        queries = np.array([q for q, _, _ in used], np.int64)
        consumers = np.array([c for _, c, _ in used], np.int64)
        raw = np.log1p(queries) + 2 * np.log1p(consumers)
        top = float(raw.max()) if raw.size and raw.max() > 0 else 1.0
        health = [self._health_map.get(e.descriptor.product_id, UNKNOWN_HEALTH) for e in index.entries]
        health = [replace(h, status="deprecated") if e.deprecated else h for h, e in zip(health, index.entries)]
        signals = _Signals(
            key, queries, consumers, np.array([t for _, _, t in used], np.float64), np.round(10 * raw / top, 1), health,
            (1 + 0.5 * raw / top) * np.array([health_boost(h) for h in health], np.float64),
        )
        self._signals = signals
        return signals

    def visible(self, index: _Index, key: Hashable | None, may_read: Callable[[Descriptor], bool]) -> np.ndarray:
        """Which entries the principal may read, memoized per principal (``key``) and snapshot."""
        if key is None:
            return np.fromiter((may_read(e.descriptor) for e in index.entries), bool, index.size)
        found = self._visible.get(key)
        if found is None:
            found = np.fromiter((may_read(e.descriptor) for e in index.entries), bool, index.size)
            if len(self._visible) >= 256:
                self._visible.pop(next(iter(self._visible)), None)
            self._visible[key] = found
        return found

    # --- searching ---------------------------------------------------------------------------------

    def search(
        self,
        text: str = "",
        *,
        domains: Iterable[str] = (),
        tags: Iterable[str] = (),
        owners: Iterable[str] = (),
        limit: int = DEFAULT_LIMIT,
        may_read: Callable[[Descriptor], bool] = lambda d: True,
        visibility_key: Hashable | None = None,
    ) -> SearchResults:
        """Products matching ``text`` (empty: every product, by popularity and health) that pass
        every filter (``domains``: any of them; ``tags``: all of them; ``owners``: any of them,
        the owner string or its part before ``@``, case-insensitive) and that ``may_read``
        allows; the best ``limit``. ``visibility_key`` identifies the principal whose
        ``may_read`` it is, so its decisions are computed once per catalog snapshot."""
        started = time.perf_counter()
        index = self.index()
        signals = self.signals(index)
        mask = self.visible(index, None if visibility_key is None else (visibility_key, index.generation), may_read).copy()
        domains, tags, owners = [d.lower() for d in domains], [t.lower() for t in tags], [o.lower() for o in owners]
        if domains:
            mask &= index.any_of(index.by_domain, domains)
        for tag in tags:
            mask &= index.any_of(index.by_tag, [tag])
        if owners:
            mask &= index.any_of(index.by_owner, owners)

        typed = list(dict.fromkeys(words(text)))  # query terms as typed, once each
        terms = list(dict.fromkeys(stem(t) for t in typed))
        typed_of = {stem(t): t for t in typed}
        exact_key = _as_name(text)
        exact = index.any_of(index.by_name, [exact_key] if exact_key else []) & mask
        if terms:
            scores, found = self._text_scores(index, terms, mask)
            scores *= signals.boost
        else:
            found, scores = mask, signals.boost.copy()
        found = found | exact
        candidates = np.flatnonzero(found)
        rank = scores[candidates] + np.where(exact[candidates], 1e12, 0.0)  # exact names first
        if limit < len(candidates):
            keep = np.argpartition(-rank, max(limit - 1, 0))[:max(limit, 0)]
            candidates, rank = candidates[keep], rank[keep]
        order = np.lexsort((candidates, -rank))  # best first; ties by product id (the entries' order)
        hits = tuple(self._hit(index, signals, int(i), float(scores[i]), bool(exact[i]), terms, typed_of, exact_key)
                     for i in candidates[order][:max(limit, 0)])
        return SearchResults(text, hits, int(found.sum()), (time.perf_counter() - started) * 1000)

    @staticmethod
    def _text_scores(index: _Index, terms: list[str], mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, matched) per entry: each term's best-matching word weighed by the fields it
        occurs in and by its rarity, times the squared share of terms matched, times
        NAME_COVERED where the name is made of query terms only."""
        relevance = np.zeros(index.size)
        matched = np.zeros(index.size, np.int32)
        name_hits = np.zeros(index.size, np.int32)
        for term in terms:
            best = np.zeros(index.size)
            for word, prefix in index.expand(term):
                docs = index.docs[word]
                best[docs] = np.maximum(best[docs], index.weights[word] * (PREFIX_QUALITY if prefix else 1.0))
                if not prefix:
                    name_hits[docs[index.in_name[word]]] += 1
            hit = (best > 0) & mask
            df = int(hit.sum())
            if df:
                relevance += np.where(hit, best, 0.0) * math.log(1 + index.size / df)
                matched += hit
        covered = np.where((name_hits >= index.name_lengths) & (index.name_lengths > 0), NAME_COVERED, 1.0)
        return relevance * (matched / len(terms)) ** 2 * covered, matched > 0

    @staticmethod
    def _hit(index: _Index, signals: _Signals, i: int, score: float, exact: bool, terms: list[str],
             typed_of: dict[str, str], exact_key: str) -> Hit:
        entry = index.entries[i]
        by_field: dict[tuple[str, str], tuple[list[str], bool]] = {}
        expansions = {term: index.expand(term) for term in terms}
        places = index.places(i)
        for term, found in expansions.items():
            for word, prefix in found:
                for key in places.get(word, ()):
                    matched_terms, only_prefix = by_field.get(key, ([], True))
                    shown = typed_of.get(term, term)
                    if shown not in matched_terms:
                        matched_terms.append(shown)
                    by_field[key] = (matched_terms, only_prefix and prefix)
        order = list(FIELD_WEIGHTS)
        matches = tuple(sorted((Match(f, v, tuple(t), p) for (f, v), (t, p) in by_field.items()),
                               key=lambda m: (order.index(m.field), m.prefix, m.value)))
        why: list[str] = []
        if exact:
            why.append("exact product id match" if exact_key == entry.descriptor.product_id else "exact name match")
        why += [m.reason() for m in matches]
        queries, consumers, popularity = int(signals.queries[i]), int(signals.consumers[i]), float(signals.popularity[i])
        if queries:
            why.append(f"used: {queries} quer{'y' if queries == 1 else 'ies'} by {consumers} consumer{'' if consumers == 1 else 's'}"
                       f" (popularity {popularity})")
        health = signals.health[i]
        if health.sla_met is False:
            why.append("ranked lower: SLA not met" + (f" ({'; '.join(health.sla_breaches)})" if health.sla_breaches else ""))
        if health.quality_score is not None:
            why.append(f"quality score {health.quality_score:.2f}" + (" (ranked lower)" if health.quality_score < 0.9 else ""))
        if health.status == "deprecated":
            why.append("ranked lower: deprecated")
        last = float(signals.last[i])
        return Hit(entry.descriptor, score, exact, matches, tuple(why), queries, consumers,
                   None if math.isnan(last) else datetime.fromtimestamp(last, timezone.utc), popularity, health, entry.versions)


def _as_name(text: str) -> str:
    """The query as a product name or id: ``Sales.Orders`` and ``sales orders`` -> itself lower-cased,
    spaces as underscores (``customer lifetime value`` -> ``customer_lifetime_value``)."""
    return "_".join(text.strip().lower().replace('"', "").split())


def _iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if moment is not None else None


# --- one search per gateway service -------------------------------------------------------------------

_SEARCHES: weakref.WeakKeyDictionary[Any, CatalogSearch] = weakref.WeakKeyDictionary()
_SEARCHES_LOCK = threading.Lock()


def service_search(service: Any) -> CatalogSearch:
    """The ``CatalogSearch`` of a ``GatewayService`` (its registry, its audit log's usage, the
    registry's quality and SLA records), created on first use and kept while the service lives."""
    with _SEARCHES_LOCK:
        found = _SEARCHES.get(service)
        if found is None:
            found = _SEARCHES[service] = CatalogSearch(service.registry.catalog, service_usage(service), registry_health(service.registry))
        return found


def search_as(service: Any, principal: Any, text: str = "", **filters: Any) -> SearchResults:
    """``CatalogSearch.search`` for ``principal``: only products its policies let it read."""
    service.policies.reload_if_changed(min_interval=1.0)
    key = (principal.name, tuple(sorted(principal.roles)), tuple(sorted((k, repr(v)) for k, v in principal.attributes.items())),
           service.policies.generation)
    return service_search(service).search(text, may_read=service._visible(principal), visibility_key=key, **filters)


def registry_health(registry: Any) -> HealthSource:
    """Health from the SLA monitor's newest check of each product, kept in the registry database
    (``gateway/sla_monitor.py``): a breached condition or a failed probe is an SLA not met, and the
    check's quality score is the product's; a product the monitor has not checked takes the score
    of its newest quality run (``meshgate product check``, registration). Both are re-read only
    when a new check was recorded (their newest ids changed), so asking every few seconds costs
    two indexed lookups."""
    from gateway.sla_monitor import store_for

    store = store_for(registry)
    lock = threading.Lock()
    seen: list[Any] = [None, {}]  # newest check ids, health map

    def health() -> Mapping[str, Health]:
        with lock:
            newest = (store.newest_id(), registry.quality_generation())
            if newest != seen[0]:
                scores = registry.latest_quality_scores()
                monitored = {pid: _sla_health(status) for pid, status in store.latest_all().items()}
                merged = {pid: Health(quality_score=score) for pid, score in scores.items()}
                for pid, sla in monitored.items():
                    quality = sla.quality_score if sla.quality_score is not None else scores.get(pid)
                    merged[pid] = replace(sla, quality_score=quality)
                seen[:] = [newest, merged]
            return seen[1]

    return health


def _sla_health(status: Any) -> Health:
    breaches = [f"{condition}: {observed}" for condition, observed in sorted(status.breaches.items())]
    if not status.available and "availability" not in status.breaches:
        breaches.append(f"unavailable: {status.error or 'the probe query failed'}")
    return Health(quality_score=status.quality_score, sla_met=not breaches, sla_breaches=tuple(breaches))


# --- mesh.catalog: the same catalog entries for SQL clients ------------------------------------------


@system_product(
    "catalog",
    "Every data product the caller may read, one row per product (its newest version): what catalog "
    "search returns, for SQL. Filter with WHERE, e.g. WHERE domain = 'sales' AND tags LIKE '%pii%'.",
    [
        ("product_id", "string", "domain.product"),
        ("domain", "string", "the owning domain"),
        ("name", "string", "the product name"),
        ("version", "string", "the newest active version"),
        ("description", "string", "what the product holds"),
        ("owner", "string", "the owning team"),
        ("tags", "string", "the product's tags, comma-separated"),
        ("columns", "string", "the contract's column names, comma-separated"),
        ("status", "string", "active or deprecated"),
        ("versions", "string", "the newest version of each active major, comma-separated, newest first"),
        ("quality_score", "double", "the newest quality check's score (0-1); NULL: never checked"),
        ("sla_met", "boolean", "the newest SLA check met every target; NULL: never checked"),
        ("sla_freshness", "string", "the SLA's freshness target (e.g. 1h)"),
        ("sla_availability", "double", "the SLA's availability target, percent"),
        ("consumers", "int64", "distinct principals that queried it (audit log)"),
        ("queries", "int64", "queries of it in the audit log"),
        ("last_queried", "timestamptz", "its most recent query"),
        ("popularity", "double", "0-10, relative to the most used product"),
    ],
)
def catalog_rows(scope: SystemScope) -> pa.Table:
    """One row per product ``scope.principal`` may read (the provider narrows as search does)."""
    search = service_search(scope.service)
    index = search.index()
    signals = search.signals(index)
    rows = [i for i, e in enumerate(index.entries) if scope.visible(e.descriptor)]
    entries = [index.entries[i].descriptor for i in rows]
    slas = [d.raw.get("spec", {}).get("sla") or {} for d in entries]
    health = [signals.health[i] for i in rows]
    last = signals.last[rows]
    return pa.table({
        "product_id": [d.product_id for d in entries],
        "domain": [d.domain for d in entries],
        "name": [d.name for d in entries],
        "version": [d.version for d in entries],
        "description": [d.description for d in entries],
        "owner": [d.owner for d in entries],
        "tags": [",".join(d.tags) for d in entries],
        "columns": [",".join(c.name for c in d.columns) for d in entries],
        "status": [h.status for h in health],
        "versions": [",".join(index.entries[i].versions) for i in rows],
        "quality_score": pa.array([h.quality_score for h in health], pa.float64()),
        "sla_met": pa.array([h.sla_met for h in health], pa.bool_()),
        "sla_freshness": pa.array([sla.get("freshness") for sla in slas], pa.string()),
        "sla_availability": pa.array([sla.get("availability") for sla in slas], pa.float64()),
        "consumers": pa.array(signals.consumers[rows], pa.int64()),
        "queries": pa.array(signals.queries[rows], pa.int64()),
        "last_queried": pa.array(np.where(np.isnan(last), 0, last * 1_000_000).astype(np.int64), pa.timestamp("us", tz="UTC"),
                                 mask=np.isnan(last)),
        "popularity": pa.array(signals.popularity[rows], pa.float64()),
    })
