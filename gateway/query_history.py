"""Query history: the recent queries of a gateway, running ones included.

A live gateway keeps a bounded ring buffer (``QueryHistory``) that the service feeds next to
its audit calls: an entry is added when a query starts (before any source is contacted, so a
query reading ``mesh.queries`` sees itself running), gets its cache outcome and the SQL sent
to each source while it runs, and its rows, bytes, duration and status when its stream ends.
Refused and failed statements are recorded too. ``GET /api/v1/queries``, the ``mesh.queries``
system product and ``meshgate top`` read it; no request ever re-reads the audit log.

The audit log stays the durable record. Entries carry the audit record's id, and the history a
gateway had before a restart (or that a process without a gateway wants) is loaded once from
the audit log (``audit.read_queries(path, since=...)``), lazily on first read, newest
``capacity`` queries of the last ``restore_window`` seconds.

Policy: a principal sees only its own queries unless it has role ``admin``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa

from gateway.system_products import SystemScope, system_product

ADMIN_ROLE = "admin"
"""The role that sees every principal's queries."""

STATUSES = ("running", "ok", "error", "denied", "cancelled")
"""A query's status: running until its stream ends; denied by policy; cancelled by its client."""

DEFAULT_CAPACITY = 1000
"""Finished queries kept in memory (running ones are kept apart until they finish)."""

MAX_RUNNING = 10_000
"""Running entries kept at most: a caller that never reads nor drops its stream must not grow it."""

DEFAULT_RESTORE_WINDOW = 24 * 3600.0
"""How far back the audit log is read when the history is first needed (seconds)."""

MAX_SQL_CHARS = 4000
"""Longer query text is truncated (the audit log keeps it whole)."""

MAX_FRAGMENT_SQL_CHARS = 2000
"""Longer source SQL (a dynamic filter's IN list, say) is truncated."""

STOPPED = "no completion recorded: the gateway stopped before the query finished"


def _truncate(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def is_admin(principal: Any) -> bool:
    return ADMIN_ROLE in getattr(principal, "roles", ())


@dataclass
class QueryEntry:
    """One query as the history shows it; mutated only under its ``QueryHistory``'s lock."""

    id: str
    started: datetime
    principal: str
    client: str | None
    sql: str
    products: tuple[tuple[str, str], ...]  # (product id, version)
    status: str = "running"
    finished: datetime | None = None
    duration_ms: float | None = None
    rows: int | None = None
    bytes: int | None = None
    cache: str | None = None  # hit | stale | miss | bypass; None until known (or refused before running)
    cache_age_seconds: float | None = None
    fragment_cache: dict[str, str] = field(default_factory=dict)  # fragment name -> its fragment-cache status
    fragments: list[tuple[str, str]] = field(default_factory=list)  # (source, SQL); grows while running
    error: str | None = None
    _monotonic: float = field(default_factory=time.monotonic, repr=False)

    def elapsed_ms(self) -> float:
        """Duration when finished, else the time it has been running so far."""
        if self.duration_ms is not None:
            return self.duration_ms
        if self.status == "running":
            return round((time.monotonic() - self._monotonic) * 1000, 3)
        return 0.0

    def reads(self, product: str) -> bool:
        return any(pid == product for pid, _ in self.products)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /api/v1/queries``."""
        return {
            "id": self.id,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "principal": self.principal,
            "client": self.client,
            "sql": self.sql,
            "products": [{"id": pid, "version": version} for pid, version in self.products],
            "status": self.status,
            "duration_ms": self.elapsed_ms(),
            "rows": self.rows,
            "bytes": self.bytes,
            "cache": None if self.cache is None else {"status": self.cache, "age_seconds": self.cache_age_seconds,
                                                      "fragments": dict(self.fragment_cache)},
            "fragments": [{"source": source, "sql": sql} for source, sql in self.fragments],
            "error": self.error,
        }

    def _copy(self) -> QueryEntry:
        """A snapshot that later updates of the live entry do not change (a running one's
        duration is its elapsed time at the snapshot)."""
        copy = object.__new__(QueryEntry)
        copy.__dict__.update(self.__dict__)
        if copy.status == "running":  # the engine may still append fragments; the SQL may be long
            copy.fragments = [(s, _truncate(q, MAX_FRAGMENT_SQL_CHARS) or "") for s, q in list(self.fragments)]
            copy.duration_ms = self.elapsed_ms()
        return copy


class QueryHistory:
    """Recent queries of one gateway, in memory; safe to share between threads."""

    def __init__(
        self,
        audit_path: Path | None = None,
        capacity: int = DEFAULT_CAPACITY,
        restore_window: float = DEFAULT_RESTORE_WINDOW,
        live: bool = True,
    ) -> None:
        """``audit_path``: the log the history before this process is read from (once, when
        first needed). ``live``: this process writes that log, so a query found there without a
        completion is not running any more (the gateway stopped); offline readers (``live=False``)
        keep it as running."""
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._audit_path = audit_path
        self._restore_window = restore_window
        self._live = live
        self._lock = threading.Lock()
        self._running: dict[str, QueryEntry] = {}
        self._done: deque[QueryEntry] = deque(maxlen=capacity)  # oldest first
        self._restored = audit_path is None
        self._restore_lock = threading.Lock()

    @classmethod
    def from_audit(cls, audit_path: Path, since: datetime | None = None, capacity: int = DEFAULT_CAPACITY) -> QueryHistory:
        """The history an audit log holds, for a process without a running gateway (the CLI)."""
        window = DEFAULT_RESTORE_WINDOW if since is None else max(0.0, (_now() - since).total_seconds())
        return cls(audit_path, capacity, window, live=False)

    # --- fed by the service -------------------------------------------------------------------

    def begin(self, principal: Any, sql: str, client: str | None, products: Iterable[tuple[str, str]],
              fragments: list[tuple[str, str]] | None = None) -> QueryEntry:
        """A query starts: a running entry. ``fragments`` is the live list the engine appends
        the SQL it sends to, so a running query shows its fragments as they go out."""
        entry = QueryEntry(secrets.token_hex(12), _now(), _name(principal), client,
                           _truncate(sql, MAX_SQL_CHARS) or "", tuple(tuple(p) for p in products))  # type: ignore[misc]
        if fragments is not None:
            entry.fragments = fragments
        with self._lock:
            self._running[entry.id] = entry
            if len(self._running) > MAX_RUNNING:
                self._running.pop(next(iter(self._running)))
        return entry

    def cached(self, entry: QueryEntry, status: str, age_seconds: float, fragments: dict[str, str] | None = None) -> None:
        """The query's result-cache outcome (``hit``, ``stale``, ``miss`` or ``bypass``), the
        answer's age and, for a federated query, each fragment's fragment-cache outcome."""
        with self._lock:
            entry.cache, entry.cache_age_seconds = status, round(age_seconds, 3)
            entry.fragment_cache = dict(fragments or {})

    def finish(self, entry: QueryEntry, status: str, rows: int | None = None, bytes_out: int | None = None,
               error: str | None = None) -> None:
        """The query's stream ended (or it failed before streaming)."""
        with self._lock:
            if entry.status != "running":
                return
            entry.duration_ms = round((time.monotonic() - entry._monotonic) * 1000, 3)
            entry.finished = _now()
            entry.status, entry.rows, entry.bytes = status, rows, bytes_out
            entry.error = _truncate(error, MAX_SQL_CHARS)
            entry.fragments = [(s, _truncate(q, MAX_FRAGMENT_SQL_CHARS) or "") for s, q in list(entry.fragments)]
            self._running.pop(entry.id, None)
            self._done.append(entry)

    def refused(self, record_id: str, principal: Any, sql: str, client: str | None, status: str, error: str) -> None:
        """A statement refused (``denied``) or failed (``error``) while being planned."""
        moment = _now()
        entry = QueryEntry(record_id, moment, _name(principal), client, _truncate(sql, MAX_SQL_CHARS) or "", (),
                           status=status, finished=moment, duration_ms=0.0, error=_truncate(error, MAX_SQL_CHARS))
        with self._lock:
            self._done.append(entry)

    # --- read ---------------------------------------------------------------------------------

    def entries(
        self,
        principal: str | None = None,
        statuses: Sequence[str] = (),
        product: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[QueryEntry]:
        """Snapshots of the queries matching every filter given, newest first (running ones by
        their start): ``principal`` a name, ``statuses`` any of ``STATUSES``, ``product`` a
        product id read, ``since`` started at or after."""
        self._restore()
        with self._lock:
            found = [
                e for e in (*self._done, *self._running.values())
                if (principal is None or e.principal == principal)
                and (not statuses or e.status in statuses)
                and (product is None or e.reads(product))
                and (since is None or e.started >= since)
            ]
            found.sort(key=lambda e: e.started, reverse=True)
            return [e._copy() for e in (found if limit is None else found[:limit])]

    def _restore(self) -> None:
        """Load the audit log's recent queries, once, behind the ones this process recorded."""
        if self._restored:
            return
        with self._restore_lock:
            if self._restored:
                return
            from gateway.audit import read_queries

            assert self._audit_path is not None
            since = _now() - timedelta(seconds=self._restore_window)
            records = read_queries(self._audit_path, since=since)
            with self._lock:
                known = {e.id for e in self._done} | set(self._running)
                older = [e for e in (_from_audit(r, self._live) for r in records[-self.capacity:]) if e.id not in known]
                finished = sorted([*(e for e in older if e.status != "running"), *self._done], key=lambda e: e.started)
                self._done = deque(finished[-self.capacity:], maxlen=self.capacity)
                for e in older:
                    if e.status == "running":  # offline only: another process may still be running it
                        self._running.setdefault(e.id, e)
            self._restored = True


def _name(principal: Any) -> str:
    return principal if isinstance(principal, str) else getattr(principal, "name", str(principal))


def _from_audit(record: dict[str, Any], live: bool) -> QueryEntry:
    """A history entry from ``read_queries``' merged begin/complete record."""
    started = _parse_time(record.get("time")) or _now()
    principal = record.get("principal") or {}
    status = record.get("status") or "running"
    error = record.get("error")
    finished = _parse_time(record.get("completed"))
    if status == "running" and live:
        status, error = "error", STOPPED
    if status in ("denied", "error") and finished is None and error != STOPPED:
        finished = started  # refused or failed at once: there is no completion record
    entry = QueryEntry(
        id=str(record.get("id")),
        started=started,
        principal=principal.get("name", "?") if isinstance(principal, dict) else str(principal),
        client=record.get("client"),
        sql=_truncate(record.get("query") or "", MAX_SQL_CHARS) or "",
        products=tuple((str(p.get("id")), str(p.get("version"))) for p in record.get("products") or () if isinstance(p, dict)),
        status=status if status in STATUSES else "error",
        finished=finished,
        duration_ms=record.get("duration_ms") if status != "running" else None,
        rows=record.get("rows"),
        bytes=record.get("bytes"),
        cache=record.get("cache") if isinstance(record.get("cache"), str) else None,
        cache_age_seconds=record.get("age_seconds"),
        fragment_cache={str(k): str(v) for k, v in (record.get("fragment_cache") or {}).items()}
        if isinstance(record.get("fragment_cache"), dict) else {},
        fragments=[(str(f.get("source")), _truncate(str(f.get("sql")), MAX_FRAGMENT_SQL_CHARS) or "")
                   for f in record.get("fragments") or () if isinstance(f, dict)],
        error=_truncate(error, MAX_SQL_CHARS),
    )
    if status == "running":
        entry._monotonic = time.monotonic() - max(0.0, (_now() - started).total_seconds())
    elif entry.duration_ms is None and finished is not None:
        entry.duration_ms = round((finished - started).total_seconds() * 1000, 3)
    return entry


# --- mesh.queries -------------------------------------------------------------------------------

COLUMNS = [
    ("query_id", "string", "The query's id (its audit record's id)"),
    ("started", "timestamptz", "When the query started"),
    ("finished", "timestamptz", "When its stream ended; NULL while running"),
    ("principal", "string", "Who ran it"),
    ("client", "string", "The client's address"),
    ("sql", "string", f"The query text (first {MAX_SQL_CHARS} characters)"),
    ("products", "string", "Product versions read, comma-separated domain.product@version"),
    ("status", "string", "running, ok, error, denied or cancelled"),
    ("duration_ms", "double", "Milliseconds it took, or has been running so far"),
    ("rows", "int64", "Rows returned"),
    ("bytes", "int64", "Bytes returned (Arrow)"),
    ("cache", "string", "Result cache: hit, stale, miss or bypass"),
    ("cache_age_seconds", "double", "Age of the answer's oldest data when served"),
    ("fragment_cache", "string", "Fragment cache per fragment of a federated query: f0=hit,f1=miss"),
    ("fragments", "string", "JSON list of {source, sql}: the SQL sent to each source"),
    ("error", "string", "Why it failed or was refused"),
]


def to_table(entries: Sequence[QueryEntry]) -> pa.Table:
    """``mesh.queries`` rows (column order as ``COLUMNS``)."""
    return pa.table({
        "query_id": pa.array([e.id for e in entries], pa.string()),
        "started": pa.array([e.started for e in entries], pa.timestamp("us", tz="UTC")),
        "finished": pa.array([e.finished for e in entries], pa.timestamp("us", tz="UTC")),
        "principal": pa.array([e.principal for e in entries], pa.string()),
        "client": pa.array([e.client for e in entries], pa.string()),
        "sql": pa.array([e.sql for e in entries], pa.string()),
        "products": pa.array([",".join(f"{p}@{v}" for p, v in e.products) for e in entries], pa.string()),
        "status": pa.array([e.status for e in entries], pa.string()),
        "duration_ms": pa.array([e.elapsed_ms() for e in entries], pa.float64()),
        "rows": pa.array([e.rows for e in entries], pa.int64()),
        "bytes": pa.array([e.bytes for e in entries], pa.int64()),
        "cache": pa.array([e.cache for e in entries], pa.string()),
        "cache_age_seconds": pa.array([e.cache_age_seconds for e in entries], pa.float64()),
        "fragment_cache": pa.array([",".join(f"{k}={v}" for k, v in e.fragment_cache.items()) or None for e in entries],
                                   pa.string()),
        "fragments": pa.array([json.dumps([{"source": s, "sql": q} for s, q in e.fragments]) for e in entries], pa.string()),
        "error": pa.array([e.error for e in entries], pa.string()),
    })


@system_product("queries", "Recent queries of this gateway, running ones included: who ran what, on which "
                "products, how long it took, rows, bytes, cache and the SQL sent to each source. A principal "
                "sees only its own queries unless it has role admin.", COLUMNS)
def queries(scope: SystemScope) -> pa.Table:
    principal = None if is_admin(scope.principal) else _name(scope.principal)
    return to_table(scope.service.history.entries(principal=principal))
