"""The embedded product registry: every registered version of every data product.

State lives in one SQLite file so the CLI, the REST API and any number of gateway processes
share it; a running gateway notices changes through a generation counter that every write
bumps, and reloads an immutable snapshot (``Catalog``) within a second.  Registration of a
batch of descriptors is one transaction: all are published or none is.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.descriptor import Descriptor, validate
from gateway.errors import InvalidDescriptor, NotFound

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
"""


@dataclass(frozen=True)
class Catalog:
    """An immutable view of the registry at one generation; what one query plans against."""

    generation: int
    versions: dict[str, tuple[Descriptor, ...]]  # product_id -> active versions, newest first

    def products(self) -> list[Descriptor]:
        """The newest version of every product, sorted by id."""
        return [self.versions[pid][0] for pid in sorted(self.versions)]

    def majors(self, product_id: str) -> list[Descriptor]:
        """The newest version of each active major of a product, newest major first."""
        seen: dict[int, Descriptor] = {}
        for d in self.versions.get(product_id, ()):
            seen.setdefault(d.major, d)
        return list(seen.values())

    def domains(self) -> list[str]:
        return sorted({d.domain for versions in self.versions.values() for d in versions})

    def resolve(self, domain: str, name: str) -> Descriptor:
        """``domain.name`` is the newest active version; ``domain."name@2"`` pins major 2."""
        base, _, pin = name.partition("@")
        product_id = f"{domain}.{base}"
        versions = self.versions.get(product_id)
        if not versions:
            raise NotFound(f"unknown data product '{domain}.{name}'{self._suggest(product_id)}")
        if not pin:
            return versions[0]
        if not pin.isdigit():
            raise NotFound(f"'{domain}.\"{name}\"': a pinned version is written name@MAJOR, e.g. {base}@1")
        for d in versions:
            if d.major == int(pin):
                return d
        majors = ", ".join(f"@{d.major}" for d in self.majors(product_id))
        raise NotFound(f"data product '{product_id}' has no active major version {pin} (active: {majors})")

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
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._descriptors: dict[tuple[str, str, str | None], Descriptor] = {}
        self._checked_at = 0.0

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    # --- writes ---------------------------------------------------------------------------------

    def register(self, descriptors: list[Descriptor]) -> list[tuple[str, str, str]]:
        """Publish descriptors atomically; returns (product_id, version, 'registered'|'unchanged').

        Re-registering an identical version is a no-op; the same version with different content
        is refused (versions are immutable: bump the version instead).
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
        conn = self._connect()
        outcome: list[tuple[str, str, str]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for d in descriptors:
                body = json.dumps(d.raw, sort_keys=True)
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
                conn.execute(
                    "INSERT INTO product_versions (product_id, version, major, descriptor, base_dir, registered_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (d.product_id, d.version, d.major, body, str(d.base_dir) if d.base_dir else None, time.time()),
                )
                outcome.append((d.product_id, d.version, "registered"))
            if any(state == "registered" for *_, state in outcome):
                conn.execute("UPDATE registry_meta SET value = value + 1 WHERE key = 'generation'")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcome

    # --- reads ----------------------------------------------------------------------------------

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
        rows = self._connect().execute(
            "SELECT product_id, descriptor, base_dir FROM product_versions WHERE status = 'active'"
        ).fetchall()
        versions: dict[str, list[Descriptor]] = {}
        for product_id, body, base_dir in rows:
            versions.setdefault(product_id, []).append(self._parsed(product_id, body, base_dir))
        return Catalog(
            generation,
            {pid: tuple(sorted(ds, key=lambda d: d.version_key, reverse=True)) for pid, ds in versions.items()},
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
        rows = self._connect().execute(
            "SELECT descriptor, base_dir FROM product_versions WHERE product_id = ?", (product_id,)
        ).fetchall()
        found = [validate(json.loads(body), product_id, Path(base_dir) if base_dir else None) for body, base_dir in rows]
        return sorted(found, key=lambda d: d.version_key, reverse=True)
