"""A small mesh for the cache's freshness tests: two SQLite files, so a join is federated into
two fragments, and a controllable clock.

- ``fresh.events``: SLA 1h on ``updated_at`` (its newest row dates the data: the watermark is
  ``max(updated_at)``); the newest event is 10 minutes old at ``T0``.
- ``fresh.kinds``: SLA as the test asks (30m by default), no freshness column (entries age from
  their fetch; the watermark is the file's modification time).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from gateway.audit import AuditLog
from gateway.cache import ResultCache, SharedTier
from gateway.descriptor import Descriptor, validate
from gateway.registry import Registry
from gateway.service import GatewayService
from policies import ANONYMOUS
from policies.engine import PolicyEngine
from tests.mesh import OPEN_POLICIES, Clock

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()
JOIN = ("SELECT k.label, count(*) AS n FROM fresh.events e JOIN fresh.kinds k ON k.kind = e.kind "
        "GROUP BY k.label ORDER BY k.label")
KINDS = "SELECT count(*) AS n FROM fresh.kinds"


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")


def product(name: str, uri: Path, columns: list[dict[str, Any]], sla: dict[str, str], version: str = "1.0.0") -> Descriptor:
    return validate({
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": name, "domain": "fresh", "owner": "t@example.com", "version": version},
        "spec": {"source": {"connector": "sqlite", "uri": str(uri), "table": name}, "schema": columns, "sla": sla},
    })


class Mesh:
    def __init__(self, tmp: Path, kinds_sla: dict[str, str]) -> None:
        self.events_db, self.kinds_db = tmp / "events.sqlite", tmp / "kinds.sqlite"
        with sqlite3.connect(self.events_db) as db:
            db.execute("CREATE TABLE events (event_id INTEGER, kind TEXT, updated_at TEXT)")
            db.executemany("INSERT INTO events VALUES (?, ?, ?)",
                           [(i, "ab"[i % 2], iso(T0 - 600 - 60 * i)) for i in range(6)])
        with sqlite3.connect(self.kinds_db) as db:
            db.execute("CREATE TABLE kinds (kind TEXT, label TEXT)")
            db.executemany("INSERT INTO kinds VALUES (?, ?)", [("a", "alpha"), ("b", "beta"), ("c", "gamma")])
        self.events = product("events", self.events_db, [
            {"name": "event_id", "type": "int64"}, {"name": "kind", "type": "string"},
            {"name": "updated_at", "type": "timestamp"},
        ], {"freshness": "1h", "freshness_column": "updated_at"})
        self.kinds = product("kinds", self.kinds_db, [{"name": "kind", "type": "string"}, {"name": "label", "type": "string"}],
                             kinds_sla)
        self.registry = Registry(tmp / f"registry-{uuid.uuid4().hex[:6]}.db")
        self.registry.register([self.events, self.kinds])
        self.clock = Clock(T0)
        self.tmp = tmp
        self.service = self.replica()

    def replica(self, shared: SharedTier | None = None) -> GatewayService:
        """Another gateway on the same registry and clock, with a cache of its own (and ``shared``)."""
        return GatewayService(self.registry, policies=PolicyEngine.load(OPEN_POLICIES),
                              audit=AuditLog(self.tmp / f"audit-{uuid.uuid4().hex[:6]}.log"),
                              cache=ResultCache(64 * 1024**2, clock=self.clock, shared=shared))

    def run(self, sql: str, service: GatewayService | None = None, **kwargs: Any) -> tuple[pa.Table, dict[str, str], dict[str, str]]:
        """(rows, meshgate.* metadata, fragment cache status by product name) of one execution."""
        service = service or self.service
        reader = service.execute(sql, ANONYMOUS, **kwargs)
        table = reader.read_all()
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items() if k.startswith(b"meshgate.")}
        names = {r["step"].split()[1]: r["products"].split("@")[0].split(".")[1]
                 for r in self.service.explain(sql, ANONYMOUS).to_pylist() if r["step"].startswith("fragment")}
        fragments = dict(p.split("=") for p in meta.get("meshgate.fragment_cache", "").split(",") if p)
        return table, meta, {names[k]: v for k, v in fragments.items()}

    def sent(self, service: GatewayService | None = None) -> list[str]:
        """The sources the last execution asked (by file name)."""
        return sorted(source.rsplit("/", 1)[-1] for source, _ in (service or self.service).recent[-1].sent)

    def at(self, offset: float) -> None:
        self.clock.now = T0 + offset


