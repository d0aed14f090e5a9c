"""Prometheus ``/metrics`` and ``/readyz`` of the REST app, over a real HTTP socket, after real
queries on the live demo mesh (a gateway of its own, so counts are this module's)."""

from __future__ import annotations

import copy
import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.audit import AuditLog
from gateway.cache import ResultCache
from gateway.descriptor import validate
from gateway.registry import Registry
from gateway.rest import create_app, serve_http
from gateway.source_roots import SourceRoots
from gateway.service import GatewayService
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine
from tests.mesh import OPEN_POLICIES, LiveMesh, demo_clock

pytestmark = pytest.mark.postgres

GOVERNED = Path(__file__).parent / "policies" / "governed"


def get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def served(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayService, str]]:
    tmp = tmp_path_factory.mktemp("metrics")
    service = GatewayService(live_mesh.registry, policies=PolicyEngine.load(GOVERNED),
                             audit=AuditLog(tmp / f"audit-{uuid.uuid4().hex[:8]}.log"),
                             cache=ResultCache(256 * 1024**2, clock=demo_clock(live_mesh.registry)))  # data within its SLA
    http = serve_http(create_app(service), "127.0.0.1", 0)
    try:
        yield service, http.url
    finally:
        http.stop()
        service.close()


def test_metrics_count_queries_cache_policy_and_connectors(served: tuple[GatewayService, str]) -> None:
    service, url = served
    status, text, headers = get(url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    before = samples(text)
    alice = Principal("alice", frozenset({"analyst"}), {"region": "DE", "only_succeeded": True, "domain": "Marketing"})
    sql = "SELECT o.status, count(*) AS n FROM orders.orders o JOIN payments.payments p USING (order_id) GROUP BY o.status"
    rows = service.execute(sql, alice).read_all().num_rows  # a miss
    after_miss = samples(get(url + "/metrics")[1])
    for _ in range(2):  # two hits
        rows += service.execute(sql, alice).read_all().num_rows
    service.execute("SELECT count(*) FROM customers.customers", alice).read_all()  # masked, filtered, not cached
    with pytest.raises(Exception, match="carriers"):
        service.execute("SELECT * FROM shipping.carriers", alice)  # denied
    after = samples(get(url + "/metrics")[1])

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("product_queries_total", product_id="orders.orders", domain="orders", consumer_domain="marketing") == 3
    assert delta("product_queries_total", product_id="payments.payments", domain="payments", consumer_domain="marketing") == 3
    assert delta("product_rows_returned_total", product_id="orders.orders") == rows
    assert delta("product_query_duration_seconds_count", product_id="payments.payments") == 3
    assert delta("product_query_duration_seconds_sum", product_id="payments.payments") > 0
    # the miss fetched orders and payments from their sources; the hits fetched nothing
    assert delta("product_bytes_scanned_total", product_id="orders.orders") > 0
    assert value(after_miss, "product_bytes_scanned_total", product_id="orders.orders") == value(
        after, "product_bytes_scanned_total", product_id="orders.orders")
    assert delta("product_bytes_scanned_total", product_id="customers.customers") > 0
    assert delta("policy_evaluation_seconds_count") >= 3  # orders, payments, customers (carriers' denial too)
    assert ("process_resident_memory_bytes", ()) in after and ("process_cpu_seconds_total", ()) in after
    result, fragment = {"level": "result", "tier": "memory"}, {"level": "fragment", "tier": "memory"}
    assert delta("gateway_cache_hits_total", **result) == 2 and delta("gateway_cache_misses_total", **result) == 1
    assert delta("gateway_cache_misses_total", **fragment) == 2  # orders and payments, fetched once
    assert delta("gateway_cache_hits_total", **fragment) == 0  # the result hits needed no fragment
    assert value(after, "gateway_cache_bytes", **result) > 0 and value(after, "gateway_cache_bytes", **fragment) > 0
    assert ("gateway_cache_evictions_total", tuple(sorted(result.items()))) in after
    # orders x3 (small groups), payments x3 (row filter), customers (masks, row filter)
    assert delta("policy_decisions_total", decision="transform") == 7
    assert delta("policy_decisions_total", decision="deny") == 1
    assert delta("connector_fragment_seconds_count", connector="duckdb") >= 1  # orders, fetched once (then cached)
    assert delta("connector_fragment_seconds_count", connector="sqlite") >= 1  # customers, not cached


def test_connector_errors_are_counted(served: tuple[GatewayService, str], live_mesh: LiveMesh, tmp_path: Path) -> None:
    _, url = served
    registry, _ = broken_registry(live_mesh, tmp_path)
    service = GatewayService(registry, policies=PolicyEngine.load(OPEN_POLICIES), audit=AuditLog(tmp_path / "a.log"),
                             source_roots=SourceRoots.of([live_mesh.mesh.products_dir.parent]))
    before = value(samples(get(url + "/metrics")[1]), "connector_errors_total", connector="postgres")
    try:
        with pytest.raises(Exception):
            service.execute("SELECT * FROM shipping.shipments o JOIN orders.orders USING (order_id)", ANONYMOUS).read_all()
    finally:
        service.close()
    after = value(samples(get(url + "/metrics")[1]), "connector_errors_total", connector="postgres")
    assert after == before + 1


def test_readyz_reports_every_source(served: tuple[GatewayService, str]) -> None:
    _, url = served
    status, text, _ = get(url + "/readyz")
    report = json.loads(text)
    assert status == 200 and report["ready"], report
    assert report["registry"]["ok"] and report["policies"]["ok"]
    connectors = {s["connector"] for s in report["sources"]}
    assert connectors >= {"sqlite", "duckdb", "parquet", "postgres"}
    assert all(s["ok"] and s["latency_ms"] >= 0 and s["probed_product"] for s in report["sources"])
    assert not any("password" in s["source"] for s in report["sources"])


def broken_registry(live_mesh: LiveMesh, tmp: Path) -> tuple[Registry, str]:
    """The demo mesh with shipping.shipments moved to a PostgreSQL nobody listens on."""
    from gateway.cli import load_descriptors

    descriptors, errors = load_descriptors([live_mesh.mesh.products_dir])
    assert not errors
    shipments = next(d for d in descriptors if d.product_id == "shipping.shipments")
    doc = copy.deepcopy(shipments.raw)
    doc["spec"]["source"]["uri"] = "postgresql://nobody@127.0.0.1:1/none"
    moved = validate(doc, base_dir=shipments.base_dir)
    registry = Registry(tmp / f"registry-{uuid.uuid4().hex[:6]}.db")
    registry.register([d for d in descriptors if d.product_id != "shipping.shipments"] + [moved])
    return registry, "shipping.shipments"


def test_readyz_is_503_for_an_unreachable_source_and_broken_policies(live_mesh: LiveMesh, tmp_path: Path) -> None:
    registry, moved = broken_registry(live_mesh, tmp_path)
    policies = tmp_path / "policies"
    shutil.copytree(OPEN_POLICIES, policies)
    engine = PolicyEngine.load(policies)
    service = GatewayService(registry, policies=engine, audit=AuditLog(tmp_path / "audit.log"),
                             source_roots=SourceRoots.of([live_mesh.mesh.products_dir.parent]))
    http = serve_http(create_app(service), "127.0.0.1", 0)
    try:
        status, text, _ = get(http.url + "/readyz")
        report = json.loads(text)
        assert status == 503 and not report["ready"] and report["policies"]["ok"]
        bad = [s for s in report["sources"] if not s["ok"]]
        assert len(bad) == 1 and bad[0]["connector"] == "postgres" and bad[0]["error"]
        assert all(s["ok"] for s in report["sources"] if s["connector"] != "postgres" or s["probed_product"] != moved)
        (policies / "global" / "broken.yaml").write_text("access: [ {id: x, effect: maybe\n")
        time.sleep(0.05)
        engine.reload_if_changed()
        status, text, _ = get(http.url + "/readyz")
        report = json.loads(text)
        assert status == 503 and not report["policies"]["ok"] and "broken.yaml" in report["policies"]["error"]
    finally:
        http.stop()
        service.close()
