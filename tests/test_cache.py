"""The cache (gateway/cache.py, gateway/query_cache.py) on the live demo mesh, through
``service.execute`` and over Flight: result and fragment hits, fragments shared by different
queries, governance in the keys, single flight at both levels, the byte bound, EXPLAIN.
Freshness, watermarks, versions and stale-while-revalidate: tests/test_cache_freshness.py.

Demo products with a freshness SLA: orders.orders (DuckDB, 1d on order_ts), payments.payments
(Parquet, 1d on paid_at), shipping.shipments (PostgreSQL, 2d on shipped_on); customers.customers
has none (never cached).  So that ages are exact, the caches here run on ``demo_clock`` (an hour
after the data's newest rows) rather than the real clock.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from gateway.audit import AuditLog
from gateway.cache import BYPASS, HIT, MISS, ResultCache
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.service import GatewayService
from gateway.types import parse_duration
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine
from tests.mesh import OPEN_POLICIES, Clock, LiveMesh, demo_clock

pytestmark = pytest.mark.postgres

GOVERNED = Path(__file__).parent / "policies" / "governed"
DAY = 86400.0
FEDERATED = """
    SELECT o.status, p.method, count(*) AS n, sum(p.amount) AS paid
    FROM orders.orders o JOIN payments.payments p ON p.order_id = o.order_id
    JOIN shipping.shipments s ON s.order_id = o.order_id
    GROUP BY o.status, p.method ORDER BY o.status, p.method
"""
# Two different queries whose orders fragment is the same (order_id, status), payments' not.
BY_STATUS = "SELECT o.status, count(*) AS n FROM orders.orders o JOIN payments.payments p USING (order_id) GROUP BY o.status ORDER BY 1"
PAID_BY_STATUS = ("SELECT o.status, sum(p.amount) AS paid FROM orders.orders o JOIN payments.payments p USING (order_id) "
                  "GROUP BY o.status ORDER BY 1")


def make_service(registry: Registry, tmp: Path, clock: Clock | None = None, policies: Path = OPEN_POLICIES,
                 max_bytes: int = 256 * 1024**2, max_entry_bytes: int = 64 * 1024**2) -> GatewayService:
    cache = ResultCache(max_bytes, max_entry_bytes, clock=clock or demo_clock(registry))
    return GatewayService(registry, policies=PolicyEngine.load(policies),
                          audit=AuditLog(tmp / f"audit-{uuid.uuid4().hex[:8]}.log"), cache=cache)


def run(service: GatewayService, sql: str, principal: Principal = ANONYMOUS, **kwargs) -> tuple[pa.Table, dict[str, str]]:
    reader = service.execute(sql, principal, **kwargs)
    table = reader.read_all()
    meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items() if k.startswith(b"meshgate.")}
    return table, meta


def fragment_cache(meta: dict[str, str], service: GatewayService, sql: str, principal: Principal = ANONYMOUS) -> dict[str, str]:
    """``meshgate.fragment_cache`` keyed by the product each fragment reads (without version)."""
    names = {row["step"].split()[1]: row["products"].split("@")[0]
             for row in service.explain(sql, principal).to_pylist() if row["step"].startswith("fragment")}
    pairs = [p.split("=") for p in meta.get("meshgate.fragment_cache", "").split(",") if p]
    return {names[name]: status for name, status in pairs}


@pytest.fixture
def service(live_mesh: LiveMesh, tmp_path: Path) -> Iterator[tuple[GatewayService, Clock]]:
    clock = demo_clock(live_mesh.registry)
    svc = make_service(live_mesh.registry, tmp_path, clock)
    yield svc, clock
    svc.close()


def test_parse_duration() -> None:
    assert parse_duration("5m") == 300 and parse_duration("1d") == DAY and parse_duration(2) == 2.0
    assert parse_duration("500ms") == 0.5 and parse_duration("30") == 30 and parse_duration(None) is None
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_a_hit_returns_the_misss_rows_without_contacting_any_source(service: tuple[GatewayService, Clock]) -> None:
    svc, _ = service
    missed, meta_miss = run(svc, FEDERATED)
    hit, meta_hit = run(svc, FEDERATED)
    assert meta_miss["meshgate.cache"] == MISS and meta_hit["meshgate.cache"] == HIT
    assert meta_hit["meshgate.cache_tier"] == "memory" and "meshgate.cache_tier" not in meta_miss
    assert hit.equals(missed) and missed.num_rows > 0
    assert len(svc.recent[-1].sent) == 0  # the hit sent nothing to any source
    products = meta_hit["meshgate.products"].split(",")
    assert {p.split("@")[0] for p in products} == {"orders.orders", "payments.payments", "shipping.shipments"}
    assert all("@" in p for p in products)
    # the age counts the source data's own age at fetch: an hour for orders (see demo_clock)
    assert 3000 < float(meta_miss["meshgate.age_seconds"]) <= float(meta_hit["meshgate.age_seconds"]) < 4000


def test_a_fragment_shared_by_different_queries_is_fetched_once(service: tuple[GatewayService, Clock]) -> None:
    svc, _ = service
    _, meta = run(svc, BY_STATUS)
    assert meta["meshgate.cache"] == MISS
    assert fragment_cache(meta, svc, BY_STATUS) == {"orders.orders": MISS, "payments.payments": MISS}
    answer, meta = run(svc, PAID_BY_STATUS)  # another query: a result miss, but orders' fragment is shared
    assert meta["meshgate.cache"] == MISS
    assert fragment_cache(meta, svc, PAID_BY_STATUS) == {"orders.orders": HIT, "payments.payments": MISS}
    sent = svc.recent[-1].sent
    assert len(sent) == 1 and sent[0][0].startswith("parquet"), sent  # only payments was asked
    direct = svc.execute(PAID_BY_STATUS, ANONYMOUS, max_staleness=0)  # no cache at any level: the oracle
    assert direct.read_all().equals(answer)
    assert svc.cache.fragment_hits == 1 and svc.cache.fragment_misses == 3  # type: ignore[union-attr]


def test_products_without_freshness_sla_are_not_cached(service: tuple[GatewayService, Clock]) -> None:
    svc, _ = service
    for sql in ("SELECT count(*) FROM customers.customers", "SELECT count(*) FROM information_schema.tables"):
        assert run(svc, sql)[1]["meshgate.cache"] == BYPASS
        assert run(svc, sql)[1]["meshgate.cache"] == BYPASS
    assert len(svc.cache) == 0  # type: ignore[arg-type]
    # customers has no SLA: the answer is not cached, but the orders fragment beside it is
    sql = "SELECT count(*) FROM orders.orders o JOIN customers.customers c USING (customer_id)"
    first, meta = run(svc, sql)
    assert meta["meshgate.cache"] == BYPASS and fragment_cache(meta, svc, sql) == {"orders.orders": MISS}
    again, meta = run(svc, sql)
    assert meta["meshgate.cache"] == BYPASS and fragment_cache(meta, svc, sql) == {"orders.orders": HIT}
    assert again.equals(first) and len(svc.cache) == 1  # type: ignore[arg-type]


def test_principals_share_entries_only_with_the_same_entitlements(live_mesh: LiveMesh, tmp_path: Path) -> None:
    svc = make_service(live_mesh.registry, tmp_path, policies=GOVERNED)
    alice = Principal("alice", frozenset({"analyst"}), {"region": "DE", "only_succeeded": True})
    alice_twin = Principal("erin", frozenset({"analyst"}), {"region": "DE", "only_succeeded": True})
    bob = Principal("bob", frozenset({"analyst"}), {"region": "US", "only_succeeded": False})
    sql = "SELECT succeeded, count(*) AS n FROM payments.payments GROUP BY succeeded ORDER BY succeeded"
    try:
        mine, meta = run(svc, sql, alice)
        assert meta["meshgate.cache"] == MISS and mine.column("succeeded").to_pylist() == [True]
        theirs, meta = run(svc, sql, bob)  # another row-filter value: another key
        assert meta["meshgate.cache"] == MISS and theirs.column("succeeded").to_pylist() == [False]
        twin, meta = run(svc, sql, alice_twin)  # same entitlements, another name: shared
        assert meta["meshgate.cache"] == HIT and twin.equals(mine)
        again, meta = run(svc, sql, bob)
        assert meta["meshgate.cache"] == HIT and again.equals(theirs)
    finally:
        svc.close()


def test_governed_fragments_are_shared_only_with_the_same_entitlements(live_mesh: LiveMesh, tmp_path: Path) -> None:
    """payments carries a row filter (succeeded = {user.only_succeeded}) and a hashed method: its
    fragment's SQL holds the bound values, so its entry is another principal's only when their
    entitlements are equal.  Two different queries share it (the shipments fragment differs)."""
    svc = make_service(live_mesh.registry, tmp_path, policies=GOVERNED)
    alice = Principal("alice", frozenset({"analyst"}), {"region": "DE", "only_succeeded": True})
    erin = Principal("erin", frozenset({"analyst"}), {"region": "DE", "only_succeeded": True})
    bob = Principal("bob", frozenset({"analyst"}), {"region": "US", "only_succeeded": False})
    counts = ("SELECT p.succeeded, count(*) AS n FROM payments.payments p JOIN shipping.shipments s USING (order_id) "
              "GROUP BY 1 ORDER BY 1")
    carriers = ("SELECT p.succeeded, max(s.carrier_id) AS c FROM payments.payments p JOIN shipping.shipments s USING (order_id) "
                "GROUP BY 1 ORDER BY 1")
    try:
        _, meta = run(svc, counts, alice)
        assert fragment_cache(meta, svc, counts, alice) == {"payments.payments": MISS, "shipping.shipments": MISS}
        answer, meta = run(svc, carriers, bob)  # other row-filter value: never alice's fragment
        assert fragment_cache(meta, svc, carriers, bob) == {"payments.payments": MISS, "shipping.shipments": MISS}
        assert answer.column("succeeded").to_pylist() == [False]
        answer, meta = run(svc, carriers, erin)  # alice's entitlements: her payments fragment
        assert fragment_cache(meta, svc, carriers, erin) == {"payments.payments": HIT, "shipping.shipments": HIT}
        assert answer.column("succeeded").to_pylist() == [True] and meta["meshgate.cache"] == MISS
        mine = run(svc, carriers, alice)
        assert mine[1]["meshgate.cache"] == HIT and mine[0].equals(answer)
    finally:
        svc.close()


def test_concurrent_identical_misses_run_the_sources_once(service: tuple[GatewayService, Clock]) -> None:
    svc, _ = service
    sql = FEDERATED + " -- single flight"
    svc.prepare(sql, ANONYMOUS)  # plan once, so the callers race on the fetch only
    n = 12
    barrier = threading.Barrier(n)
    results: list[tuple[pa.Table, dict[str, str]]] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait()
            results.append(run(svc, sql))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    before = len(svc.recent)
    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [r[1]["meshgate.cache"] for r in results].count(MISS) == 1
    assert all(r[0].equals(results[0][0]) for r in results)
    controls = list(svc.recent)[before:]
    assert len(controls) == n
    fragments = sum(len(c.sent) for c in controls)
    assert fragments == 3, [c.sent for c in controls]  # one execution: one fragment per source


def test_concurrent_misses_of_a_shared_fragment_fetch_it_once(service: tuple[GatewayService, Clock]) -> None:
    """Different queries (no result-level single flight between them) reading the same orders
    fragment at once: the source is asked for it once."""
    svc, _ = service
    queries = [BY_STATUS + " -- a", PAID_BY_STATUS + " -- b"] * 4
    for sql in set(queries):
        svc.prepare(sql, ANONYMOUS)
    barrier = threading.Barrier(len(queries))
    errors: list[BaseException] = []

    def call(sql: str) -> None:
        try:
            barrier.wait()
            run(svc, sql)
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    before = len(svc.recent)
    threads = [threading.Thread(target=call, args=(sql,)) for sql in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    sent = [text for c in list(svc.recent)[before:] for _, text in c.sent]
    # orders once (shared), payments twice (two different fragments): one query of each ran
    assert len(sent) == 3 and sum("READ_PARQUET" in s for s in sent) == 2, sent


def test_explain_shows_hit_or_miss_and_age_for_the_result_and_each_fragment(service: tuple[GatewayService, Clock]) -> None:
    svc, _ = service
    DYNAMIC = " (unless a dynamic filter changes its SQL at run time)"  # orders and payments are candidates

    def explain(sql: str) -> dict[str, str]:
        rows = svc.explain(sql, ANONYMOUS).to_pylist()
        return {(r["products"].split("@")[0] or r["step"]): r["cache"].replace(DYNAMIC, "")
                for r in rows if r["step"] != "dynamic filter"}

    assert explain(BY_STATUS) == {"orders.orders": MISS, "payments.payments": MISS, "residual": MISS}
    run(svc, BY_STATUS)
    shown = explain(BY_STATUS)
    assert shown["residual"] == shown["orders.orders"] == "hit (memory, age 1.0 h)", shown  # orders: an hour old
    assert shown["payments.payments"].startswith("hit (memory, age "), shown
    shown = explain(PAID_BY_STATUS)
    assert shown["residual"] == MISS and shown["payments.payments"] == MISS, shown
    assert shown["orders.orders"].startswith("hit (memory, age "), shown
    no_sla = "bypass: customers.customers declares no sla.freshness"
    assert explain("SELECT count(*) FROM customers.customers") == {"customers.customers": no_sla, "residual": no_sla}
    assert explain("SELECT status FROM orders.orders LIMIT 3") == {  # one source: a passthrough
        "orders.orders": "its rows are the result (cached at the result level)", "result": MISS,
    }
    assert svc.explain(BY_STATUS, ANONYMOUS, max_staleness=0).column("cache")[-1].as_py().startswith("bypass: the client")


def test_by_the_real_clock_fresh_demo_data_is_cached(live_mesh: LiveMesh) -> None:
    """The demo's data ends two hours before it was made, inside the orders' 1-day freshness SLA,
    so by the real clock a repeated query is a hit (data past its SLA bypasses: test_cache_freshness)."""
    svc = live_mesh.service
    sql = "SELECT count(*) FROM orders.orders WHERE status = 'pending'"
    assert run(svc, sql)[1]["meshgate.cache"] in (MISS, HIT)
    _, meta = run(svc, sql)
    assert meta["meshgate.cache"] == HIT and float(meta["meshgate.age_seconds"]) < DAY


def test_the_byte_bound_evicts_and_large_results_are_not_kept(live_mesh: LiveMesh, tmp_path: Path) -> None:
    probe = make_service(live_mesh.registry, tmp_path)
    one = probe.execute("SELECT * FROM orders.orders WHERE order_id < 200", ANONYMOUS).read_all().nbytes
    probe.close()
    svc = make_service(live_mesh.registry, tmp_path, max_bytes=int(one * 2.5), max_entry_bytes=int(one * 2))
    try:
        queries = [f"SELECT * FROM orders.orders WHERE order_id < 200 AND {i} = {i}" for i in range(4)]
        for sql in queries:
            assert run(svc, sql)[1]["meshgate.cache"] == MISS
        assert svc.cache.evictions == 2 and len(svc.cache) == 2  # type: ignore[union-attr]
        assert svc.cache.bytes <= svc.cache.max_bytes  # type: ignore[union-attr]
        assert run(svc, queries[0])[1]["meshgate.cache"] == MISS  # evicted, least recently used
        assert run(svc, queries[3])[1]["meshgate.cache"] == HIT
        big = "SELECT * FROM orders.orders"  # larger than the per-entry limit: streamed, not kept
        full, meta = run(svc, big)
        assert meta["meshgate.cache"] == MISS and full.num_rows > 0
        again, meta = run(svc, big)
        assert meta["meshgate.cache"] == MISS and again.num_rows == full.num_rows
        assert svc.cache.bytes <= svc.cache.max_bytes  # type: ignore[union-attr]
    finally:
        svc.close()


def test_flight_results_carry_cache_metadata_and_audit_records_hits(live_mesh: LiveMesh, tmp_path: Path) -> None:
    """DoGet's stream schema carries the metadata (pyarrow.flight sees it; the ADBC driver
    hands out the GetFlightInfo schema and drops it)."""
    import json

    from gateway.flight import FlightSql_pb2 as pb
    from gateway.flight.server import pack

    svc = make_service(live_mesh.registry, tmp_path)
    server = MeshFlightServer("grpc://127.0.0.1:0", svc, principal_for=lambda _context: ANONYMOUS)
    client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
    sql = "SELECT method, count(*) AS n FROM payments.payments GROUP BY method ORDER BY method"
    try:
        metas = []
        for _ in range(2):
            info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(pb.CommandStatementQuery(query=sql))))
            table = client.do_get(info.endpoints[0].ticket).read_all()
            metas.append({k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()})
        assert metas[0]["meshgate.cache"] == MISS and metas[1]["meshgate.cache"] == HIT
        assert metas[1]["meshgate.products"].startswith("payments.payments@") and "meshgate.age_seconds" in metas[1]
        svc.audit.close()
        records = [json.loads(line) for line in svc.audit.path.read_text().splitlines()]
        mine = [r for r in records if r.get("query") == sql]
        assert [r.get("cache") for r in mine][-2:] == [MISS, HIT], mine[-2:]
        assert mine[-1]["fragments"] == []  # the hit contacted no source
        (done,) = [r for r in records if r.get("type") == "complete" and r["id"] == mine[-1]["id"]]
        assert done["status"] == "ok" and done["rows"] == table.num_rows
    finally:
        client.close()
        server.shutdown()
        svc.close()


