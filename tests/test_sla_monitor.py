"""The SLA monitor against real sources: a SQLite file whose freshness column the test advances,
PostgreSQL tables (one fine, one slow, one on a server that is not there), a real webhook
receiver on a local socket, and a clock the test controls."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest
import yaml

from gateway import metrics
from gateway.alerts import AlertSink
from gateway.descriptor import Sla, load_file
from gateway.registry import Registry
from gateway.sla_monitor import SlaMonitor, latest, store_for
from gateway.sources import SourceManager

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc).timestamp()


class Clock:
    """The monitor's clock: Unix seconds the test moves forward."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Receiver:
    """A real HTTP server on a free local port that keeps every JSON body POSTed to it."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body) | {"_content_type": self.headers["Content-Type"]})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/sla"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def stamp(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def sqlite_product(folder: Path, rows: int = 10, newest: float = T0 - 600, **sla: Any) -> Path:
    """``shop.orders`` in a SQLite file: ``rows`` orders, the newest updated at ``newest``."""
    db = folder / "orders.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL, updated_at TEXT)")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                    [(i, 10.0 + i, stamp(newest - 60 * (rows - i))) for i in range(1, rows + 1)])
    con.commit()
    con.close()
    doc = {
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": "orders", "domain": "shop", "owner": "shop@example.com", "version": "1.0.0"},
        "spec": {
            "source": {"connector": "sqlite", "uri": "orders.sqlite", "table": "orders"},
            "schema": [{"name": "id", "type": "int64", "required": True}, {"name": "amount", "type": "double"},
                       {"name": "updated_at", "type": "timestamp"}],
            "sla": {"freshness": "1h", "freshness_column": "updated_at", "availability": 99, "completeness": 99,
                    "quality_threshold": 1.0, "monitor_every": "5m", **sla},
            "quality": [{"name": "amount_positive", "rule": "amount > 0", "severity": "warning"},
                        {"name": "id_present", "rule": "id IS NOT NULL"}],
        },
    }
    path = folder / "orders.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def execute_sqlite(folder: Path, sql: str, *args: Any) -> None:
    con = sqlite3.connect(folder / "orders.sqlite")
    con.execute(sql, args)
    con.commit()
    con.close()


def pg_product(folder: Path, name: str, uri: str, table: str | None = None, query: str | None = None, **sla: Any) -> Path:
    source: dict[str, Any] = {"connector": "postgres", "uri": uri}
    source.update({"table": table} if table else {"query": query})
    doc = {
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": name, "domain": "ops", "owner": "ops@example.com", "version": "1.0.0"},
        "spec": {"source": source, "schema": [{"name": "id", "type": "int64"}, {"name": "seen_at", "type": "timestamptz"}],
                 "sla": {"freshness": "1h", "freshness_column": "seen_at", "availability": 99.9, **sla}},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def new_monitor(registry: Registry, clock: Clock, webhook: str | None = None, **kwargs: Any) -> tuple[SlaMonitor, SourceManager]:
    sources = SourceManager()
    alerts = AlertSink(webhook, retry_delay=0.05)
    return SlaMonitor(registry, sources.connector_for, alerts, clock=clock, **kwargs), sources


def test_targets_come_from_the_descriptor(tmp_path: Path) -> None:
    d = load_file(sqlite_product(tmp_path, monitor_every="30s"))
    assert d.sla == Sla(3600.0, "updated_at", 99.0, 99.0, 1.0, 30.0)
    bare = load_file(pg_product(tmp_path, "bare", "postgresql://x@127.0.0.1/x", table="t"))
    assert bare.sla.monitor_every == 300.0 and bare.sla.completeness is None


def test_freshness_breach_fires_once_and_resolves_with_webhook(tmp_path: Path, receiver: Receiver) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.register([load_file(sqlite_product(tmp_path))])
    clock = Clock()
    monitor, sources = new_monitor(registry, clock, receiver.url)
    breaches_before = metric("product_sla_freshness_breaches_total", product_id="shop.orders")
    try:
        [status] = monitor.check_now()
        assert status.ok and status.available and status.data_age_seconds == 600.0
        assert status.freshness_basis == "max(updated_at)" and status.quality_score == 1.0
        assert status.availability == 100.0 and status.completeness is None  # no earlier count yet
        assert metric("product_data_age_seconds", product_id="shop.orders") == 600.0

        clock.advance(3600)  # newest data now 1h 10m old: breached
        [status] = monitor.check_now()
        assert set(status.breaches) == {"freshness"} and "1h 10m old" in status.breaches["freshness"]
        clock.advance(300)  # still breached: no second alert
        [status] = monitor.check_now()
        assert set(status.breaches) == {"freshness"}
        assert metric("product_sla_freshness_breaches_total", product_id="shop.orders") == breaches_before + 1
        assert metric("product_sla_breached", product_id="shop.orders", condition="freshness") == 1

        execute_sqlite(tmp_path, "INSERT INTO orders VALUES (100, 5.0, ?)", stamp(clock.now - 30))  # new data arrives
        clock.advance(300)
        [status] = monitor.check_now()
        assert status.ok and status.data_age_seconds == 330.0
        assert metric("product_sla_breached", product_id="shop.orders", condition="freshness") == 0
        bodies = receiver.wait_for(2)
    finally:
        monitor.stop()
        sources.close()
    assert [(b["status"], b["condition"]) for b in bodies] == [("firing", "freshness"), ("resolved", "freshness")]
    firing = bodies[0]
    assert firing["product_id"] == "shop.orders" and firing["version"] == "1.0.0" and firing["source"] == "meshgate"
    assert firing["observed"] == 4200.0 and firing["threshold"] == 3600.0
    assert firing["checked_at"] == "2026-03-01T13:00:00Z" and firing["_content_type"] == "application/json"
    assert firing["text"].startswith("[meshgate] FIRING shop.orders freshness: data is 1h 10m old")
    history = store_for(registry).history("shop.orders")
    assert [sorted(s.breaches) for s in history] == [[], ["freshness"], ["freshness"], []]  # newest first
    assert latest(registry, "shop.orders") == history[0] and latest(registry, "nope.nothing") is None


def test_completeness_and_quality_breaches(tmp_path: Path, receiver: Receiver) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.register([load_file(sqlite_product(tmp_path, rows=100))])
    clock = Clock()
    monitor, sources = new_monitor(registry, clock, receiver.url)
    failures_before = metric("product_validation_failures_total", product_id="shop.orders", rule="amount_positive")
    try:
        [first] = monitor.check_now()
        assert first.row_count == 100 and first.completeness is None and first.ok
        execute_sqlite(tmp_path, "DELETE FROM orders WHERE id <= 10")  # a partial reload lost 10 rows
        execute_sqlite(tmp_path, "UPDATE orders SET amount = -1 WHERE id = 50")  # and one is wrong
        clock.advance(300)
        [status] = monitor.check_now()
        assert status.row_count == 90 and status.completeness == 90.0
        # the declared rules and the contract's (id required): one of three fails
        assert [(q["name"], q["passed"]) for q in status.quality] == [
            ("amount_positive", False), ("id_present", True), ("id.required", True)]
        assert status.quality_score == 0.6667
        score, version, checked_at, results = registry.latest_quality("shop.orders")  # recorded through the registry
        assert (round(score, 4), version, checked_at) == (0.6667, "1.0.0", status.checked_at)
        assert [r["name"] for r in results if not r["passed"]] == ["amount_positive"]
        assert set(status.breaches) == {"completeness", "quality"}
        assert "failing: amount_positive" in status.breaches["quality"]
        assert metric("product_quality_score", product_id="shop.orders") == 0.6667
        assert metric("product_completeness_ratio", product_id="shop.orders") == 0.9
        assert metric("product_validation_failures_total", product_id="shop.orders", rule="amount_positive") == failures_before + 1
        clock.advance(300)
        [status] = monitor.check_now()  # 90 rows against 90: complete again; the bad row stays
        assert status.completeness == 100.0 and set(status.breaches) == {"quality"}
        bodies = receiver.wait_for(3)
    finally:
        monitor.stop()
        sources.close()
    assert sorted((b["status"], b["condition"]) for b in bodies) == [
        ("firing", "completeness"), ("firing", "quality"), ("resolved", "completeness")]
    quality = next(b for b in bodies if b["condition"] == "quality")
    assert quality["observed"] == 0.6667 and quality["threshold"] == 1.0


def test_background_monitor_survives_slow_dead_and_broken_sources(tmp_path: Path, make_pg_database) -> None:  # noqa: ANN001
    uri = make_pg_database("sla")
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE events (id bigint, seen_at timestamptz)")
        cur.execute("INSERT INTO events VALUES (1, now() - interval '10 minutes'), (2, now() - interval '5 minutes')")
    conn.close()
    registry = Registry(tmp_path / "registry.db")
    registry.register([
        load_file(sqlite_product(tmp_path, newest=time.time() - 60, monitor_every="1s")),
        load_file(pg_product(tmp_path, "events", uri, table="events", monitor_every="1s")),
        load_file(pg_product(tmp_path, "slow", uri, query="SELECT id, seen_at, pg_sleep(3) AS z FROM events", monitor_every="1s")),
        load_file(pg_product(tmp_path, "dead", "postgresql://nobody@127.0.0.1:1/none", table="events", monitor_every="1s")),
        load_file(pg_product(tmp_path, "secret", "postgresql://u:${SLA_TEST_UNSET_PASSWORD}@127.0.0.1/x", table="t",
                             monitor_every="1s")),
    ])
    sources = SourceManager()
    monitor = SlaMonitor(registry, sources.connector_for, AlertSink(), check_timeout=1.0, tick=0.05)
    started = time.monotonic()
    monitor.start()
    try:
        store = store_for(registry)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = store.latest_all()
            if len(found) == 5 and len(store.history("shop.orders")) >= 2 and len(store.history("ops.events")) >= 2:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert monitor.running and monitor.cycle_error is None
        state = monitor.state()
    finally:
        monitor.stop()
        sources.close()
    found = store.latest_all()
    assert found["shop.orders"].ok and found["ops.events"].ok, found
    assert 290 < found["ops.events"].data_age_seconds < 400  # real clock, PostgreSQL's now()
    assert not found["ops.slow"].available and "no answer within 1 s" in found["ops.slow"].error
    assert not found["ops.dead"].available and found["ops.dead"].breaches["availability"].startswith("0.00% of")
    assert not found["ops.secret"].available and "SLA_TEST_UNSET_PASSWORD" in found["ops.secret"].error
    # the healthy products were checked again (1 s schedule) while the slow one hung
    assert elapsed < 10
    assert state["running"] and set(state["breaching"]) == {"ops.slow", "ops.dead", "ops.secret"}


def test_availability_ratio_over_the_window(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    path = sqlite_product(tmp_path, availability=75, quality_threshold=0)
    registry.register([load_file(path)])
    clock = Clock()
    monitor, sources = new_monitor(registry, clock, availability_window=3600)
    try:
        for _ in range(3):
            [status] = monitor.check_now()
            clock.advance(600)
        (tmp_path / "orders.sqlite").rename(tmp_path / "gone.sqlite")  # the source disappears
        sources.close()  # with the connections it had open
        [status] = monitor.check_now()
        assert not status.available and status.probes == (3, 4) and status.availability == 75.0 and status.ok
        clock.advance(600)
        [status] = monitor.check_now()
        assert status.probes == (3, 5) and status.availability == 60.0 and set(status.breaches) == {"availability"}
        assert metric("product_availability_ratio", product_id="shop.orders") == 0.6
        (tmp_path / "gone.sqlite").rename(tmp_path / "orders.sqlite")
        clock.advance(3600 - 600 * 2 + 1)  # the first probes leave the one-hour window
        [status] = monitor.check_now()
        assert status.available and status.probes == (1, 3)  # the two failures and this one
    finally:
        monitor.stop()
        sources.close()


def test_webhook_retries_a_failing_receiver() -> None:
    from gateway.alerts import Alert

    receiver = Receiver(fail_first=2)
    ok_before = metric("sla_alert_webhook_deliveries_total", outcome="ok")
    sink = AlertSink(receiver.url, retry_delay=0.01)
    try:
        sink.send(Alert("firing", "shop.orders", "1.0.0", "quality", "score 0.5 < 0.9", 0.5, 0.9, T0))
        sink.close()
        assert [b["condition"] for b in receiver.bodies] == ["quality"]
        assert metric("sla_alert_webhook_deliveries_total", outcome="ok") == ok_before + 1
    finally:
        receiver.close()
    with pytest.raises(ValueError, match="http"):
        AlertSink("ftp://example.com/x")


def test_product_label_is_bounded() -> None:
    label = metrics.BoundedLabel(2)
    assert [label(v) for v in ("a.x", "b.y", "c.z", "a.x", "Robert'); DROP")] == ["a.x", "b.y", "other", "a.x", "other"]
    from policies import Principal

    assert metrics.consumer_domain(Principal("a", frozenset(), {"domain": "Finance", "team": "x"})) == "finance"
    assert metrics.consumer_domain(Principal("b", frozenset(), {"team": "growth"})) == "growth"
    assert metrics.consumer_domain(Principal("c", frozenset({"owner:sales"}), {})) == "sales"
    assert metrics.consumer_domain(Principal("d", frozenset({"analyst"}), {"region": "DE"})) == "unknown"


def test_descriptor_rejects_out_of_range_targets(tmp_path: Path) -> None:
    from gateway.errors import InvalidDescriptor

    path = sqlite_product(tmp_path, availability=99.95, completeness=101, quality_threshold=95, monitor_every="often")
    with pytest.raises(InvalidDescriptor) as err:
        load_file(path)
    assert sorted(err.value.problems) == [
        "spec.sla.completeness: 101 is not between 0 and 100 (a percentage)",
        "spec.sla.monitor_every: 'often' is not a duration like 30s, 5m, 1h or 1d",
        "spec.sla.quality_threshold: 95 is not between 0 and 1 (a score)",
    ]


def test_product_consumers_come_from_the_audit_log(tmp_path: Path) -> None:
    from gateway.audit import AuditLog
    from gateway.service import GatewayService
    from gateway.usage import service_usage
    from policies import Principal
    from policies.engine import PolicyEngine
    from tests.mesh import OPEN_POLICIES

    registry = Registry(tmp_path / "registry.db")
    registry.register([load_file(sqlite_product(tmp_path))])
    service = GatewayService(registry, policies=PolicyEngine.load(OPEN_POLICIES), audit=AuditLog(tmp_path / "audit.log"))
    monitor = SlaMonitor(registry, service.sources.connector_for, AlertSink(), usage=service_usage(service))
    try:
        for name in ("ann", "ben", "ann"):
            service.execute("SELECT count(*) FROM shop.orders", Principal(name, frozenset({"analyst"}), {})).read_all()
        service_usage(service).refresh(force=True)
        monitor.cycle()
        assert metric("product_consumers", product_id="shop.orders") == 2
    finally:
        monitor.stop()
        service.close()
