"""Catalog search: ranking (exact names first; name, description, column and tag matches; usage
and health boosts), filters, why each product matched, and policy filtering, in-process, over
REST, from the CLI and as the ``mesh.catalog`` system product through a real ADBC client.

Products are real (a SQLite file), so the usage that boosts them comes from real queries the
gateway audits; the packaged policies hide ``pii`` products from principals without
``pii_training``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from gateway.alerts import AlertSink
from gateway.audit import AuditLog
from gateway.auth import Authenticator
from gateway.catalog_search import Health, health_boost, search_as
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.rest import create_app, serve_http
from gateway.service import GatewayService
from gateway.sla_monitor import SlaMonitor
from gateway.usage import service_usage
from gateway.users import UsersFile, add_user
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine
from tests.catalog_products import product, sqlite_source
from tests.http import basic, http

REPO = Path(__file__).resolve().parents[1]
MESHGATE = [sys.executable, "-m", "gateway.cli"]
PASSWORDS = {"alice": "alice-Pw-1", "bob": "bob-Pw-22"}
ALICE = Principal("alice", frozenset({"analyst"}), {"pii_training": True})
BOB = Principal("bob", frozenset({"analyst"}), {})


def catalog_products(source: Path) -> list:
    return [
        product("sales", "orders", source, description="Every order placed in the web shop", tags=("sales", "finance")),
        product("sales", "order_lines", source, description="Order lines: one row per ordered item of each order",
                tags=("orders",),
                columns=(("order_id", "the order this line belongs to"), ("order_total", "order amount"))),
        product("crm", "customers", source, description="Customer master data", tags=("customer", "pii"),
                columns=(("email", "contact address of the customer"),), owner="crm-team@example.com"),
        product("crm", "customer_revenue", source, description="Revenue per customer and month", tags=("customer", "finance"),
                owner="Finance-Analytics@example.com"),
        product("marketing", "campaigns", source, description="Marketing campaigns and their spend", tags=("marketing",)),
        product("marketing", "daily_metrics", source, description="Daily metrics of the web shop", tags=("kpi",)),
        product("finance", "weekly_metrics", source, description="Weekly metrics of the web shop", tags=("kpi",)),
    ]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[GatewayService]:
    source = sqlite_source(tmp_path / "source.db")
    registry = Registry(tmp_path / "registry.db")
    registry.register(catalog_products(source))
    service = GatewayService(registry, policies=PolicyEngine.load(), audit=AuditLog(tmp_path / "audit.log"))
    yield service
    service.close()


def ids(results: Any) -> list[str]:
    return [hit.product_id for hit in results.hits]


def query(service: GatewayService, principal: Principal, product_id: str, times: int = 1) -> None:
    for _ in range(times):
        service.execute(f"SELECT count(*) FROM {product_id}", principal).read_all()
    service_usage(service).refresh(force=True)


# --- ranking ------------------------------------------------------------------------------------------


def test_exact_name_comes_first(mesh: GatewayService) -> None:
    """order_lines mentions "order" in more places, but the product named orders comes first."""
    results = search_as(mesh, ALICE, "orders")
    assert ids(results)[:2] == ["sales.orders", "sales.order_lines"]
    assert results.hits[0].exact and results.hits[0].why[0] == "exact name match"
    assert results.hits[0].score < results.hits[1].score  # first on exactness, not on score
    by_id = search_as(mesh, ALICE, "sales.orders")
    assert ids(by_id)[0] == "sales.orders" and by_id.hits[0].why[0] == "exact product id match"
    spaced = search_as(mesh, ALICE, "Customer Revenue")  # the name, written as words
    assert ids(spaced)[0] == "crm.customer_revenue" and spaced.hits[0].exact


def test_name_description_column_and_tag_matches_say_why(mesh: GatewayService) -> None:
    email = search_as(mesh, ALICE, "email")
    assert ids(email) == ["crm.customers"]
    assert [m.to_json() for m in email.hits[0].matches] == [
        {"field": "column", "value": "email", "terms": ["email"], "prefix": False}]
    assert "column email matches 'email'" in email.hits[0].why
    contact = search_as(mesh, ALICE, "contact")
    assert ids(contact) == ["crm.customers"] and "description of column email matches 'contact'" in contact.hits[0].why
    kpi = search_as(mesh, ALICE, "kpi")
    assert set(ids(kpi)) == {"marketing.daily_metrics", "finance.weekly_metrics"}
    assert all("tag kpi matches 'kpi'" in hit.why for hit in kpi.hits)
    shop = search_as(mesh, ALICE, "shop")
    assert set(ids(shop)) == {"sales.orders", "marketing.daily_metrics", "finance.weekly_metrics"}
    assert all("description matches 'shop'" in hit.why for hit in shop.hits)
    # A name match outranks a description match; customers (all of its name) outranks customer_revenue.
    customer = search_as(mesh, ALICE, "customers")
    assert ids(customer)[:2] == ["crm.customers", "crm.customer_revenue"]
    # Prefixes match, at a discount, and say so.
    prefix = search_as(mesh, ALICE, "camp")
    assert ids(prefix) == ["marketing.campaigns"] and prefix.hits[0].matches[0].prefix
    assert "name campaigns matches 'camp' (prefix)" in prefix.hits[0].why
    assert search_as(mesh, ALICE, "zebra").total == 0


def test_more_terms_matched_ranks_higher(mesh: GatewayService) -> None:
    results = search_as(mesh, ALICE, "weekly shop metrics")
    assert ids(results)[0] == "finance.weekly_metrics"
    assert ids(results)[1] == "marketing.daily_metrics"  # two of three terms
    assert results.total == 3  # sales.orders matches "shop" only


def test_usage_boost_changes_the_order(mesh: GatewayService) -> None:
    before = ids(search_as(mesh, ALICE, "metrics"))
    assert before == ["finance.weekly_metrics", "marketing.daily_metrics"]  # a tie, by id
    for who in (ALICE, BOB, Principal("carol", frozenset({"analyst"}), {})):
        query(mesh, who, "marketing.daily_metrics", times=2)
    after = search_as(mesh, ALICE, "metrics")
    assert ids(after) == ["marketing.daily_metrics", "finance.weekly_metrics"]
    top = after.hits[0]
    assert (top.queries, top.consumers, top.popularity) == (6, 3, 10.0)
    assert "used: 6 queries by 3 consumers (popularity 10.0)" in top.why
    assert top.to_json()["consumers"] == 3 and top.to_json()["popularity_score"] == 10.0
    browse = search_as(mesh, ALICE, "")  # no terms: every product, the used one first
    assert ids(browse)[0] == "marketing.daily_metrics" and browse.total == 7


def test_unhealthy_products_rank_lower(tmp_path: Path) -> None:
    """Two products that match alike; the SLA monitor finds one's data two hours old against a
    one-hour freshness SLA: it ranks below the fresh one, and says why."""
    fresh, stale = sqlite_source(tmp_path / "fresh.db"), sqlite_source(tmp_path / "stale.db")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    registry = Registry(tmp_path / "registry.db")
    registry.register([
        product("finance", "weekly_metrics", stale, description="Weekly metrics", sla={"freshness": "1h"}),
        product("marketing", "daily_metrics", fresh, description="Daily metrics", sla={"freshness": "1h"}),
    ])
    service = GatewayService(registry, policies=PolicyEngine.load(), audit=AuditLog(tmp_path / "audit.log"))
    try:
        assert ids(search_as(service, ALICE, "metrics")) == ["finance.weekly_metrics", "marketing.daily_metrics"]
        SlaMonitor(registry, service.sources.connector_for, AlertSink()).check_now()
        deadline = time.monotonic() + 5  # health is re-read at most once a second
        while ids(results := search_as(service, ALICE, "metrics"))[0] != "marketing.daily_metrics" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ids(results) == ["marketing.daily_metrics", "finance.weekly_metrics"]
        low = results.hits[1]
        assert low.health.sla_met is False and low.to_json()["sla_met"] is False
        assert any(reason.startswith("ranked lower: SLA not met (freshness: data is 2h old") for reason in low.why), low.why
        assert results.hits[0].health.sla_met is True
    finally:
        service.close()


def test_quality_runs_and_deprecation_rank_lower(mesh: GatewayService) -> None:
    """Without SLA checks, a product's newest quality run (``product check``, registration) is its
    quality score; a deprecated newest version ranks lower still, and each says why."""
    registry = mesh.registry
    assert ids(search_as(mesh, ALICE, "metrics")) == ["finance.weekly_metrics", "marketing.daily_metrics"]
    weekly = registry.catalog(max_age=0).resolve("finance", "weekly_metrics")
    registry.record_quality(weekly.product_id, weekly.version, _results(passed=1, failed=3))
    deadline = time.monotonic() + 5  # health is re-read at most once a second
    while ids(results := search_as(mesh, ALICE, "metrics"))[0] != "marketing.daily_metrics" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ids(results) == ["marketing.daily_metrics", "finance.weekly_metrics"]
    assert results.hits[1].health.quality_score == pytest.approx(0.25)
    assert "quality score 0.25 (ranked lower)" in results.hits[1].why
    daily = registry.catalog(max_age=0).resolve("marketing", "daily_metrics")
    registry.set_status(daily.product_id, [daily.version], "deprecated", "admin", reason="replaced by finance.weekly_metrics")
    deadline = time.monotonic() + 5
    while ids(results := search_as(mesh, ALICE, "metrics"))[0] != "finance.weekly_metrics" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ids(results)[0] == "finance.weekly_metrics"
    deprecated = results.hits[1]
    assert deprecated.health.status == "deprecated" and "ranked lower: deprecated" in deprecated.why


def _results(passed: int, failed: int) -> list[dict[str, Any]]:
    return [{"name": f"rule{i}", "severity": "error", "passed": i < passed} for i in range(passed + failed)]


def test_health_boost() -> None:
    """Breached SLA halves, quality scales, never-checked sits just below checked and good."""
    assert health_boost(Health(quality_score=1.0, sla_met=True)) == 1.0
    assert health_boost(Health()) == 0.9
    assert health_boost(Health(quality_score=0.5)) == pytest.approx(0.8)
    assert health_boost(Health(quality_score=1.0, sla_met=False)) == 0.5
    assert health_boost(Health(quality_score=1.0, status="deprecated")) == pytest.approx(0.3)


# --- filters and policy -----------------------------------------------------------------------------------


def test_filters(mesh: GatewayService) -> None:
    assert ids(search_as(mesh, ALICE, "metrics", domains=["finance"])) == ["finance.weekly_metrics"]
    assert set(ids(search_as(mesh, ALICE, "", domains=["crm", "marketing"]))) == {
        "crm.customers", "crm.customer_revenue", "marketing.campaigns", "marketing.daily_metrics"}
    assert ids(search_as(mesh, ALICE, "", tags=["customer", "finance"])) == ["crm.customer_revenue"]  # all tags
    assert ids(search_as(mesh, ALICE, "customer", tags=["PII"])) == ["crm.customers"]
    assert ids(search_as(mesh, ALICE, "", owners=["finance-analytics"])) == ["crm.customer_revenue"]  # before @, any case
    assert ids(search_as(mesh, ALICE, "", owners=["crm-team@example.com"])) == ["crm.customers"]
    assert search_as(mesh, ALICE, "orders", domains=["nowhere"]).total == 0
    limited = search_as(mesh, ALICE, "", limit=2)
    assert len(limited.hits) == 2 and limited.total == 7


def test_only_products_the_principal_may_read(mesh: GatewayService) -> None:
    """crm.customers is tagged pii: the packaged policies let only pii_training principals read it."""
    assert "crm.customers" in ids(search_as(mesh, ALICE, "customer"))
    assert ids(search_as(mesh, BOB, "customer")) == ["crm.customer_revenue"]
    assert search_as(mesh, BOB, "email").total == 0  # not even its columns give it away
    assert search_as(mesh, ANONYMOUS, "", limit=100).total == 6


def test_a_newly_registered_product_is_found(mesh: GatewayService, tmp_path: Path) -> None:
    assert search_as(mesh, ALICE, "shipments").total == 0
    mesh.registry.register([product("logistics", "shipments", tmp_path / "source.db", description="Parcels sent")])
    deadline = time.monotonic() + 5
    while search_as(mesh, ALICE, "shipments").total == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ids(search_as(mesh, ALICE, "parcels")) == ["logistics.shipments"]


# --- mesh.catalog over Flight SQL ----------------------------------------------------------------------------


@dataclass
class Served:
    service: GatewayService
    flight_uri: str
    http_url: str
    users: Path


@pytest.fixture
def served(mesh: GatewayService, tmp_path: Path) -> Iterator[Served]:
    users = tmp_path / "users.yaml"
    add_user(users, "alice", PASSWORDS["alice"], ["analyst"], {"pii_training": True})
    add_user(users, "bob", PASSWORDS["bob"], ["analyst"], {})
    authenticator = Authenticator(UsersFile(users))
    server = MeshFlightServer("grpc://127.0.0.1:0", mesh, authenticator=authenticator)
    http = serve_http(create_app(mesh, authenticator), "127.0.0.1", 0)
    try:
        yield Served(mesh, f"grpc://127.0.0.1:{server.port}", http.url, users)
    finally:
        http.stop()
        server.shutdown()


def sql(served: Served, user: str, statement: str) -> list[tuple]:
    with flightsql.connect(served.flight_uri, db_kwargs={"username": user, "password": PASSWORDS[user]}, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()


def test_mesh_catalog_over_flight_sql(served: Served) -> None:
    query(served.service, BOB, "sales.orders", times=3)
    rows = sql(served, "alice", "SELECT product_id, tags, queries, consumers, popularity, columns FROM mesh.catalog "
                                "WHERE domain = 'sales' ORDER BY product_id")
    assert rows == [
        ("sales.order_lines", "orders", 0, 0, 0.0, "id,label,order_id,order_total"),
        ("sales.orders", "sales,finance", 3, 1, 10.0, "id,label"),
    ]
    tagged = sql(served, "alice", "SELECT product_id FROM mesh.catalog WHERE tags LIKE '%pii%'")
    assert tagged == [("crm.customers",)]
    assert sql(served, "bob", "SELECT product_id FROM mesh.catalog WHERE tags LIKE '%pii%'") == []  # bob may not read it
    assert sql(served, "bob", "SELECT count(*) FROM mesh.catalog") == [(6,)]
    (last,) = sql(served, "bob", "SELECT last_queried FROM mesh.catalog WHERE product_id = 'sales.orders'")[0]
    assert last is not None and abs(last.timestamp() - time.time()) < 60


# --- REST --------------------------------------------------------------------------------------------------


def get(served: Served, path: str, user: str | None = "alice") -> tuple[int, dict[str, Any]]:
    response = http(served.http_url + path, authorization=basic(user, PASSWORDS[user]) if user is not None else None)
    return response.status, response.json()


def test_rest_search_in_the_seed_designs_shape(served: Served) -> None:
    query(served.service, ALICE, "crm.customers")
    status, body = get(served, "/api/v1/catalog/search?q=customer&tags=pii&domain=crm")
    assert status == 200, body
    assert body["total_results"] == 1 and isinstance(body["search_time_ms"], float)
    (hit,) = body["results"]
    assert {k: hit[k] for k in ("product_id", "name", "domain", "owner", "version", "tags", "consumers", "queries")} == {
        "product_id": "crm.customers", "name": "customers", "domain": "crm", "owner": "crm-team@example.com",
        "version": "1.0.0", "tags": ["customer", "pii"], "consumers": 1, "queries": 1}
    for key in ("description", "sla", "quality_score", "popularity_score", "score", "matches", "why"):
        assert key in hit
    assert "name customers matches 'customer'" in hit["why"]
    status, body = get(served, "/api/v1/catalog/search?q=metrics&limit=1")
    assert status == 200 and len(body["results"]) == 1 and body["total_results"] == 2
    status, body = get(served, "/api/v1/catalog/search?domain=sales,crm&owner=crm-team")
    assert status == 200 and [r["product_id"] for r in body["results"]] == ["crm.customers"]


def test_rest_search_is_policy_filtered(served: Served) -> None:
    status, body = get(served, "/api/v1/catalog/search?q=customer", user="bob")
    assert status == 200 and [r["product_id"] for r in body["results"]] == ["crm.customer_revenue"]
    status, body = get(served, "/api/v1/catalog/search?q=customer", user=None)
    assert status == 401 and body["error"] == "unauthenticated"


def test_rest_bad_parameters_are_422_listing_every_problem(served: Served) -> None:
    status, body = get(served, "/api/v1/catalog/search?q=x&limit=0&domain=Not-A-Domain&tag=pii")
    assert status == 422 and body["error"] == "invalid request"
    assert "limit: expected a whole number from 1 to 1000, got '0'" in body["detail"]
    assert "domain: 'Not-A-Domain' is not a domain name" in body["detail"]
    assert "unknown parameter 'tag'" in body["detail"]
    assert body["field"] == "tag"
    assert {p["field"] for p in body["problems"]} == {"tag", "limit", "domain"}
    status, body = get(served, "/api/v1/catalog/search?limit=abc")
    assert status == 422 and body["field"] == "limit"
    status, body = get(served, "/api/v1/catalog/search?q=" + "x" * 1001)
    assert status == 422 and body["field"] == "q"


# --- CLI ---------------------------------------------------------------------------------------------------


def meshgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHGATE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})


def test_cli_search(served: Served) -> None:
    registry = str(served.service.registry.path)
    query(served.service, BOB, "marketing.daily_metrics", times=2)
    done = meshgate("catalog", "search", "metrics", "--registry", registry)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["product", "version", "quality", "consumers"]
    assert lines[1].split()[:4] == ["marketing.daily_metrics", "1.0.0", "-", "1"]  # usage from the audit log beside it
    assert "used: 2 queries by 1 consumer" in done.stdout
    assert "2 of 2 matching products (as anonymous" in done.stdout
    as_json = meshgate("catalog", "search", "customer", "--registry", registry, "--format", "json",
                       "--users", str(served.users), "--user", "alice")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert [r["product_id"] for r in document["results"]] == ["crm.customers", "crm.customer_revenue"]
    assert document["results"][0]["why"][0] == "name customers matches 'customer'"
    filtered = meshgate("catalog", "search", "--registry", registry, "--format", "json", "--domain", "marketing", "--tag", "kpi")
    assert [r["product_id"] for r in json.loads(filtered.stdout)["results"]] == ["marketing.daily_metrics"]


def test_cli_search_is_policy_filtered(served: Served) -> None:
    registry = str(served.service.registry.path)
    for who in (["--users", str(served.users), "--user", "bob"], [], ["--user", "dave", "--role", "analyst"]):
        done = meshgate("catalog", "search", "customer", "--registry", registry, "--format", "json", *who)
        assert done.returncode == 0, done.stderr
        assert [r["product_id"] for r in json.loads(done.stdout)["results"]] == ["crm.customer_revenue"], who
    trained = meshgate("catalog", "search", "email", "--registry", registry, "--user", "dave", "--attr", "pii_training=true")
    assert trained.returncode == 0 and "crm.customers" in trained.stdout
    hidden = meshgate("catalog", "search", "email", "--registry", registry)
    assert hidden.returncode == 0 and "no products match (searched as anonymous)" in hidden.stdout


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    missing = meshgate("catalog", "search", "x", "--registry", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "no registry at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    limit = meshgate("catalog", "search", "x", "--limit", "0")
    assert limit.returncode == 2 and "--limit: expected a whole number from 1 to 1000" in limit.stderr
    who = meshgate("catalog", "search", "x", "--user", "dave", "--registry", str(tmp_path / "nope.db"))
    assert who.returncode == 2 and "who is 'dave'?" in who.stderr
