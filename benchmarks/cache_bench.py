"""Cache benchmark: a dashboard workload with and without the cache, and hit against miss on
federated TPC-H at scale factor 1.

1. Dashboard.  The demo mesh (orders in DuckDB, payments in Parquet, shipments in DuckDB here, no
   PostgreSQL needed; all three declare ``sla.freshness`` with a freshness column) served by an
   in-process gateway over Flight SQL on a real socket.  20 distinct dashboard queries (most
   federated across two or three sources), 16 concurrent ADBC clients, each picking queries with
   Zipf(s=1.1) repeats.  The same request sequence runs twice: no cache, and the cache (starting
   cold).  The demo's rows are from 2024/25, long past their 1-day SLA by today's clock (the
   cache would rightly bypass them all), so the cache's clock runs an hour after the data's
   newest row: watermarks are still read from the sources (``max()`` every 5 s per product).

2. TPC-H SF1.  The federated split of ``benchmarks/federated_tpch.py`` (its data and set-up
   functions: PostgreSQL customer/nation/region, SQLite orders, Parquet the rest), each product
   declaring ``sla: {freshness: 1d}``, served by an in-process gateway over Flight SQL.  Per query,
   ``--repeat`` times: a miss (both cache levels cleared), a result hit, and a result miss whose
   fragments hit (only the residual query runs).  Target: a hit at least 20x faster than the miss.

    python benchmarks/cache_bench.py [--scale 0.2] [--requests 40] [--clients 16]
           [--tpch-scale 1] [--tpch-data-dir benchmarks/data] [--pg-uri URI] [--skip-tpch]

Writes benchmarks/results/cache_bench.json and .png.  Clients and server share one Python process
(the ADBC driver runs in Go and releases the GIL, the gateway's Flight server threads do not
always), so absolute numbers are lower than with separate processes; the comparison is like for like.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import adbc_driver_flightsql.dbapi as flightsql

from gateway.audit import AuditLog
from gateway.cache import RESULT, ResultCache
from gateway.cli import load_descriptors
from gateway.demo_data import generate_demo_mesh
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.service import GatewayService, Settings
from gateway.sources import SourceManager
from gateway.watermarks import stalest_newest_data
from policies import ANONYMOUS
from policies.engine import PolicyEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import federated_tpch as tpch  # noqa: E402 - its data and set-up functions, reused

OPEN_POLICIES = Path(__file__).resolve().parent.parent / "tests" / "policies" / "open"
HIT_TARGET = 20.0

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


def data_clock(registry: Registry, after: float = 3600.0) -> Callable[[], float]:
    """Wall time shifted so that it is ``after`` seconds past the oldest of the products' newest
    freshness-column values (see the module docstring)."""
    sources = SourceManager()
    try:
        newest = stalest_newest_data(registry.catalog().products(), sources.connector_for)
    finally:
        sources.close()
    assert newest is not None, "the dashboard's products declare freshness columns"
    offset = time.time() - (newest + after)
    return lambda: time.time() - offset


def run_mode(registry: Registry, tmp: Path, cache_bytes: int, plans: list[list[int]]) -> dict:
    settings = Settings(cache_bytes=cache_bytes, max_concurrent_queries=8, max_queued_queries=256)
    cache = ResultCache(cache_bytes, clock=data_clock(registry)) if cache_bytes else None
    service = GatewayService(registry, settings, PolicyEngine.load(OPEN_POLICIES), AuditLog(tmp / f"audit-{cache_bytes}.log"),
                             cache=cache)
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
        "fragment_hits": cache.fragment_hits if cache else 0,
        "fragment_misses": cache.fragment_misses if cache else 0,
        "cache_bytes_used": cache.bytes if cache else 0,
    }


def dashboard(args: argparse.Namespace) -> dict[str, Any]:
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
    return {
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


def _timed(cursor: Any, sql: str) -> tuple[float, Any]:
    started = time.perf_counter()
    cursor.execute(sql)
    table = cursor.fetch_arrow_table()
    return (time.perf_counter() - started) * 1000, table


def tpch_hits(args: argparse.Namespace) -> dict[str, Any]:
    """Miss, fragment-level hit and result hit of each federated TPC-H query (module docstring)."""
    data_dir = args.tpch_data_dir.resolve()
    scale_dir = data_dir / tpch.scale_label(args.tpch_scale)
    parquet_dir = scale_dir / "parquet"
    split = tpch.SPLITS[tpch.DEFAULT_SPLIT]
    tpch.generate_parquet(parquet_dir, args.tpch_scale)
    sqlite_path = tpch.sqlite_file(scale_dir, split["sqlite"])
    tpch.build_sqlite(sqlite_path, parquet_dir, split["sqlite"])
    pg_schema = "tpch_" + tpch.scale_label(args.tpch_scale).replace(".", "_")
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        pg_uri = args.pg_uri or stack.enter_context(tpch.throwaway_postgres())
        tpch.load_postgres(pg_uri, pg_schema, parquet_dir, split["postgres"])
        descriptor_uri, pg_env = tpch.descriptor_pg_uri(pg_uri)
        os.environ.update(pg_env)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cache-bench-tpch-")))
        tpch.write_descriptors(tmp / "products", split, descriptor_uri, pg_schema, sqlite_path, parquet_dir, sla={"freshness": "1d"})
        registry = Registry(tmp / "registry.db")
        descriptors, errors = load_descriptors([tmp / "products"])
        assert not errors, errors
        registry.register(descriptors)
        cache = ResultCache(2 * 1024**3, max_entry_bytes=512 * 1024**2)
        service = GatewayService(registry, Settings(query_timeout=600), PolicyEngine.load(OPEN_POLICIES),
                                 AuditLog(tmp / "audit.log"), cache=cache)
        stack.callback(service.close)
        server = MeshFlightServer("grpc://127.0.0.1:0", service, principal_for=lambda _context: ANONYMOUS)
        stack.callback(server.shutdown)
        conn = stack.enter_context(contextlib.closing(flightsql.connect(f"grpc://127.0.0.1:{server.port}", autocommit=True)))
        cursor = stack.enter_context(contextlib.closing(conn.cursor()))
        for name, sql in tpch.load_queries([int(q) for q in args.tpch_queries.split(",")]):
            _timed(cursor, sql)  # warm: plan, connections, source statistics
            miss, fragments, hit, same = [], [], [], True
            for _ in range(args.repeat):
                cache.clear()
                t_miss, expected = _timed(cursor, sql)
                t_hit, answer = _timed(cursor, sql)
                cache.clear(RESULT)
                t_fragments, again = _timed(cursor, sql)
                miss.append(t_miss), hit.append(t_hit), fragments.append(t_fragments)
                same = same and answer.equals(expected) and again.equals(expected)
            row = {
                "query": name, "rows": expected.num_rows, "same_rows": same,
                "miss_ms": round(statistics.median(miss), 2), "fragment_hit_ms": round(statistics.median(fragments), 2),
                "hit_ms": round(statistics.median(hit), 3),
                "runs_ms": {"miss": [round(x, 2) for x in miss], "fragment_hit": [round(x, 2) for x in fragments],
                            "hit": [round(x, 3) for x in hit]},
            }
            row["miss_over_hit"] = round(row["miss_ms"] / row["hit_ms"], 1)
            row["miss_over_fragment_hit"] = round(row["miss_ms"] / row["fragment_hit_ms"], 2)
            rows.append(row)
            print(f"  {name}: miss {row['miss_ms']:9.1f} ms   fragments hit {row['fragment_hit_ms']:8.1f} ms   "
                  f"hit {row['hit_ms']:7.2f} ms   miss/hit {row['miss_over_hit']:7.1f}x", flush=True)
    return {
        "scale_factor": args.tpch_scale, "split": tpch.DEFAULT_SPLIT, "repeat": args.repeat,
        "target_miss_over_hit": HIT_TARGET,
        "all_meet_target": all(r["miss_over_hit"] >= HIT_TARGET for r in rows),
        "queries": rows,
    }


def write_chart(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tpch_rows = (result.get("tpch") or {}).get("queries", [])
    fig, axes = plt.subplots(1, 2 if tpch_rows else 1, figsize=(13 if tpch_rows else 6, 4.5), squeeze=False)
    d = result["dashboard"]
    ax = axes[0][0]
    labels = ["throughput (q/s)", "p50 (ms)", "p99 (ms)"]
    keys = ["throughput_qps", "p50_ms", "p99_ms"]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [d["without_cache"][k] for k in keys], 0.4, label="no cache")
    ax.bar([x + 0.2 for x in xs], [d["with_cache"][k] for k in keys], 0.4, label="cache")
    ax.set_xticks(list(xs), labels)
    ax.set_yscale("log")
    ratios = d["ratios"]
    ax.set_title(f"dashboard: {ratios['throughput']}x throughput, p50 {ratios['p50_latency']}x, p99 {ratios['p99_latency']}x")
    ax.legend()
    if tpch_rows:
        ax = axes[0][1]
        xs = range(len(tpch_rows))
        for offset, key, label in ((-0.27, "miss_ms", "miss"), (0, "fragment_hit_ms", "fragments hit"), (0.27, "hit_ms", "hit")):
            ax.bar([x + offset for x in xs], [r[key] for r in tpch_rows], 0.27, label=label)
        ax.set_xticks(list(xs), [f"{r['query']}\n{r['miss_over_hit']:.0f}x" for r in tpch_rows])
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"TPC-H SF{result['tpch']['scale_factor']:g} federated: miss vs hit (target >= {HIT_TARGET:g}x)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.2, help="demo mesh scale (default 0.2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=40, help="requests per client (default 40)")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--tpch-scale", type=float, default=1.0, help="TPC-H scale factor (default 1)")
    parser.add_argument("--tpch-queries", default=tpch.DEFAULT_QUERIES, help=f"default {tpch.DEFAULT_QUERIES}")
    parser.add_argument("--tpch-data-dir", type=Path, default=tpch.BENCH_DIR / "data",
                        help="federated_tpch.py's data dir (generated there when missing)")
    parser.add_argument("--pg-uri", help="PostgreSQL for customer/nation/region (default: a throw-away server)")
    parser.add_argument("--repeat", type=int, default=5, help="TPC-H runs per query (default 5)")
    parser.add_argument("--skip-tpch", action="store_true", help="the dashboard workload only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cache_bench.json")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "cache_bench",
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": tpch.machine_info(),
        "git": tpch.git_info(),
    }
    print("dashboard workload ...", flush=True)
    result["dashboard"] = dashboard(args)
    print(json.dumps(result["dashboard"]["ratios"]), flush=True)
    if not args.skip_tpch:
        print(f"TPC-H SF{args.tpch_scale:g}: miss, fragments hit, hit ...", flush=True)
        result["tpch"] = tpch_hits(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_chart(args.out.with_suffix(".png"), result)
    d = result["dashboard"]
    print(f"\n{'':24}{'no cache':>12}{'cache':>12}{'ratio':>9}")
    for label, key, ratio in (("throughput (q/s)", "throughput_qps", "throughput"), ("p50 latency (ms)", "p50_ms", "p50_latency"),
                              ("p99 latency (ms)", "p99_ms", "p99_latency")):
        print(f"{label:24}{d['without_cache'][key]:>12}{d['with_cache'][key]:>12}{d['ratios'][ratio]:>8}x")
    if "tpch" in result:
        print(f"\n{'TPC-H':8}{'miss ms':>12}{'frag-hit ms':>13}{'hit ms':>10}{'miss/hit':>10}")
        for r in result["tpch"]["queries"]:
            print(f"{r['query']:8}{r['miss_ms']:>12}{r['fragment_hit_ms']:>13}{r['hit_ms']:>10}{r['miss_over_hit']:>9}x")
        print(f"every hit >= {HIT_TARGET:g}x faster than its miss: {result['tpch']['all_meet_target']}")
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
