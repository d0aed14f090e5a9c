"""Result-cache benchmark: a dashboard workload with and without the cache, side by side.

The demo mesh (orders in DuckDB, payments in Parquet, shipments in DuckDB here, no PostgreSQL
needed; all three declare ``sla.freshness``) served by an in-process gateway over Flight SQL on a
real socket.  20 distinct dashboard queries (most federated across two or three sources), 16
concurrent ADBC clients, each picking queries with Zipf(s=1.1) repeats.  The same request
sequence runs twice: ``--cache-bytes 0`` (no cache) and the default cache (starting cold).

    python benchmarks/cache_bench.py [--scale 0.2] [--requests 40] [--clients 16]

Writes benchmarks/results/cache_bench.json: per mode throughput, p50/p99 latency, hits, and the
ratios (cache vs none).  Clients and server share one Python process (the ADBC driver runs in Go
and releases the GIL, the gateway's Flight server threads do not always), so absolute numbers are
lower than with separate processes; the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql

from gateway.audit import AuditLog
from gateway.cli import load_descriptors
from gateway.demo_data import generate_demo_mesh
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.service import GatewayService, Settings
from policies import ANONYMOUS
from policies.engine import PolicyEngine

OPEN_POLICIES = Path(__file__).resolve().parent.parent / "tests" / "policies" / "open"

QUERIES = [
    "SELECT status, count(*) AS n, sum(total_amount) AS revenue FROM orders.orders GROUP BY status ORDER BY status",
    "SELECT method, count(*) AS n, sum(amount) AS paid FROM payments.payments GROUP BY method ORDER BY method",
    "SELECT carrier_id, count(*) AS n FROM shipping.shipments GROUP BY carrier_id ORDER BY carrier_id",
    "SELECT o.status, p.method, count(*) AS n, sum(p.amount) AS paid FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id GROUP BY o.status, p.method ORDER BY 1, 2",
    "SELECT date_trunc('month', o.order_ts) AS month, sum(p.amount) AS paid FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id WHERE p.succeeded GROUP BY 1 ORDER BY 1",
    "SELECT s.carrier_id, avg(o.total_amount) AS avg_order, count(*) AS n FROM orders.orders o "
    "JOIN shipping.shipments s ON s.order_id = o.order_id GROUP BY s.carrier_id ORDER BY 1",
    "SELECT o.status, p.method, s.carrier_id, count(*) AS n FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id JOIN shipping.shipments s ON s.order_id = o.order_id "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    "SELECT o.currency, sum(p.amount) AS paid, count(DISTINCT o.customer_id) AS customers FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id GROUP BY o.currency ORDER BY 1",
    "SELECT p.succeeded, count(*) AS n, avg(o.total_amount) AS avg_total FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id GROUP BY 1 ORDER BY 1",
    "SELECT o.customer_id, sum(p.amount) AS paid FROM orders.orders o JOIN payments.payments p "
    "ON p.order_id = o.order_id GROUP BY 1 ORDER BY paid DESC, 1 LIMIT 20",
    "SELECT date_trunc('week', o.order_ts) AS week, count(*) AS orders, count(s.order_id) AS shipped FROM orders.orders o "
    "LEFT JOIN shipping.shipments s ON s.order_id = o.order_id GROUP BY 1 ORDER BY 1",
    "SELECT count(*) AS n, sum(total_amount) AS revenue FROM orders.orders WHERE status = 'delivered'",
    "SELECT p.method, avg(extract(epoch FROM p.paid_at - o.order_ts)) AS seconds_to_pay FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id GROUP BY 1 ORDER BY 1",
    "SELECT s.carrier_id, p.method, count(*) AS n FROM shipping.shipments s JOIN payments.payments p "
    "ON p.order_id = s.order_id GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT o.status, count(*) AS n FROM orders.orders o WHERE o.order_id IN (SELECT order_id FROM payments.payments "
    "WHERE NOT succeeded) GROUP BY 1 ORDER BY 1",
    "SELECT date_trunc('month', paid_at) AS month, method, count(*) AS n FROM payments.payments GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT o.currency, s.carrier_id, sum(o.total_amount) AS revenue FROM orders.orders o "
    "JOIN shipping.shipments s ON s.order_id = o.order_id GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT count(*) AS orders_without_payment FROM orders.orders o LEFT JOIN payments.payments p "
    "ON p.order_id = o.order_id WHERE p.order_id IS NULL",
    "SELECT o.status, max(p.amount) AS largest, min(p.amount) AS smallest FROM orders.orders o "
    "JOIN payments.payments p ON p.order_id = o.order_id GROUP BY 1 ORDER BY 1",
    "SELECT method, succeeded, count(*) AS n FROM payments.payments GROUP BY 1, 2 ORDER BY 1, 2",
]


def zipf_sequence(n_queries: int, n_requests: int, s: float, seed: int) -> list[int]:
    weights = [1 / (rank + 1) ** s for rank in range(n_queries)]
    rng = random.Random(seed)
    order = list(range(n_queries))
    rng.shuffle(order)  # which query is most popular is random, not the first one listed
    return [order[i] for i in rng.choices(range(n_queries), weights=weights, k=n_requests)]


def run_mode(registry: Registry, tmp: Path, cache_bytes: int, plans: list[list[int]]) -> dict:
    settings = Settings(cache_bytes=cache_bytes, max_concurrent_queries=8, max_queued_queries=256)
    service = GatewayService(registry, settings, PolicyEngine.load(OPEN_POLICIES), AuditLog(tmp / f"audit-{cache_bytes}.log"))
    server = MeshFlightServer("grpc://127.0.0.1:0", service, principal_for=lambda _context: ANONYMOUS)
    uri = f"grpc://127.0.0.1:{server.port}"
    for sql in QUERIES:  # plan every query once (both modes), so the runs compare execution only
        service.prepare(sql, ANONYMOUS)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(plans) + 1)

    def client(sequence: list[int]) -> None:
        with flightsql.connect(uri) as conn, conn.cursor() as cur:
            barrier.wait()
            for i in sequence:
                started = time.perf_counter()
                try:
                    cur.execute(QUERIES[i])
                    cur.fetch_arrow_table()
                except Exception as err:  # noqa: BLE001
                    with lock:
                        errors.append(f"{i}: {err}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cache = service.cache
    server.shutdown()
    service.close()
    latencies.sort()
    return {
        "cache_bytes": cache_bytes,
        "requests": len(latencies),
        "errors": errors[:5],
        "seconds": round(elapsed, 3),
        "throughput_qps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
        "cache_hits": cache.hits if cache else 0,
        "cache_misses": cache.misses if cache else 0,
        "cache_bytes_used": cache.bytes if cache else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.2, help="demo mesh scale (default 0.2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=40, help="requests per client (default 40)")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache_bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as scratch:
        tmp = Path(scratch)
        mesh = generate_demo_mesh(tmp / "demo", scale=args.scale, progress=False)
        registry = Registry(tmp / "registry.db")
        descriptors, errors = load_descriptors([mesh.products_dir])
        assert not errors, errors
        registry.register(descriptors)
        plans = [zipf_sequence(len(QUERIES), args.requests, args.zipf, seed) for seed in range(args.clients)]
        without = run_mode(registry, tmp, 0, plans)
        with_cache = run_mode(registry, tmp, 256 * 1024**2, plans)
    result = {
        "workload": {"queries": len(QUERIES), "clients": args.clients, "requests_per_client": args.requests,
                     "zipf_s": args.zipf, "demo_scale": args.scale},
        "without_cache": without,
        "with_cache": with_cache,
        "ratios": {
            "throughput": round(with_cache["throughput_qps"] / without["throughput_qps"], 2),
            "p50_latency": round(without["p50_ms"] / with_cache["p50_ms"], 2),
            "p99_latency": round(without["p99_ms"] / with_cache["p99_ms"], 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
