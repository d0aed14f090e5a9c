"""The embedded product registry: every registered version of every data product, its
lifecycle status and its quality results.

State lives in one SQLite file so the CLI, the REST API and any number of gateway processes
share it; a running gateway notices changes through a generation counter that every write
bumps, and reloads an immutable snapshot (``Catalog``) within a second.  Every write is one
SQLite transaction (WAL, ``BEGIN IMMEDIATE``): a batch of descriptors is published entirely or
not at all, even if the process is killed in the middle, and concurrent writers serialize.

Lifecycle per version: ``active`` -> ``deprecated`` (still queryable, flagged in metadata and
the audit log) -> ``retired`` (no longer queryable; a query gets NOT_FOUND saying so and what to
use instead). The rules for *when* a status may change (permissions, notice period) live in
``gateway/lifecycle.py``; this module only records changes atomically.
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from gateway.descriptor import Descriptor, validate
from gateway.errors import Conflict, InvalidDescriptor, NotFound

STATUSES = ("active", "deprecated", "retired")

PAUSE_FOR_TESTS = "MESHGATE_TEST_PAUSE"
"""Tests only: ``PHASE:FILE``; ``register`` creates FILE at PHASE (``before-transaction``: checks
done, lock not yet taken; ``in-transaction``: rows written, not committed) and waits until the
test deletes it (at most 60 s), so a test can kill it mid-transaction or order two publishers."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS product_versions (
    product_id    TEXT NOT NULL,
    version       TEXT NOT NULL,
    major         INTEGER NOT NULL,
    status        TEXT NOT NULL DEFAULT 'active',
    descriptor    TEXT NOT NULL,
    base_dir      TEXT,
    registered_at REAL NOT NULL,
    PRIMARY KEY (product_id, version)
);
CREATE TABLE IF NOT EXISTS registry_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO registry_meta VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS lifecycle_events (
    product_id TEXT NOT NULL,
    version    TEXT NOT NULL,
    status     TEXT NOT NULL,
    at         REAL NOT NULL,
    principal  TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS quality_checks (
    product_id TEXT NOT NULL,
    version    TEXT NOT NULL,
    checked_at REAL NOT NULL,
    score      REAL NOT NULL,
    results    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quality_checks_by_product ON quality_checks (product_id, checked_at);
"""

# Columns added after the first release; added to older registry files when they are opened.
_ADDED_COLUMNS = {
    "published_by": "TEXT",
    "deprecated_at": "REAL",
    "retired_at": "REAL",
    "status_reason": "TEXT NOT NULL DEFAULT ''",
    "replaced_by": "TEXT NOT NULL DEFAULT ''",
}


@dataclass(frozen=True)
class VersionRecord:
    """One registered version with its lifecycle: what ``product versions`` lists."""

    descriptor: Descriptor
    status: str  # active | deprecated | retired
    registered_at: float
    published_by: str | None = None
    deprecated_at: float | None = None
    retired_at: float | None = None
    reason: str = ""
    replaced_by: str = ""

    @property
    def version(self) -> str:
        return self.descriptor.version

    def note(self) -> str:
        """A one-line human description of a deprecated or retired version."""
        if self.status == "active":
            return ""
        at = self.retired_at if self.status == "retired" else self.deprecated_at
        text = f"{self.status} since {_day(at)}" if at else self.status
        if self.reason:
            text += f": {self.reason}"
        if self.replaced_by:
            text += f"; use {self.replaced_by} instead"
        return text


@dataclass(frozen=True)
class Catalog:
    """An immutable view of the registry at one generation; what one query plans against."""

    generation: int
    versions: dict[str, tuple[Descriptor, ...]]  # product_id -> queryable (active, deprecated) versions, newest first
    deprecated: Mapping[tuple[str, str], VersionRecord] = field(default_factory=dict)  # (product_id, version)
    retired: Mapping[str, Mapping[int, VersionRecord]] = field(default_factory=dict)  # product_id -> major -> newest

    def products(self) -> list[Descriptor]:
        """The newest version of every product, sorted by id."""
        return [self.versions[pid][0] for pid in sorted(self.versions)]

    def majors(self, product_id: str) -> list[Descriptor]:
        """The newest version of each queryable major of a product, newest major first."""
        seen: dict[int, Descriptor] = {}
        for d in self.versions.get(product_id, ()):
            seen.setdefault(d.major, d)
        return list(seen.values())

    def domains(self) -> list[str]:
        return sorted({d.domain for versions in self.versions.values() for d in versions})

    def deprecation(self, descriptor: Descriptor) -> VersionRecord | None:
        """The deprecation record of a queryable version, None when it is active."""
        return self.deprecated.get((descriptor.product_id, descriptor.version))

    def resolve(self, domain: str, name: str) -> Descriptor:
        """``domain.name`` is the newest non-retired version; ``domain."name@2"`` pins major 2.
        A retired product or major is NOT_FOUND with when it was retired and what to use instead."""
        base, _, pin = name.partition("@")
        product_id = f"{domain}.{base}"
        versions = self.versions.get(product_id)
        if pin and not pin.isdigit():
            raise NotFound(f"'{domain}.\"{name}\"': a pinned version is written name@MAJOR, e.g. {base}@1")
        if not versions:
            retired = self.retired.get(product_id)
            if retired:
                newest = retired[max(retired)]
                raise NotFound(f"data product '{product_id}' was retired ({newest.note()}); it is no longer queryable")
            raise NotFound(f"unknown data product '{domain}.{name}'{self._suggest(product_id)}")
        if not pin:
            return versions[0]
        for d in versions:
            if d.major == int(pin):
                return d
        retired_major = self.retired.get(product_id, {}).get(int(pin))
        newest = versions[0]
        instead = f'use {product_id} (major {newest.major}) or {domain}."{base}@{newest.major}"'
        if retired_major is not None:
            hint = "" if retired_major.replaced_by else f"; {instead}"
            raise NotFound(f"major version {pin} of data product '{product_id}' was retired ({retired_major.note()}){hint}")
        majors = ", ".join(f"@{d.major}" for d in self.majors(product_id))
        raise NotFound(f"data product '{product_id}' has no active major version {pin} (active: {majors})")

    def including(self, descriptors: Iterable[Descriptor]) -> Catalog:
        """This catalog with ``descriptors`` as queryable versions too: a batch being published, so
        its derived products can be checked over inputs published with them."""
        versions = {pid: list(found) for pid, found in self.versions.items()}
        for d in descriptors:
            versions[d.product_id] = [v for v in versions.get(d.product_id, []) if v.version != d.version] + [d]
        return replace(self, versions={pid: tuple(sorted(found, key=lambda v: v.version_key, reverse=True))
                                       for pid, found in versions.items()})

    def _suggest(self, product_id: str) -> str:
        close = difflib.get_close_matches(product_id, list(self.versions), n=3, cutoff=0.5)
        if not close:
            domain = product_id.split(".")[0]
            close = [pid for pid in self.versions if pid.startswith(domain + ".")][:3]
        return f"; did you mean {', '.join(close)}?" if close else ""


class Registry:
    """The SQLite-backed store; safe to use from many threads (a connection per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate(self._connect())
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._descriptors: dict[tuple[str, str, str | None], Descriptor] = {}
        self._checked_at = 0.0

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Create or upgrade the tables, writing only when something is missing: opening an
        up-to-date registry must not wait for the write lock another publisher holds."""
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        if not {"product_versions", "registry_meta", "lifecycle_events", "quality_checks", "quality_checks_by_product"} <= tables:
            conn.executescript(_SCHEMA)
        present = {row[1] for row in conn.execute("PRAGMA table_info(product_versions)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                try:
                    conn.execute(f"ALTER TABLE product_versions ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as err:  # another process added it first
                    if "duplicate column" not in str(err):
                        raise

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed version survives a power cut
            self._local.conn = conn
        return conn

    def _write(self) -> "_Transaction":
        return _Transaction(self._connect())

    # --- writes ---------------------------------------------------------------------------------

    def register(
        self,
        descriptors: list[Descriptor],
        expected: Mapping[str, Iterable[str]] | None = None,
        published_by: str | None = None,
    ) -> list[tuple[str, str, str]]:
        """Publish descriptors atomically; returns (product_id, version, 'registered'|'unchanged').

        Re-registering an identical version is a no-op; the same version with different content
        is refused (versions are immutable: bump the version instead). A version of a retired
        major is refused; one of a deprecated major is registered deprecated too.

        ``expected`` maps product ids to the versions the caller's checks (compatibility) were
        made against; if another publisher changed one of those products since, nothing is
        registered and ``Conflict`` is raised, so checks and publication serialize.
        """
        seen: set[tuple[str, str]] = set()
        for d in descriptors:
            key = (d.product_id, d.version)
            if key in seen:
                raise InvalidDescriptor(d.product_id, [f"version {d.version} given twice in one registration"])
            seen.add(key)
        if any(d.derived for d in descriptors):
            from gateway.lineage import check_derived  # lineage needs the planner, which needs this module

            check_derived(self._load(self.generation()), descriptors)  # inputs exist, no cycle
        outcome: list[tuple[str, str, str]] = []
        _pause_for_tests("before-transaction")
        with self._write() as conn:
            bodies = {(d.product_id, d.version): json.dumps(d.raw, sort_keys=True) for d in descriptors}
            for product_id, versions in (expected or {}).items():
                current = {v for (v,) in conn.execute("SELECT version FROM product_versions WHERE product_id=?", (product_id,))}
                wanted = set(versions)
                if current == wanted:
                    continue
                ours = [d for d in descriptors if d.product_id == product_id]
                already = all(
                    conn.execute("SELECT 1 FROM product_versions WHERE product_id=? AND version=? AND descriptor=?",
                                 (d.product_id, d.version, bodies[(d.product_id, d.version)])).fetchone()
                    for d in ours
                )
                if not (ours and already and current - wanted <= {d.version for d in ours}):
                    added = ", ".join(sorted(current - wanted)) or "none"
                    removed = ", ".join(sorted(wanted - current)) or "none"
                    raise Conflict(
                        f"{product_id} changed while this registration was being checked (versions registered "
                        f"meanwhile: {added}; gone: {removed}); nothing was registered: run the registration again "
                        "to check against the registry as it is now"
                    )
            now = time.time()
            for d in descriptors:
                body = bodies[(d.product_id, d.version)]
                row = conn.execute(
                    "SELECT descriptor FROM product_versions WHERE product_id=? AND version=?",
                    (d.product_id, d.version),
                ).fetchone()
                if row is not None:
                    if row[0] != body:
                        raise InvalidDescriptor(
                            d.product_id,
                            [f"metadata.version: {d.version} is already registered with different content; "
                             "versions are immutable, bump the version"],
                        )
                    outcome.append((d.product_id, d.version, "unchanged"))
                    continue
                status, deprecated_at, reason, replaced_by = self._major_status(conn, d)
                conn.execute(
                    "INSERT INTO product_versions (product_id, version, major, status, descriptor, base_dir, registered_at,"
                    " published_by, deprecated_at, status_reason, replaced_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (d.product_id, d.version, d.major, status, body, str(d.base_dir) if d.base_dir else None, now,
                     published_by, deprecated_at, reason, replaced_by),
                )
                outcome.append((d.product_id, d.version, "registered"))
            _pause_for_tests("in-transaction")
            if any(state == "registered" for *_, state in outcome):
                _bump(conn)
        return outcome

    @staticmethod
    def _major_status(conn: sqlite3.Connection, d: Descriptor) -> tuple[str, float | None, str, str]:
        """The status a new version inherits from its major: retired refuses, deprecated carries over."""
        rows = conn.execute(
            "SELECT status, deprecated_at, status_reason, replaced_by FROM product_versions WHERE product_id=? AND major=?",
            (d.product_id, d.major),
        ).fetchall()
        if rows and all(r[0] == "retired" for r in rows):
            raise InvalidDescriptor(
                f"{d.product_id} {d.version}",
                [f"metadata.version: major version {d.major} of {d.product_id} is retired; publish a new major "
                 f"({_next_major(conn, d.product_id)}.0.0)"],
            )
        if rows and all(r[0] == "deprecated" for r in rows):
            newest = max(rows, key=lambda r: r[1] or 0)
            return "deprecated", newest[1], newest[2] or "", newest[3] or ""
        return "active", None, "", ""

    def set_status(
        self,
        product_id: str,
        versions: Iterable[str],
        status: str,
        principal: str,
        reason: str = "",
        replaced_by: str = "",
        at: float | None = None,
    ) -> list[str]:
        """Move ``versions`` to ``status`` in one transaction, recording who, when and why;
        returns the versions that changed (those already in ``status`` are left as they are)."""
        if status not in STATUSES[1:]:
            raise ValueError(f"status must be deprecated or retired, not {status!r}")
        at = time.time() if at is None else at
        changed = []
        with self._write() as conn:
            for version in versions:
                row = conn.execute("SELECT status FROM product_versions WHERE product_id=? AND version=?",
                                   (product_id, version)).fetchone()
                if row is None:
                    raise NotFound(f"{product_id} has no version {version}")
                if row[0] == status or row[0] == "retired":
                    continue
                column = "deprecated_at" if status == "deprecated" else "retired_at"
                conn.execute(
                    f"UPDATE product_versions SET status=?, {column}=?, status_reason=CASE WHEN ?='' THEN status_reason ELSE ? END,"
                    " replaced_by=CASE WHEN ?='' THEN replaced_by ELSE ? END WHERE product_id=? AND version=?",
                    (status, at, reason, reason, replaced_by, replaced_by, product_id, version),
                )
                conn.execute("INSERT INTO lifecycle_events VALUES (?, ?, ?, ?, ?, ?)", (product_id, version, status, at, principal, reason))
                changed.append(version)
            if changed:
                _bump(conn)
        return changed

    def record_quality(self, product_id: str, version: str, results: Iterable[Any], checked_at: float | None = None) -> float:
        """Store one run of a version's quality rules; returns its quality score.

        The score is the share of rules that passed, every rule counting the same whatever its
        severity (a failing ``warning`` lowers it as much as a failing ``error``; severity only
        decides whether publication is blocked); a rule that could not run counts as failing.
        No rules: 1.0. ``results`` are ``gateway.quality.RuleResult`` or their ``to_json()`` dicts.
        """
        from gateway.quality import score

        rows = [r if isinstance(r, dict) else r.to_json() for r in results]
        value = score(rows)
        with self._write() as conn:
            conn.execute("INSERT INTO quality_checks VALUES (?, ?, ?, ?, ?)",
                         (product_id, version, time.time() if checked_at is None else checked_at, value, json.dumps(rows)))
        return value

    # --- reads ----------------------------------------------------------------------------------

    def latest_quality(self, product_id: str) -> tuple[float, str, float, list[dict[str, Any]]] | None:
        """(score, version, checked_at, results) of the product's most recent quality run, None
        when its rules never ran (results: one dict per rule, as ``RuleResult.to_json()``)."""
        row = self._connect().execute(
            "SELECT score, version, checked_at, results FROM quality_checks WHERE product_id=? "
            "ORDER BY checked_at DESC, rowid DESC LIMIT 1", (product_id,),
        ).fetchone()
        if row is None:
            return None
        return float(row[0]), row[1], float(row[2]), json.loads(row[3])

    def quality_generation(self) -> int:
        """Changes only when a quality run is recorded: lets bulk readers skip re-reading."""
        return int(self._connect().execute("SELECT coalesce(max(rowid), 0) FROM quality_checks").fetchone()[0])

    def latest_quality_scores(self) -> dict[str, float]:
        """Every product's most recent quality score, in one read (for ranking)."""
        rows = self._connect().execute(
            "SELECT product_id, score FROM quality_checks AS q WHERE rowid = (SELECT rowid FROM quality_checks "
            "WHERE product_id = q.product_id ORDER BY checked_at DESC, rowid DESC LIMIT 1)"
        ).fetchall()
        return {pid: float(score) for pid, score in rows}

    def generation(self) -> int:
        return int(self._connect().execute("SELECT value FROM registry_meta WHERE key='generation'").fetchone()[0])

    def catalog(self, max_age: float = 0.5) -> Catalog:
        """The current snapshot, re-checking the generation at most every ``max_age`` seconds."""
        now = time.monotonic()
        catalog = self._catalog
        if catalog is not None and now - self._checked_at < max_age:
            return catalog
        generation = self.generation()
        with self._lock:
            if self._catalog is None or self._catalog.generation != generation:
                self._catalog = self._load(generation)
            self._checked_at = now
            return self._catalog

    def _load(self, generation: int) -> Catalog:
        versions: dict[str, list[Descriptor]] = {}
        deprecated: dict[tuple[str, str], VersionRecord] = {}
        retired: dict[str, dict[int, VersionRecord]] = {}
        for record in self._records(""):
            d = record.descriptor
            if record.status == "retired":
                newest = retired.setdefault(d.product_id, {}).get(d.major)
                if newest is None or newest.descriptor.version_key < d.version_key:
                    retired[d.product_id][d.major] = record
                continue
            versions.setdefault(d.product_id, []).append(d)
            if record.status == "deprecated":
                deprecated[(d.product_id, d.version)] = record
        for product_id, majors in list(retired.items()):  # a major with a queryable version is not retired
            live = {d.major for d in versions.get(product_id, ())}
            retired[product_id] = {m: r for m, r in majors.items() if m not in live}
        return Catalog(
            generation,
            {pid: tuple(sorted(ds, key=lambda d: d.version_key, reverse=True)) for pid, ds in versions.items()},
            deprecated,
            retired,
        )

    def _parsed(self, product_id: str, body: str, base_dir: str | None) -> Descriptor:
        """A stored descriptor, validated once per process: stored versions never change, so the
        reload after a registration validates only the new rows (10,000 products: ~0.1 s, not ~5 s)."""
        key = (product_id, body, base_dir)
        found = self._descriptors.get(key)
        if found is None:
            found = self._descriptors[key] = validate(json.loads(body), product_id, Path(base_dir) if base_dir else None)
        return found

    def versions(self, product_id: str) -> list[Descriptor]:
        """Every registered version of a product, whatever its status, newest first: what a new
        version's compatibility is checked against."""
        return [r.descriptor for r in self.records(product_id)]

    def records(self, product_id: str) -> list[VersionRecord]:
        """Every registered version of a product with its lifecycle, newest first."""
        return sorted(self._records(product_id), key=lambda r: r.descriptor.version_key, reverse=True)

    def product_ids(self) -> list[str]:
        """Every product ever registered, retired ones included, sorted."""
        return [pid for (pid,) in self._connect().execute("SELECT DISTINCT product_id FROM product_versions ORDER BY 1")]

    def _records(self, product_id: str) -> list[VersionRecord]:
        sql = ("SELECT product_id, descriptor, base_dir, status, registered_at, published_by, deprecated_at, retired_at,"
               " status_reason, replaced_by FROM product_versions")
        rows = self._connect().execute(sql + (" WHERE product_id = ?" if product_id else ""), (product_id,) if product_id else ()).fetchall()
        return [
            VersionRecord(self._parsed(pid, body, base_dir), status, registered_at,
                          published_by, deprecated_at, retired_at, reason or "", replaced_by or "")
            for pid, body, base_dir, status, registered_at, published_by, deprecated_at, retired_at, reason, replaced_by in rows
        ]


class _Transaction:
    """``with registry._write() as conn``: BEGIN IMMEDIATE (the write lock, so writers
    serialize), COMMIT on success, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _bump(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE registry_meta SET value = value + 1 WHERE key = 'generation'")


def _next_major(conn: sqlite3.Connection, product_id: str) -> int:
    return int(conn.execute("SELECT max(major) FROM product_versions WHERE product_id=?", (product_id,)).fetchone()[0] or 0) + 1


def _pause_for_tests(phase: str) -> None:
    setting = os.environ.get(PAUSE_FOR_TESTS, "")
    wanted, _, marker = setting.partition(":")
    if wanted != phase or not marker:
        return
    path = Path(marker)
    path.write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _day(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
