"""Platform features for derived products (``source.connector: mesh``): quality gates at
publication and on demand, the SLA monitor (derived products and every active major), the
result cache bounded by the derived product's own freshness SLA, per-product metrics.

Real sources: two SQLite files (so the derived product is federated and runs through the
engine), a real CLI subprocess for ``product check``. The customers' email is masked for
everyone, so a check run as the publisher (not as the platform) would see redacted emails and
fail the derived product's ``email LIKE '%@%'`` rule.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import REGISTRY

from gateway.alerts import AlertSink
from gateway.cache import ResultCache
from gateway.descriptor import Descriptor, validate
from gateway.registry import Registry
from gateway.service import GatewayService
from gateway.sla_monitor import SlaMonitor
from gateway.source_roots import SourceRoots
from policies import Principal
from policies.engine import PolicyEngine

ROOT = Path(__file__).resolve().parents[1]
ADMIN = Principal("ada", frozenset({"admin"}))
JOIN = ("SELECT o.id, c.email, o.amount FROM sales.orders AS o "
        "JOIN crm.customers AS c ON c.id = o.customer_id")


def product(domain: str, name: str, source: dict[str, Any], schema: list[dict[str, Any]], version: str = "1.0.0",
            **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
            "metadata": {"name": name, "domain": domain, "owner": f"{domain}@example.com", "version": version},
            "spec": {"source": source, "schema": schema, **spec}}


def orders(folder: Path, version: str = "1.0.0") -> Descriptor:
    return validate(product("sales", "orders", {"connector": "sqlite", "uri": "shop.db", "table": "orders"}, [
        {"name": "id", "type": "int64", "required": True}, {"name": "customer_id", "type": "int64"},
        {"name": "amount", "type": "double"}], version, sla={"freshness": "1h"}), "test", folder)


def customers(folder: Path) -> Descriptor:
    return validate(product("crm", "customers", {"connector": "sqlite", "uri": "crm.db", "table": "customers"}, [
        {"name": "id", "type": "int64", "required": True}, {"name": "email", "type": "string", "pii": True}],
        sla={"freshness": "1h"}, policies={"masks": [{"column": "email", "mask": "redact"}]}), "test", folder)


def order_emails(version: str = "1.0.0", rules: list[dict[str, str]] | None = None) -> Descriptor:
    return validate(product("analytics", "order_emails", {"connector": "mesh", "query": JOIN}, [
        {"name": "id", "type": "int64", "required": True}, {"name": "email", "type": "string"},
        {"name": "amount", "type": "double"}], version,
        quality=rules if rules is not None else [
            {"name": "email_has_at", "rule": "email LIKE '%@%'", "severity": "error"},
            {"name": "small", "rule": "amount < 100", "severity": "warning"}],
        sla={"freshness": "60s", "availability": 99}))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    with sqlite3.connect(folder / "shop.db") as conn:
        conn.execute("CREATE TABLE orders (id INTEGER NOT NULL, customer_id INTEGER, amount REAL)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(1, 1, 10.0), (2, 2, 250.0), (3, 1, 5.0)])
    with sqlite3.connect(folder / "crm.db") as conn:
        conn.execute("CREATE TABLE customers (id INTEGER NOT NULL, email TEXT)")
        conn.executemany("INSERT INTO customers VALUES (?, ?)", [(1, "ann@example.com"), (2, "bob@example.com")])
    return folder


def drop_customers(data: Path) -> None:
    """The input's source loses its table: reading it fails."""
    with sqlite3.connect(data / "crm.db") as conn:
        conn.execute("DROP TABLE customers")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(tmp_path: Path, data: Path, clock: Clock) -> Iterator[GatewayService]:
    svc = GatewayService(Registry(tmp_path / "state" / "registry.db"), policies=PolicyEngine.load(),
                         source_roots=SourceRoots.of([data]), cache=ResultCache(64 * 1024**2, clock=clock))
    yield svc
    svc.close()


def published(service: GatewayService, *descriptors: Descriptor) -> None:
    report = service.publish(list(descriptors), ADMIN)
    assert report.ok, report.failures
    service.registry.catalog(max_age=0)  # read our own write now, not within the snapshot's half second


def statuses(report) -> dict[str, str]:  # noqa: ANN001
    return {f"{c.product_id} {c.name}": c.status for c in report.checks}


def details(report) -> dict[str, str]:  # noqa: ANN001
    return {f"{c.product_id} {c.name}": c.detail for c in report.checks}


# --- quality gates at publication ---------------------------------------------------------------


def test_a_derived_products_rules_run_over_its_real_rows_at_publication(service: GatewayService, data: Path) -> None:
    report = service.publish([orders(data), customers(data), order_emails()], ADMIN)  # inputs in the same batch
    assert report.ok, report.failures
    service.registry.catalog(max_age=0)
    got = statuses(report)
    assert got["analytics.order_emails quality.email_has_at"] == "passed"  # unmasked: the platform reads it
    assert got["analytics.order_emails quality.small"] == "warning"  # 1 of 3 rows >= 100: recorded, not blocking
    assert "1 of 3 row(s)" in details(report)["analytics.order_emails quality.small"]
    assert got["analytics.order_emails quality.id.required"] == "passed"
    score, version, _, results = service.registry.latest_quality("analytics.order_emails")
    assert (round(score, 3), version) == (0.667, "1.0.0")
    assert {r["name"]: r["failing_rows"] for r in results} == {"email_has_at": 0, "small": 1, "id.required": 0}
    # the publisher itself sees the masked value, which the rule would have failed on
    emails = service.execute("SELECT email FROM analytics.order_emails", ADMIN).read_all().column("email").to_pylist()
    assert emails and not any("@" in e for e in emails)


def test_a_failing_error_rule_of_a_derived_product_refuses_it(service: GatewayService, data: Path) -> None:
    published(service, orders(data), customers(data))
    report = service.publish([order_emails(rules=[{"name": "small", "rule": "amount < 100", "severity": "error"}])], ADMIN)
    assert not report.ok and report.published == []
    assert statuses(report)["analytics.order_emails quality.small"] == "failed"
    assert "1 of 3 row(s) fail `amount < 100`" in details(report)["analytics.order_emails quality.small"]
    assert service.registry.versions("analytics.order_emails") == []


def test_an_unreadable_input_fails_the_gates_closed(service: GatewayService, data: Path) -> None:
    published(service, orders(data), customers(data))
    drop_customers(data)
    report = service.publish([order_emails()], ADMIN)
    assert not report.ok
    assert statuses(report)["analytics.order_emails quality.email_has_at"] == "failed"
    assert "could not run" in details(report)["analytics.order_emails quality.email_has_at"]
    assert service.registry.versions("analytics.order_emails") == []


def test_product_check_runs_a_derived_products_rules_through_the_cli(service: GatewayService, data: Path) -> None:
    published(service, orders(data), customers(data))
    failing = order_emails(rules=[{"name": "small", "rule": "amount < 100", "severity": "error"}])
    service.registry.register([failing])  # published before the rule started failing, say
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "product", "check", "analytics.order_emails",
         "--registry", str(service.registry.path), "--source-root", str(data)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 of 3 row(s) fail `amount < 100`" in run.stdout
    assert "quality score 0.50 stored" in run.stdout  # small fails, id.required passes
    score, version, _, _ = service.registry.latest_quality("analytics.order_emails")
    assert (score, version) == (0.5, "1.0.0")


# --- the SLA monitor -----------------------------------------------------------------------------


def test_the_monitor_checks_derived_products_and_every_active_major(service: GatewayService, data: Path) -> None:
    published(service, orders(data), customers(data), order_emails())
    service.registry.register([orders(data, "2.0.0")])  # a new major; major 1 stays queryable
    service.registry.catalog(max_age=0)
    now = time.time()
    os.utime(data / "crm.db", (now - 7200, now - 7200))  # the stalest input: two hours old
    os.utime(data / "shop.db", (now - 600, now - 600))
    monitor = SlaMonitor(service.registry, service.derived_sources.connector_for, AlertSink())
    assert set(monitor.monitored()) == {"sales.orders", "sales.orders@1", "crm.customers", "analytics.order_emails"}
    checked = {s.product_id: s for s in monitor.check_now()}
    assert set(checked) == {"sales.orders", "sales.orders@1", "crm.customers", "analytics.order_emails"}
    assert checked["sales.orders@1"].version == "1.0.0" and checked["sales.orders"].version == "2.0.0"
    derived = checked["analytics.order_emails"]
    assert derived.available, derived.error
    assert derived.as_of == pytest.approx(now - 7200, abs=1) and "crm.customers" in derived.freshness_basis
    assert derived.breaches.keys() == {"freshness", "quality"} - {"quality"}  # 2 h old against 60 s
    assert {q["name"]: q["passed"] for q in derived.quality} == {"email_has_at": True, "small": False, "id.required": True}
    assert service.registry.latest_quality("analytics.order_emails")[0] == pytest.approx(2 / 3)
    drop_customers(data)
    [down] = monitor.check_now(["analytics.order_emails"])
    assert not down.available and "customers" in (down.error or "")


# --- the result cache and metrics --------------------------------------------------------------------


def test_the_derived_products_own_freshness_sla_bounds_cached_results(service: GatewayService, data: Path, clock: Clock) -> None:
    published(service, orders(data), customers(data), order_emails())
    sql = "SELECT id, amount FROM analytics.order_emails ORDER BY id"

    def meta(query: str) -> dict[str, str]:
        reader = service.execute(query, ADMIN)
        reader.read_all()
        return {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}

    assert meta(sql)["meshgate.cache"] == "miss"
    assert meta("SELECT id FROM sales.orders")["meshgate.cache"] == "miss"
    clock.now += 30
    assert meta(sql)["meshgate.cache"] == "hit"
    clock.now += 31  # 61 s: past the derived product's 60 s, well within its inputs' 1 h
    again = meta(sql)
    assert again["meshgate.cache"] == "miss" and float(again["meshgate.age_seconds"]) < 60
    assert "hit" not in again.get("meshgate.fragment_cache", "")  # its inputs' fragments were not reused either
    assert meta("SELECT id FROM sales.orders")["meshgate.cache"] == "hit"  # the input's own entry still serves


def _queries(product_id: str, domain: str) -> float:
    return REGISTRY.get_sample_value("product_queries_total",
                                     {"product_id": product_id, "domain": domain, "consumer_domain": "unknown"}) or 0.0


def test_a_query_of_a_derived_product_counts_for_it_and_its_inputs(service: GatewayService, data: Path) -> None:
    published(service, orders(data), customers(data), order_emails())
    before = [_queries("analytics.order_emails", "analytics"), _queries("sales.orders", "sales"), _queries("crm.customers", "crm")]
    service.execute("SELECT count(*) FROM analytics.order_emails", ADMIN).read_all()
    after = [_queries("analytics.order_emails", "analytics"), _queries("sales.orders", "sales"), _queries("crm.customers", "crm")]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    rows = REGISTRY.get_sample_value("product_rows_returned_total", {"product_id": "analytics.order_emails"})
    assert rows is not None and rows >= 1


def test_retiring_an_input_of_a_derived_product_is_refused(data: Path, tmp_path: Path) -> None:
    """Retiring what a derived product's query reads would break it silently: refused, naming the
    derived product, until it is retired itself (or an admin forces it)."""
    from gateway.errors import PreconditionFailed
    from gateway.lifecycle import set_status

    registry = Registry(tmp_path / "registry.db")
    registry.register([orders(data), customers(data)])
    registry.register([order_emails(rules=[])])
    policies = PolicyEngine.load()
    set_status(registry, policies, "crm.customers", "1", "deprecated", ADMIN)
    with pytest.raises(PreconditionFailed, match=r"derived product\(s\) analytics\.order_emails read it"):
        set_status(registry, policies, "crm.customers", "1", "retired", ADMIN)
    set_status(registry, policies, "analytics.order_emails", "1", "deprecated", ADMIN)
    set_status(registry, policies, "analytics.order_emails", "1", "retired", ADMIN)
    assert set_status(registry, policies, "crm.customers", "1", "retired", ADMIN).changed == ("1.0.0",)
    registry.register([orders(data, "2.0.0")])  # a second major: retiring the first one leaves the product
    set_status(registry, policies, "sales.orders", "1", "deprecated", ADMIN)
    assert set_status(registry, policies, "sales.orders", "1", "retired", ADMIN).changed == ("1.0.0",)
