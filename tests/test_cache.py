"""The final-result cache (gateway/cache.py) on the live demo mesh, through ``service.execute``
and over Flight: hits, freshness with a controllable clock, new versions, governance in the key,
single flight, the byte bound.

Demo products with a freshness SLA: orders.orders (DuckDB, 1d), payments.payments (Parquet, 1d),
shipping.shipments (PostgreSQL, 2d); customers.customers has none (never cached).
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from gateway.audit import AuditLog
from gateway.cache import BYPASS, HIT, MISS, ResultCache, parse_duration
from gateway.descriptor import validate
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.service import GatewayService
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine
from tests.mesh import OPEN_POLICIES, LiveMesh

pytestmark = pytest.mark.postgres

GOVERNED = Path(__file__).parent / "policies" / "governed"
DAY = 86400.0
FEDERATED = """
    SELECT o.status, p.method, count(*) AS n, sum(p.amount) AS paid
    FROM orders.orders o JOIN payments.payments p ON p.order_id = o.order_id
    JOIN shipping.shipments s ON s.order_id = o.order_id
    GROUP BY o.status, p.method ORDER BY o.status, p.method
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_service(registry: Registry, tmp: Path, clock: Clock | None = None, policies: Path = OPEN_POLICIES,
                 max_bytes: int = 256 * 1024**2, max_entry_bytes: int = 64 * 1024**2) -> GatewayService:
    cache = ResultCache(max_bytes, max_entry_bytes, clock=clock or time.monotonic)
    return GatewayService(registry, policies=PolicyEngine.load(policies),
                          audit=AuditLog(tmp / f"audit-{uuid.uuid4().hex[:8]}.log"), cache=cache)


def run(service: GatewayService, sql: str, principal: Principal = ANONYMOUS, **kwargs) -> tuple[pa.Table, dict[str, str]]:
    reader = service.execute(sql, principal, **kwargs)
    table = reader.read_all()
    meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items() if k.startswith(b"meshgate.")}
    return table, meta


@pytest.fixture
def service(live_mesh: LiveMesh, tmp_path: Path) -> Iterator[tuple[GatewayService, Clock]]:
    clock = Clock()
    svc = make_service(live_mesh.registry, tmp_path, clock)
    yield svc, clock
    svc.close()


def test_parse_duration() -> None:
    assert parse_duration("5m") == 300 and parse_duration("1d") == DAY and parse_duration(2) == 2.0
    assert parse_duration("500ms") == 0.5 and parse_duration("30") == 30 and parse_duration(None) is None
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_hit_after_miss_same_rows_at_least_10x_faster(live_mesh: LiveMesh, tmp_path: Path) -> None:
    svc = make_service(live_mesh.registry, tmp_path)
    try:
        run(svc, FEDERATED)  # plan and connections warm; each miss below starts from a clean cache
        misses, hits = [], []
        for _ in range(5):
            svc.cache.clear()  # type: ignore[union-attr]
            started = time.perf_counter()
            missed, meta_miss = run(svc, FEDERATED)
            misses.append(time.perf_counter() - started)
            started = time.perf_counter()
            hit, meta_hit = run(svc, FEDERATED)
            hits.append(time.perf_counter() - started)
        miss_seconds = statistics.median(misses)
        assert meta_miss["meshgate.cache"] == MISS and meta_hit["meshgate.cache"] == HIT
        assert hit.equals(missed) and missed.num_rows > 0
        assert len(svc.recent[-1].sent) == 0  # the hit sent nothing to any source
        assert statistics.median(hits) * 10 <= miss_seconds, (misses, hits)
        products = meta_hit["meshgate.products"].split(",")
        assert {p.split("@")[0] for p in products} == {"orders.orders", "payments.payments", "shipping.shipments"}
        assert all("@" in p for p in products) and float(meta_hit["meshgate.age_seconds"]) >= 0
    finally:
        svc.close()


def test_never_served_past_the_products_freshness_sla(service: tuple[GatewayService, Clock]) -> None:
    svc, clock = service
    sql = "SELECT status, count(*) FROM orders.orders JOIN payments.payments USING (order_id) GROUP BY status"
    assert run(svc, sql)[1]["meshgate.cache"] == MISS
    clock.now += DAY - 1  # orders and payments: freshness 1d
    _, meta = run(svc, sql)
    assert meta["meshgate.cache"] == HIT and float(meta["meshgate.age_seconds"]) == pytest.approx(DAY - 1)
    clock.now += 1  # exactly the SLA: too old
    _, meta = run(svc, sql)
    assert meta["meshgate.cache"] == MISS and float(meta["meshgate.age_seconds"]) == 0
    assert run(svc, sql)[1]["meshgate.cache"] == HIT


def test_max_staleness_is_stricter_than_the_sla(service: tuple[GatewayService, Clock]) -> None:
    svc, clock = service
    sql = "SELECT count(*) FROM shipping.shipments"  # freshness 2d
    assert run(svc, sql)[1]["meshgate.cache"] == MISS
    clock.now += 60
    assert run(svc, sql, max_staleness=120)[1]["meshgate.cache"] == HIT
    assert run(svc, sql, max_staleness=30)[1]["meshgate.cache"] == MISS  # refetched, now age 0
    assert run(svc, sql, max_staleness=0)[1]["meshgate.cache"] == BYPASS  # no staleness allowed


def test_products_without_freshness_sla_are_not_cached(service: tuple[GatewayService, Clock]) -> None:
    svc, _ = service
    for sql in ("SELECT count(*) FROM customers.customers",
                "SELECT count(*) FROM orders.orders o JOIN customers.customers c USING (customer_id)",
                "SELECT count(*) FROM information_schema.tables"):
        assert run(svc, sql)[1]["meshgate.cache"] == BYPASS
        assert run(svc, sql)[1]["meshgate.cache"] == BYPASS
    assert len(svc.cache) == 0  # type: ignore[arg-type]


def test_a_new_product_version_is_a_miss(live_mesh: LiveMesh, tmp_path: Path) -> None:
    from gateway.cli import load_descriptors

    registry = Registry(tmp_path / "registry.db")
    descriptors, errors = load_descriptors([live_mesh.mesh.products_dir])
    assert not errors
    registry.register(descriptors)
    svc = make_service(registry, tmp_path, Clock())
    try:
        sql = "SELECT status, count(*) FROM orders.orders GROUP BY status ORDER BY status"
        first, meta = run(svc, sql)
        assert meta["meshgate.cache"] == MISS and run(svc, sql)[1]["meshgate.cache"] == HIT
        orders = next(d for d in descriptors if d.product_id == "orders.orders")
        doc = copy.deepcopy(orders.raw)
        doc["metadata"]["version"] = "1.0.1" if orders.version != "1.0.1" else "1.0.2"
        registry.register([validate(doc, base_dir=orders.base_dir)])
        deadline = time.monotonic() + 5
        while registry.catalog(max_age=0).resolve("orders", "orders").version != doc["metadata"]["version"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        again, meta = run(svc, sql)
        assert meta["meshgate.cache"] == MISS and f"orders.orders@{doc['metadata']['version']}" in meta["meshgate.products"]
        assert again.equals(first)
        assert run(svc, sql)[1]["meshgate.cache"] == HIT
    finally:
        svc.close()


def test_principals_share_entries_only_with_the_same_entitlements(live_mesh: LiveMesh, tmp_path: Path) -> None:
    svc = make_service(live_mesh.registry, tmp_path, Clock(), policies=GOVERNED)
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


def test_the_byte_bound_evicts_and_large_results_are_not_kept(live_mesh: LiveMesh, tmp_path: Path) -> None:
    probe = make_service(live_mesh.registry, tmp_path)
    one = probe.execute("SELECT * FROM orders.orders WHERE order_id < 200", ANONYMOUS).read_all().nbytes
    probe.close()
    svc = make_service(live_mesh.registry, tmp_path, Clock(), max_bytes=int(one * 2.5), max_entry_bytes=int(one * 2))
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

    svc = make_service(live_mesh.registry, tmp_path, Clock())
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


def test_flight_session_max_staleness_reaches_the_cache(live_mesh: LiveMesh, tmp_path: Path) -> None:
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import ConnectionOptions

    clock = Clock()
    svc = make_service(live_mesh.registry, tmp_path, clock)
    server = MeshFlightServer("grpc://127.0.0.1:0", svc, principal_for=lambda _context: ANONYMOUS)
    sql = "SELECT count(*) AS n FROM shipping.shipments"
    cookies = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}

    def status(cur) -> str:  # noqa: ANN001 - the ADBC driver drops DoGet's schema metadata: count
        hits = svc.cache.hits  # type: ignore[union-attr]
        cur.execute(sql)
        cur.fetch_arrow_table()
        return "hit" if svc.cache.hits > hits else "miss"  # type: ignore[union-attr]

    try:
        with flightsql.connect(f"grpc://127.0.0.1:{server.port}", db_kwargs=cookies, autocommit=True) as conn:
            with conn.cursor() as cur:
                assert status(cur) == "miss"
                clock.now += 120
                assert status(cur) == "hit"  # shipments: freshness 2d
                conn.adbc_connection.set_options(**{ConnectionOptions.OPTION_SESSION_OPTION_PREFIX.value + "max_staleness": "1m"})
                assert status(cur) == "miss"  # 120 s old is too old for this session
                clock.now += 30
                assert status(cur) == "hit"
    finally:
        server.shutdown()
        svc.close()
