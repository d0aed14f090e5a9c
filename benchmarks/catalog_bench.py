"""Catalog benchmark: 10,000 products across 100 domains; search latency, registration throughput
and the time from ``meshgate product register`` to the first query that reads the new product.

    python benchmarks/catalog_bench.py [--products 10000] [--domains 100] [--searches 1000]

1. **Registration**: the generated descriptors go into a fresh registry through
   ``Registry.register`` (one transaction for all of them, and again in batches of 100 and one by
   one into other registries), and through ``meshgate product register`` (one command for a
   folder of descriptors, and one command per file), products per second each.
2. **Usage**: 20,000 queries from 200 principals (Zipf over the products) are written to the
   audit log with ``AuditLog.begin``, so ranking has usage to boost with.
3. **Search, in-process**: 1,000 searches (single words, plurals, two and three words, exact
   names, prefixes, with domain, tag and owner filters, and browsing without words) through
   ``search_as`` as an analyst under the packaged policies (``pii`` products hidden): p50, p99.
4. **Search, over REST**: the same 1,000 through ``GET /api/v1/catalog/search`` of a
   ``meshgate serve`` process (HTTP keep-alive, a bearer token from ``POST /api/v1/auth/token``:
   Basic credentials cost an scrypt per request by design), measured at the client.
5. **Register to first query**: with that gateway running, ``meshgate product register`` of a new
   product, then an ADBC Flight SQL client polling ``SELECT count(*)`` on it every 20 ms: the
   time from starting the command (and from the command's exit) to the first answer; 5 runs.

Prints a side-by-side table against the targets and writes benchmarks/results/catalog_bench.json
and catalog_bench.png (search latency distributions).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.audit import AuditLog  # noqa: E402
from gateway.catalog_search import search_as  # noqa: E402
from gateway.descriptor import Descriptor, validate  # noqa: E402
from gateway.registry import Registry  # noqa: E402
from gateway.service import GatewayService  # noqa: E402
from gateway.users import add_user  # noqa: E402
from policies import Principal  # noqa: E402
from policies.decision import Decision  # noqa: E402
from policies.engine import PolicyEngine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MESHGATE = [sys.executable, "-m", "gateway.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TARGETS = {"search_p99_ms": 10.0, "register_to_query_s": 2.0}
ANALYST = Principal("ana", frozenset({"analyst"}), {"region": "DE"})
PASSWORD = "ana-bench-Pw-1"

AREAS = ["sales", "marketing", "finance", "crm", "logistics", "hr", "supply", "payments", "support", "product",
         "risk", "fraud", "billing", "inventory", "procurement", "legal", "security", "analytics", "web", "mobile",
         "ads", "pricing", "catalog", "shipping", "returns"]
REGIONS = ["emea", "amer", "apac", "latam"]
NOUNS = ("customer order invoice payment refund shipment parcel carrier warehouse stock item sku product price "
         "discount coupon campaign click impression session visit page event device user account subscription "
         "plan contract supplier vendor purchase budget forecast revenue margin cost expense ledger journal "
         "transaction balance risk score fraud alert ticket case agent call chat survey review rating return "
         "claim employee salary team role office region country city store channel partner lead opportunity "
         "quote deal churn retention cohort funnel conversion attribution audience segment inventory demand "
         "supply route delivery fleet driver vehicle fuel emission energy meter reading sensor").split()
QUALIFIERS = "daily weekly monthly hourly raw clean enriched aggregated latest history snapshot summary detail".split()
FILLER = "the of per and with for by from all each in on as every".split()
COLUMN_WORDS = ("id name code type status amount currency date time created updated deleted country city email phone "
                "total count quantity price rate percent flag category channel source target owner level tier").split()
TAGS = ["finance", "marketing", "ops", "kpi", "reference", "gold", "silver", "bronze", "raw", "curated", "realtime",
        "batch", "ml", "reporting", "external", "internal", "certified", "experimental", "gdpr", "customer",
        "product", "revenue", "cost", "risk", "compliance", "web", "mobile", "iot", "logistics", "hr"]


# --- generation --------------------------------------------------------------------------------------------


def generate(count: int, domains: int, source: Path, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` descriptor documents spread evenly over ``domains`` domains, all reading the table
    ``items`` of the SQLite file ``source`` (id, label + generated columns the catalog indexes,
    each a view's copy of ``label``)."""
    rng = random.Random(seed)
    domain_names = [f"{area}_{region}" for area in AREAS for region in REGIONS][:domains]
    docs: list[dict[str, Any]] = []
    for i in range(count):
        domain = domain_names[i % len(domain_names)]
        words = rng.sample(NOUNS, rng.choice((1, 2, 2, 3)))
        if rng.random() < 0.4:
            words.append(rng.choice(QUALIFIERS))
        name = "_".join(words) + f"_{i // len(domain_names)}"
        description = " ".join(rng.choice(NOUNS if rng.random() < 0.6 else FILLER) for _ in range(rng.randint(8, 20)))
        columns = [{"name": "id", "type": "int64", "required": True, "primary_key": True}, {"name": "label", "type": "string"}]
        for c in rng.sample(range(len(NOUNS) * len(COLUMN_WORDS)), rng.randint(3, 13)):
            column = f"{NOUNS[c // len(COLUMN_WORDS)]}_{COLUMN_WORDS[c % len(COLUMN_WORDS)]}"
            columns.append({"name": column, "type": "string",
                            "description": " ".join(rng.choice(NOUNS + FILLER) for _ in range(rng.randint(3, 8)))})
        tags = rng.sample(TAGS, rng.randint(1, 4)) + (["pii"] if rng.random() < 0.05 else [])
        owner = f"{domain.replace('_', '-')}-team@example.com" if rng.random() < 0.8 else f"{rng.choice(NOUNS)}.owner@example.com"
        docs.append({
            "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
            "metadata": {"name": name, "domain": domain, "owner": owner, "version": "1.0.0", "tags": tags,
                         "description": description},
            "spec": {"source": {"connector": "sqlite", "uri": str(source), "query": view_of(columns)}, "schema": columns,
                     "sla": {"freshness": "1d"}},
        })
    return docs


def view_of(columns: list[dict[str, Any]]) -> str:
    """The product's source: a view over ``items`` with every contract column (publishing checks
    that the source has them), the generated ones copies of ``label``."""
    extra = "".join(f", label AS {c['name']}" for c in columns[2:])
    return f"SELECT id, label{extra} FROM items"


def make_source(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, label TEXT)")
    conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)", [(i, f"item {i}") for i in range(100)])
    conn.commit()
    conn.close()
    return path


def make_queries(docs: list[dict[str, Any]], count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Search requests: text and filters, a realistic mix."""
    rng = random.Random(seed)
    queries: list[dict[str, Any]] = []
    for _ in range(count):
        kind = rng.random()
        doc = rng.choice(docs)["metadata"]
        if kind < 0.30:
            q = {"q": rng.choice(NOUNS)}
        elif kind < 0.40:
            q = {"q": rng.choice(NOUNS) + "s"}  # plurals
        elif kind < 0.60:
            q = {"q": " ".join(rng.sample(NOUNS, rng.choice((2, 2, 3))))}
        elif kind < 0.70:
            q = {"q": doc["name"]}  # an exact name
        elif kind < 0.78:
            word = rng.choice(NOUNS)
            q = {"q": word[: rng.randint(3, max(3, len(word) - 1))]}  # a prefix
        elif kind < 0.88:
            q = {"q": rng.choice(NOUNS), "domain": doc["domain"]}
        elif kind < 0.95:
            q = {"q": rng.choice(NOUNS + [""]), "tags": rng.choice(TAGS)}
        elif kind < 0.98:
            q = {"q": "", "owner": doc["owner"].split("@")[0]}
        else:
            q = {"q": ""}  # browse: every product by popularity
        queries.append(q)
    return queries


def write_usage(audit: Path, docs: list[dict[str, Any]], queries: int = 20_000, principals: int = 200) -> float:
    """``queries`` audited queries over the products (Zipf), by 200 principals; returns seconds."""
    rng = random.Random(3)
    ids = [f"{d['metadata']['domain']}.{d['metadata']['name']}" for d in docs]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(ids))]
    picks = rng.choices(ids, weights=weights, k=queries)
    allow = Decision(True, ("bench: allowed",))
    log = AuditLog(audit)
    started = time.perf_counter()

    def write(part: list[str], worker: int) -> None:
        for n, product_id in enumerate(part):
            who = Principal(f"user{(worker * 7919 + n) % principals}", frozenset({"analyst"}))
            record = log.begin(who, f"SELECT * FROM {product_id}", products=[(product_id, "1.0.0")],
                               decisions={product_id: allow})
            log.complete(record, rows=10, durable=False)

    threads = [threading.Thread(target=write, args=(picks[w::16], w)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    return time.perf_counter() - started


# --- measurements ---------------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3),
            "p99": round(percentile(values, 99), 3), "max": round(max(values), 3), "mean": round(statistics.fmean(values), 3)}


def registry_throughput(descriptors: list[Descriptor], scratch: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, batch in (("one_transaction", len(descriptors)), ("batches_of_100", 100), ("one_by_one", 1)):
        subset = descriptors if batch > 1 else descriptors[:1000]
        registry = Registry(scratch / f"throughput-{label}.db")
        started = time.perf_counter()
        for i in range(0, len(subset), batch):
            registry.register(subset[i:i + batch])
        seconds = time.perf_counter() - started
        results[label] = {"products": len(subset), "seconds": round(seconds, 3), "products_per_s": round(len(subset) / seconds, 1)}
    return results


def cli_throughput(docs: list[dict[str, Any]], scratch: Path) -> dict[str, Any]:
    """``meshgate product register FOLDER`` for 500 files, and one command per file for 20."""
    folder = scratch / "cli-products"
    folder.mkdir()
    for n, doc in enumerate(docs[:520]):
        (folder / f"p{n:04d}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    bulk = scratch / "cli-bulk"
    bulk.mkdir()
    files = sorted(folder.iterdir())
    for f in files[:500]:
        f.rename(bulk / f.name)
    registry = scratch / "cli-registry.db"
    started = time.perf_counter()
    done = subprocess.run([*MESHGATE, "product", "register", str(bulk), "--registry", str(registry)],
                          env=ENV, capture_output=True, text=True)
    folder_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"meshgate product register failed:\n{done.stderr[-2000:]}")
    singles = sorted(folder.iterdir())
    started = time.perf_counter()
    for f in singles:
        subprocess.run([*MESHGATE, "product", "register", str(f), "--registry", str(registry)], env=ENV,
                       capture_output=True, check=True)
    single_seconds = time.perf_counter() - started
    return {
        "folder_of_500": {"products": 500, "seconds": round(folder_seconds, 3), "products_per_s": round(500 / folder_seconds, 1)},
        "one_command_per_file": {"products": len(singles), "seconds": round(single_seconds, 3),
                                 "products_per_s": round(len(singles) / single_seconds, 2)},
    }


def search_in_process(service: GatewayService, queries: list[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    first = search_as(service, ANALYST, "customer")  # builds the index and the analyst's visibility
    cold = time.perf_counter() - started
    latencies: list[float] = []
    totals: list[int] = []
    for q in queries:
        t = time.perf_counter()
        results = search_as(service, ANALYST, q.get("q", ""), domains=[q["domain"]] if "domain" in q else (),
                            tags=[q["tags"]] if "tags" in q else (), owners=[q["owner"]] if "owner" in q else ())
        latencies.append((time.perf_counter() - t) * 1000)
        totals.append(results.total)
    return {"cold_first_search_ms": round(cold * 1000, 1), "first_total": first.total, "latency_ms": summary(latencies),
            "mean_results": round(statistics.fmean(totals), 1), "samples": latencies}


class Gateway:
    """``meshgate serve`` on the benchmark's registry, Flight SQL and REST on free ports."""

    def __init__(self, registry: Path, users: Path, log: Path) -> None:
        self.port, self.http_port = free_port(), free_port()
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [*MESHGATE, "serve", "--registry", str(registry), "--users", str(users), "--host", "127.0.0.1",
             "--port", str(self.port), "--http-port", str(self.http_port), "--no-sla-monitor", "--cache-bytes", "0"],
            env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"meshgate serve exited: {log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("meshgate serve did not start within 120 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search_over_rest(gateway: Gateway, queries: list[dict[str, Any]]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=30)
    basic = "Basic " + base64.b64encode(f"ana:{PASSWORD}".encode()).decode()
    conn.request("POST", "/api/v1/auth/token", headers={"Authorization": basic})  # log in once (scrypt)
    auth = "Bearer " + json.loads(conn.getresponse().read())["access_token"]

    def get(params: dict[str, Any]) -> dict[str, Any]:
        path = "/api/v1/catalog/search?" + urllib.parse.urlencode(params)
        try:
            conn.request("GET", path, headers={"Authorization": auth})
            response = conn.getresponse()
        except (ConnectionError, http.client.HTTPException):  # the server closed an idle keep-alive connection
            conn.close()
            conn.request("GET", path, headers={"Authorization": auth})
            response = conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"REST search failed: {response.status} {body}")
        return body

    started = time.perf_counter()
    get({"q": "customer"})  # the first: builds the index and the analyst's visibility
    cold = time.perf_counter() - started
    for q in queries[:50]:  # warm up
        get(q)
    latencies: list[float] = []
    server: list[float] = []
    for q in queries:
        t = time.perf_counter()
        body = get(q)
        latencies.append((time.perf_counter() - t) * 1000)
        server.append(body["search_time_ms"])
    conn.close()
    return {"cold_first_search_ms": round(cold * 1000, 1), "latency_ms": summary(latencies),
            "server_search_time_ms": summary(server), "samples": latencies}


def register_to_query(gateway: Gateway, scratch: Path, source: Path, runs: int = 5) -> dict[str, Any]:
    import adbc_driver_flightsql.dbapi as flightsql

    from_start: list[float] = []
    from_exit: list[float] = []
    command: list[float] = []
    with flightsql.connect(f"grpc://127.0.0.1:{gateway.port}", db_kwargs={"username": "ana", "password": PASSWORD},
                           autocommit=True) as conn:
        for run in range(runs):
            name = f"fresh_arrivals_{run}_{int(time.time())}"
            doc = {"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
                   "metadata": {"name": name, "domain": "bench_new", "owner": "bench@example.com", "version": "1.0.0",
                                "description": "registered by the benchmark"},
                   "spec": {"source": {"connector": "sqlite", "uri": str(source), "table": "items"},
                            "schema": [{"name": "id", "type": "int64", "required": True}, {"name": "label", "type": "string"}]}}
            path = scratch / f"{name}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            started = time.perf_counter()
            done = subprocess.run([*MESHGATE, "product", "register", str(path), "--registry", str(gateway_registry(scratch))],
                                  env=ENV, capture_output=True, text=True)
            exited = time.perf_counter()
            if done.returncode != 0:
                raise SystemExit(f"product register failed: {done.stderr}")
            while True:
                try:
                    with conn.cursor() as cur:
                        cur.execute(f"SELECT count(*) FROM bench_new.{name}")
                        cur.fetchall()
                    break
                except Exception:  # NOT_FOUND until the gateway sees the new generation
                    if time.perf_counter() - started > 30:
                        raise SystemExit(f"bench_new.{name} was not queryable within 30 s")
                    time.sleep(0.02)
            answered = time.perf_counter()
            command.append(exited - started)
            from_start.append(answered - started)
            from_exit.append(answered - exited)
    return {"runs": runs, "from_command_start_s": summary(from_start), "from_command_exit_s": summary(from_exit),
            "register_command_s": summary(command)}


def gateway_registry(scratch: Path) -> Path:
    return scratch / "registry.db"


# --- report ------------------------------------------------------------------------------------------------------


def plot(in_process: list[float], rest: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in (("in-process", in_process), ("REST (client-side)", rest)):
        ordered = sorted(values)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.axvline(TARGETS["search_p99_ms"], color="red", linestyle="--", label="p99 target 10 ms")
    ax.set_xscale("log")
    ax.set_xlabel("search latency (ms, log scale)")
    ax.set_ylabel("fraction of searches")
    ax.set_title("Catalog search over 10,000 products: latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--searches", type=int, default=1000)
    parser.add_argument("--no-cli", action="store_true", help="skip the meshgate product register throughput runs")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    source = make_source(scratch / "source.db")
    print(f"generating {args.products:,} products across {args.domains} domains in {scratch}")
    docs = generate(args.products, args.domains, source)
    started = time.perf_counter()
    descriptors = [validate(doc, f"{doc['metadata']['domain']}.{doc['metadata']['name']}") for doc in docs]
    validate_seconds = time.perf_counter() - started

    print("registration throughput (Registry.register)")
    registration = registry_throughput(descriptors, scratch)
    registry = Registry(gateway_registry(scratch))
    registry.register(descriptors)
    started = time.perf_counter()
    catalog = registry._load(registry.generation())
    load_seconds = time.perf_counter() - started
    assert len(catalog.versions) == args.products
    cli = {} if args.no_cli else (print("registration throughput (meshgate product register)") or cli_throughput(docs, scratch))

    print("writing 20,000 audited queries (usage)")
    usage_seconds = write_usage(scratch / "audit.log", docs)
    users = scratch / "users.yaml"
    add_user(users, "ana", PASSWORD, ["analyst"], {"region": "DE"})

    queries = make_queries(docs, args.searches)
    print(f"{len(queries)} searches in-process")
    service = GatewayService(registry, policies=PolicyEngine.load(), audit=AuditLog(scratch / "audit.log"))
    try:
        in_process = search_in_process(service, queries)
    finally:
        service.close()

    print("starting meshgate serve for the REST and register-to-query runs")
    gateway = Gateway(gateway_registry(scratch), users, scratch / "serve.log")
    try:
        print(f"{len(queries)} searches over REST")
        rest = search_over_rest(gateway, queries)
        print("register -> first query, 5 runs")
        freshness = register_to_query(gateway, scratch, source)
    finally:
        gateway.stop()

    report = {
        "products": args.products, "domains": args.domains, "searches": len(queries),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "validate_descriptors_s": round(validate_seconds, 3),
        "registry_snapshot_load_s": round(load_seconds, 3),
        "registration_registry": registration,
        "registration_cli": cli,
        "usage_write_s": round(usage_seconds, 2),
        "search_in_process": {k: v for k, v in in_process.items() if k != "samples"},
        "search_rest": {k: v for k, v in rest.items() if k != "samples"},
        "register_to_first_query": freshness,
        "targets": TARGETS,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "catalog_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(in_process["samples"], rest["samples"], RESULTS / "catalog_bench.png")

    ip, rs = in_process["latency_ms"], rest["latency_ms"]
    rows = [
        ("search p50 (ms)", f"{ip['p50']:.2f}", f"{rs['p50']:.2f}", "-"),
        ("search p99 (ms)", f"{ip['p99']:.2f}", f"{rs['p99']:.2f}", f"< {TARGETS['search_p99_ms']:g}"),
        ("search max (ms)", f"{ip['max']:.2f}", f"{rs['max']:.2f}", "-"),
        ("server-side p99 (ms)", "-", f"{rest['server_search_time_ms']['p99']:.2f}", "-"),
        ("first search, cold (ms)", f"{in_process['cold_first_search_ms']:.0f}", f"{rest['cold_first_search_ms']:.0f}", "-"),
    ]
    print(f"\n{args.products:,} products, {args.domains} domains, {len(queries)} searches "
          f"(analyst under the packaged policies; {in_process['mean_results']:.0f} matches per search on average)")
    print(f"{'':28}{'in-process':>14}{'REST':>14}{'target':>10}   p99 / target")
    for label, a, b, target in rows:
        ratio = ""
        if target.startswith("<"):
            limit = float(target[2:])
            ratio = f"   {float(a) / limit:.2f} / {float(b) / limit:.2f}"
        print(f"{label:28}{a:>14}{b:>14}{target:>10}{ratio}")
    print("\nregistration throughput                      products   seconds   products/s")
    for label, r in registration.items():
        print(f"  Registry.register, {label:25}{r['products']:>9}{r['seconds']:>10.2f}{r['products_per_s']:>13.1f}")
    for label, r in cli.items():
        print(f"  meshgate product register, {label:17}{r['products']:>9}{r['seconds']:>10.2f}{r['products_per_s']:>13.1f}")
    f = freshness
    print(f"\nregister -> first successful query through the running gateway ({f['runs']} runs; target < "
          f"{TARGETS['register_to_query_s']:g} s)")
    print(f"  from the command's start: median {f['from_command_start_s']['p50']:.2f} s, max {f['from_command_start_s']['max']:.2f} s"
          f"  ({f['from_command_start_s']['max'] / TARGETS['register_to_query_s']:.2f} of target)")
    print(f"  from the command's exit:  median {f['from_command_exit_s']['p50']:.2f} s, max {f['from_command_exit_s']['max']:.2f} s")
    print(f"  the command itself:       median {f['register_command_s']['p50']:.2f} s")
    print(f"\nregistry snapshot load of {args.products:,} products: {load_seconds:.2f} s; "
          f"descriptor validation: {validate_seconds:.2f} s")
    print(f"wrote {RESULTS / 'catalog_bench.json'} and {RESULTS / 'catalog_bench.png'}")


if __name__ == "__main__":
    main()
