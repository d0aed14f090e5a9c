"""Per-product usage from the audit log: how often each product is queried, by whom, and when.

The catalog ranks by it (popularity, consumers), lineage names the recent consumers a breaking
change would hit, and the SLA monitor reports it; all of them ask often, on a live gateway whose
audit log can be ten rotated files of 100 MB. So ``UsageIndex`` reads the log once and then only
what was appended since (it remembers each file by inode and first bytes, and the offset it read up to, so a
rotation, which renames files, costs nothing), and re-checks the files at most once a second.
When the oldest rotated file is dropped, its queries are subtracted again: usage always covers
exactly the queries the log still holds, as ``gateway.audit.read_queries`` would report them.

What counts as a query of a product: a *begin* record whose decision allowed it (answered,
cancelled or still running; refused and failed statements are not usage). A consumer is a
principal name. A consumer's domain is its ``domain`` (or ``team``) attribute when a lookup
(the users file) is given, else the domain of its ``owner:<domain>`` role, else unknown.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.audit import DEFAULT_BACKUPS

RECENT_CONSUMERS = 10
"""How many consumers ``ProductUsage.recent_consumers`` lists, most recent first."""

_CHUNK = 16 * 1024 * 1024
_HEAD = 64
"""A file is known by its inode and its first bytes (a random record id): a dropped file's inode
can be reused by the next file the log creates."""
_QUERY_PREFIX = b'{"type":"query"'  # the writer's compact separators: skip completions unparsed

PrincipalDomain = Callable[[str], "str | None"]
"""A principal name -> its domain (e.g. from the users file's attributes), or None if unknown."""


@dataclass(frozen=True)
class Consumer:
    """One principal that queried a product."""

    name: str
    queries: int
    last_queried: datetime
    last_version: str | None
    domain: str | None  # None: unknown

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "queries": self.queries, "last_queried": _iso(self.last_queried),
                "last_version": self.last_version, "domain": self.domain}


@dataclass(frozen=True)
class ProductUsage:
    """What the audit log says about one product (every version of it)."""

    product_id: str
    queries: int
    consumers: int  # distinct principal names
    consumer_domains: tuple[str, ...]  # the known ones, sorted
    unknown_domain_consumers: int
    last_queried: datetime | None
    recent_consumers: tuple[Consumer, ...]  # most recent first, at most RECENT_CONSUMERS

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "queries": self.queries,
            "consumers": self.consumers,
            "consumer_domains": list(self.consumer_domains),
            "unknown_domain_consumers": self.unknown_domain_consumers,
            "last_queried": _iso(self.last_queried) if self.last_queried else None,
            "recent_consumers": [c.to_json() for c in self.recent_consumers],
        }


def unused(product_id: str) -> ProductUsage:
    return ProductUsage(product_id, 0, 0, (), 0, None, ())


@dataclass
class _ConsumerTally:
    queries: int = 0
    last: float = 0.0
    version: str | None = None
    roles: tuple[str, ...] = ()


@dataclass
class _ProductTally:
    """Every query of one product still in the log (times kept to answer ``since``)."""

    queries: int = 0
    times: array = field(default_factory=lambda: array("d"))
    sorted_upto: int = 0  # times[:sorted_upto] is known to be sorted
    consumers: dict[str, _ConsumerTally] = field(default_factory=dict)

    def sorted_times(self) -> array:
        if self.sorted_upto < len(self.times):
            if any(self.times[i] < self.times[i - 1] for i in range(max(self.sorted_upto, 1), len(self.times))):
                self.times = array("d", sorted(self.times))
            self.sorted_upto = len(self.times)
        return self.times


@dataclass
class _FileState:
    """How far one audit file was read, and what it contributed (subtracted when it is dropped)."""

    offset: int = 0
    queries: dict[str, int] = field(default_factory=dict)  # product -> queries
    consumers: dict[tuple[str, str], int] = field(default_factory=dict)  # (product, principal) -> queries


class UsageIndex:
    """Usage per product from the audit log at ``path`` (and its ``backups`` rotated files).

    Cheap to call repeatedly: ``refresh`` (which ``usage`` and ``all`` call) looks at the files
    at most every ``min_interval`` seconds and parses only lines appended since the last look.
    ``generation`` changes whenever the numbers may have changed (for callers' own caches).
    """

    def __init__(self, path: Path, backups: int = DEFAULT_BACKUPS, min_interval: float = 1.0,
                 principal_domain: PrincipalDomain | None = None) -> None:
        self.path = Path(path)
        self.backups = backups
        self.min_interval = min_interval
        self.principal_domain = principal_domain
        self.generation = 0
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._files: dict[tuple[int, int, bytes], _FileState] = {}
        self._products: dict[str, _ProductTally] = {}
        self._activity: tuple[int, dict[str, tuple[int, int, float]]] | None = None

    # --- answers ----------------------------------------------------------------------------------

    def usage(self, product_id: str, since: datetime | None = None) -> ProductUsage:
        """Usage of ``product_id`` (all versions); ``since`` (aware) counts only later queries."""
        self.refresh()
        with self._lock:
            tally = self._products.get(product_id)
            return unused(product_id) if tally is None else self._summary(product_id, tally, since)

    def all(self, since: datetime | None = None) -> dict[str, ProductUsage]:
        """Usage of every product the log mentions."""
        self.refresh()
        with self._lock:
            return {pid: self._summary(pid, tally, since) for pid, tally in self._products.items()}

    def counts(self) -> dict[str, tuple[int, int]]:
        """product -> (queries, distinct consumers): the cheap numbers ranking needs."""
        return {pid: (queries, consumers) for pid, (queries, consumers, _) in self.activity().items()}

    def activity(self) -> dict[str, tuple[int, int, float]]:
        """product -> (queries, distinct consumers, last query as epoch seconds), every product at
        once; computed once per ``generation`` (callers must not modify it)."""
        self.refresh()
        with self._lock:
            if self._activity is None or self._activity[0] != self.generation:
                self._activity = (self.generation, {
                    pid: (t.queries, len(t.consumers), max(c.last for c in t.consumers.values()))
                    for pid, t in self._products.items() if t.queries and t.consumers})
            return self._activity[1]

    # --- reading ----------------------------------------------------------------------------------

    def refresh(self, force: bool = False, block: bool = True) -> bool:
        """Read what was appended to the log since the last look; True if anything changed.

        Without ``force`` the files are looked at no more often than ``min_interval``. With
        ``block=False`` a refresh already running in another thread is not waited for (the
        caller gets the numbers as they are), so a first load of a large log does not stall
        every request behind it.
        """
        now = time.monotonic()
        if not force and now - self._checked_at < self.min_interval:
            return False
        if not self._lock.acquire(blocking=block):
            return False
        try:
            if not force and now - self._checked_at < self.min_interval:  # another thread just did
                return False
            changed = self._refresh()
            self._checked_at = time.monotonic()
            if changed:
                self.generation += 1
            return changed
        finally:
            self._lock.release()

    def _refresh(self) -> bool:
        present: list[tuple[tuple[int, int, bytes], Path, int]] = []  # oldest first
        for file in [self.path.with_name(f"{self.path.name}.{n}") for n in range(self.backups, 0, -1)] + [self.path]:
            try:
                with open(file, "rb") as handle:
                    st = os.fstat(handle.fileno())
                    head = handle.read(_HEAD)
            except FileNotFoundError:
                continue
            if len(head) == _HEAD:  # shorter: at most a torn first line, nothing to read yet
                present.append(((st.st_dev, st.st_ino, head), file, st.st_size))
        changed = False
        keys = {key for key, _, _ in present}
        for key in [k for k in self._files if k not in keys]:
            self._subtract(self._files.pop(key))
            changed = True
        for key, file, size in present:
            state = self._files.get(key)
            if state is not None and size < state.offset:  # truncated or replaced in place: start over
                self._subtract(self._files.pop(key))
                state, changed = None, True
            if state is None:
                state = self._files[key] = _FileState()
            if size > state.offset:
                changed |= self._read(file, state)
        return changed

    def _read(self, file: Path, state: _FileState) -> bool:
        """Add the complete lines after ``state.offset``; a torn last line waits for next time."""
        changed = False
        try:
            handle = open(file, "rb")
        except FileNotFoundError:
            return False
        with handle:
            handle.seek(state.offset)
            pending = b""
            while chunk := handle.read(_CHUNK):
                data = pending + chunk
                end = data.rfind(b"\n") + 1
                pending = data[end:]
                for line in data[:end].splitlines():
                    if line.startswith(_QUERY_PREFIX):
                        changed |= self._add(line, state)
                state.offset += end
        return changed

    def _add(self, line: bytes, state: _FileState) -> bool:
        try:
            record = json.loads(line)
            if not record.get("decision", {}).get("allowed"):
                return False
            when = datetime.fromisoformat(record["time"]).timestamp()
            principal = record.get("principal") or {}
            name = str(principal.get("name", ""))
            roles = tuple(principal.get("roles") or ())
            products = record.get("products") or ()
        except (ValueError, KeyError, TypeError, AttributeError):
            return False  # not a record this version writes: skip it, as read_queries does
        added = False
        for seen in {(p.get("id"), p.get("version")) for p in products if isinstance(p, dict) and p.get("id")}:
            product_id, version = seen
            tally = self._products.get(product_id)
            if tally is None:
                tally = self._products[product_id] = _ProductTally()
            tally.queries += 1
            tally.times.append(when)
            consumer = tally.consumers.get(name)
            if consumer is None:
                consumer = tally.consumers[name] = _ConsumerTally()
            consumer.queries += 1
            if when >= consumer.last:
                consumer.last, consumer.version, consumer.roles = when, version, roles
            state.queries[product_id] = state.queries.get(product_id, 0) + 1
            state.consumers[(product_id, name)] = state.consumers.get((product_id, name), 0) + 1
            added = True
        return added

    def _subtract(self, state: _FileState) -> None:
        """Forget a dropped file's queries: they are the oldest ones the index holds."""
        for product_id, n in state.queries.items():
            tally = self._products.get(product_id)
            if tally is None:
                continue
            tally.queries -= n
            times = tally.sorted_times()
            del times[:n]
            tally.sorted_upto = len(times)
            if tally.queries <= 0:
                del self._products[product_id]
        for (product_id, name), n in state.consumers.items():
            tally = self._products.get(product_id)
            consumer = tally.consumers.get(name) if tally is not None else None
            if consumer is not None:
                consumer.queries -= n
                if consumer.queries <= 0:
                    del tally.consumers[name]  # type: ignore[union-attr]

    # --- summaries --------------------------------------------------------------------------------

    def _summary(self, product_id: str, tally: _ProductTally, since: datetime | None) -> ProductUsage:
        cutoff = since.timestamp() if since is not None else float("-inf")
        if since is None:
            queries = tally.queries
        else:
            times = tally.sorted_times()
            queries = len(times) - bisect.bisect_left(times, cutoff)
        # A consumer queried since the cutoff iff its last query did; its count is all-time.
        active = sorted(((n, c) for n, c in tally.consumers.items() if c.last >= cutoff), key=lambda nc: -nc[1].last)
        domains = [self.domain_of(n, c.roles) for n, c in active]
        known = sorted({d for d in domains if d})
        recent = tuple(
            Consumer(n, c.queries, datetime.fromtimestamp(c.last, timezone.utc), c.version, d)
            for (n, c), d in zip(active[:RECENT_CONSUMERS], domains)
        )
        last = datetime.fromtimestamp(active[0][1].last, timezone.utc) if active else None
        return ProductUsage(product_id, queries, len(active), tuple(known), sum(1 for d in domains if not d), last, recent)

    def domain_of(self, name: str, roles: Iterable[str] = ()) -> str | None:
        """A consumer's domain: the lookup's answer, else its ``owner:<domain>`` role, else None."""
        if self.principal_domain is not None:
            found = self.principal_domain(name)
            if found:
                return found
        owned = sorted(r.split(":", 1)[1] for r in roles if r.startswith("owner:") and len(r) > len("owner:"))
        return owned[0] if owned else None


# --- one index per audit log, shared by everything in the process --------------------------------

_INDEXES: dict[Path, UsageIndex] = {}
_INDEXES_LOCK = threading.Lock()


def usage_index(path: Path, backups: int = DEFAULT_BACKUPS) -> UsageIndex:
    """The process-wide ``UsageIndex`` of the audit log at ``path`` (created on first use), so the
    catalog, lineage and the SLA monitor share one reading of the log."""
    key = Path(os.path.abspath(path))
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is None:
            index = _INDEXES[key] = UsageIndex(key, backups)
        return index


def service_usage(service: Any) -> UsageIndex:
    """The usage index of a ``GatewayService``'s audit log."""
    audit = service.audit
    return usage_index(audit.path, getattr(audit, "backups", DEFAULT_BACKUPS))


def principal_domains(users: Any) -> PrincipalDomain:
    """A lookup from a ``gateway.users.UsersFile``: the user's ``domain`` or ``team`` attribute."""

    def lookup(name: str) -> str | None:
        user = users.get(name)
        if user is None:
            return None
        attributes = user.principal().attributes
        value = attributes.get("domain") or attributes.get("team")
        return str(value) if value else None

    return lookup


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
