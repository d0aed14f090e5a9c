#!/usr/bin/env python3
"""Policy decision latency: meshgate's PolicyEngine against plain casbin over the same rules.

The seed design asks for 500 global + domain policy rules and policy evaluation well under a
query's budget. casbin checks every policy line in turn, so the engine pre-selects the rules
that can match a product (by domain, product, tags and action) and caches decisions. This
script generates a policy directory of exactly ``--rules`` rules (the shipped global files plus
generated global and per-domain rules: access allow/deny, masks, row filters, group sizes) and
``--products`` product descriptors (tags, pii columns, and their own ``policies:`` on a third of
them), then times, per decision:

    cold       the first decision for each product: compiling its view and casbin enforcers
    uncached   a principal never seen before (a decision-cache miss) on a random product
    cached     a (principal, product) pair decided before
    casbin     plain ``casbin.Enforcer.enforce`` (stock, unindexed) with the same model over the
               policy lines of the same rules: the access check alone, the naive way

and writes ``benchmarks/results/policy_bench.json``.

    python benchmarks/policy_bench.py                      # 500 rules, 1,000 products
    python benchmarks/policy_bench.py --uncached 5000 --cached 50000 --casbin 500
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import casbin  # noqa: E402
from casbin.model import Model  # noqa: E402

from gateway.descriptor import Descriptor, validate  # noqa: E402
from policies import Principal  # noqa: E402
from policies.conditions import Resource, Subject  # noqa: E402
from policies.engine import DEFAULT_DIRECTORY, PolicyEngine  # noqa: E402
from policies.index import MODEL_PATH  # noqa: E402
from policies.rules import BUILTIN_ACCESS  # noqa: E402

UNCACHED_TARGET_US = 1000.0
CACHED_TARGET_US = 50.0
ROLES = ["analyst", "data_scientist", "engineer", "viewer", "sales", "finance", "support", "marketing"] + [
    f"role{k}" for k in range(40)
]
REGIONS = ["DE", "FR", "US", "JP", "BR", "CN"]
TAG_SETS = [(), ("sales",), ("sales",), ("pii",), ("pii", "gdpr"), ("gdpr",), ("finance",), ("finance", "pii"), ("restricted",)]


# --- the generated mesh ---------------------------------------------------------------------------


def count_rules(text: str) -> int:
    import yaml

    doc = yaml.safe_load(text) or {}
    return sum(len(doc.get(k) or ()) for k in ("access", "masks", "row_filters", "aggregates"))


def write_policies(root: Path, rules: int, domains: list[str], rng: random.Random) -> dict[str, int]:
    """The shipped global files plus generated rules: ~10% global, the rest spread over domains."""
    (root / "global").mkdir(parents=True)
    shipped = 0
    for source in sorted((DEFAULT_DIRECTORY / "global").glob("*.yaml")):
        text = source.read_text(encoding="utf-8")
        (root / "global" / source.name).write_text(text, encoding="utf-8")
        shipped += count_rules(text)
    global_budget = max(rules // 10 - shipped, 0)
    lines = ["access:"]
    made = 0
    for k in range(global_budget):
        kind = k % 5
        role = ROLES[8 + k % 40]
        if kind == 0:
            lines.append(f"  - {{id: deny-{k}, effect: deny, roles: [{role}], when: {{tags_any: [finance]}}}}")
        elif kind == 1:
            lines.append(
                f"  - {{id: cleared-{k}, effect: allow, roles: [{role}], when: {{tags_any: [restricted]}}, principal: {{clearance: high}}}}"
            )
        elif kind == 2:
            lines.append(f"  - {{id: team-deny-{k}, effect: deny, when: {{tags_any: [gdpr]}}, principal: {{team: blocked{k}}}, if_attribute_missing: ignore}}")
        else:
            continue
        made += 1
    masks = ["masks:"] + [
        f"  - {{id: mask-{k}, columns: {{names: [c{k % 6}]}}, mask: hash, when: {{tags_any: [sales]}}, unless_roles: [{ROLES[8 + k % 40]}]}}"
        for k in range(global_budget - made)
    ]
    (root / "global" / "generated.yaml").write_text("\n".join(lines + masks) + "\n", encoding="utf-8")
    counts = {"global": shipped + global_budget}

    domain_budget = rules - counts["global"]
    for d, domain in enumerate(domains):
        n = domain_budget // len(domains) + (1 if d < domain_budget % len(domains) else 0)
        access, masks, filters, aggregates = ["access:"], ["masks:"], ["row_filters:"], ["aggregates:"]
        for k in range(n):
            product = f"p{rng.randrange(40):03d}"
            role = rng.choice(ROLES)
            kind = k % 9
            if kind in (0, 1, 2, 3):
                access.append(f"  - {{id: deny-{k}, effect: deny, roles: [{role}], products: [{product}]}}")
            elif kind == 4:
                access.append(f"  - {{id: team-{k}, effect: allow, roles: [analyst, data_scientist, {role}], products: [{product}]}}")
            elif kind == 5:
                masks.append(f"  - {{id: mask-{k}, products: [{product}], columns: {{names: [c{k % 6}]}}, mask: last4}}")
            elif kind == 6:
                masks.append(f"  - {{id: pii-{k}, columns: {{pii: true}}, mask: hash, unless_roles: [{role}]}}")
            elif kind == 7:
                filters.append(f"  - {{id: filter-{k}, products: [{product}], filter: \"amount < 1000 OR region = {{user.region}}\"}}")
            else:
                aggregates.append(f"  - {{id: groups-{k}, products: [{product}], min_group_size: {3 + k % 5}}}")
        parts = [p for p in (access, masks, filters, aggregates) if len(p) > 1]
        folder = root / "domains" / domain
        folder.mkdir(parents=True)
        (folder / "generated.yaml").write_text("\n".join(line for p in parts for line in p) + "\n", encoding="utf-8")
    counts["domain"] = domain_budget
    return counts


def make_products(count: int, domains: list[str], rng: random.Random) -> list[Descriptor]:
    products = []
    for i in range(count):
        domain = domains[i % len(domains)]
        name = f"p{i // len(domains):03d}"
        columns = [
            {"name": "id", "type": "int64"},
            {"name": "region", "type": "string"},
            {"name": "email", "type": "string", "pii": True},
            {"name": "amount", "type": "double"},
        ] + [{"name": f"c{k}", "type": "string" if k % 2 else "int64", "pii": k == 3} for k in range(6)]
        spec: dict[str, Any] = {"source": {"connector": "duckdb", "uri": "x.duckdb", "table": name}, "schema": columns}
        if i % 3 == 0:
            spec["policies"] = {
                "access": [{"allow_roles": ["analyst", "data_scientist", rng.choice(ROLES)]}, {"allow_roles": ["support"], "require": {"zone": "EU"}}],
                "masks": [{"column": "email", "mask": "email", "unless": {"zone": "EU"}}, {"column": "c1", "mask": "first4"}],
                "row_filters": [{"filter": "region = {user.region}", "unless_roles": ["finance"]}],
                "min_group_size": 5,
            }
        doc = {
            "apiVersion": "datamesh.io/v1",
            "kind": "DataProduct",
            "metadata": {"name": name, "domain": domain, "owner": f"{domain}@example.com", "version": "1.0.0", "tags": list(rng.choice(TAG_SETS))},
            "spec": spec,
        }
        products.append(validate(doc))
    return products


def make_principal(name: str, rng: random.Random) -> Principal:
    roles = frozenset(rng.sample(ROLES[:12], rng.choice((1, 1, 2))))
    attributes = {"region": rng.choice(REGIONS), "pii_training": rng.random() < 0.5, "zone": rng.choice(("EU", "US"))}
    if rng.random() < 0.2:
        attributes["clearance"] = "high"
    return Principal(name, roles, MappingProxyType(attributes))


# --- timing -------------------------------------------------------------------------------------------


def timed(calls: list[Callable[[], Any]]) -> list[float]:
    """Microseconds per call."""
    gc.collect()
    samples = []
    clock = time.perf_counter_ns
    for call in calls:
        start = clock()
        call()
        samples.append((clock() - start) / 1000)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return {
        "n": len(ordered),
        "p50_us": round(pct(50), 2),
        "p90_us": round(pct(90), 2),
        "p99_us": round(pct(99), 2),
        "p999_us": round(pct(99.9), 2),
        "max_us": round(ordered[-1], 2),
        "mean_us": round(statistics.fmean(ordered), 2),
    }


def plain_casbin(engine: PolicyEngine) -> tuple[casbin.Enforcer, int]:
    """Stock casbin, one enforcer over every policy line of the loaded rules (deny lines first,
    so the first-match effect means the same as in the engine), no index, no cache."""
    rules = [r for r in engine.policy_set.access] + list(BUILTIN_ACCESS)
    ordered = [r for r in rules if r.effect == "deny"] + [r for r in rules if r.effect != "deny"]
    conditions = {r.id: r.condition for r in ordered}
    model = Model()
    model.load_model_from_text(MODEL_PATH.read_text(encoding="utf-8"))
    enforcer = casbin.Enforcer(model)
    enforcer.add_function("satisfies", lambda sub, obj, cond: conditions[cond].applies(sub, obj))
    lines = [line for r in ordered for line in r.rows()]
    enforcer.get_model()["p"]["p"].policy = lines
    return enforcer, len(lines)


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip()

    changes = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=int, default=500, help="global + domain policy rules (default 500)")
    parser.add_argument("--products", type=int, default=1000, help="products (default 1000)")
    parser.add_argument("--domains", type=int, default=25, help="domains (default 25)")
    parser.add_argument("--uncached", type=int, default=20_000, help="uncached decisions timed (default 20000)")
    parser.add_argument("--cached", type=int, default=100_000, help="cached decisions timed (default 100000)")
    parser.add_argument("--casbin", type=int, default=2_000, help="plain casbin enforce calls timed (default 2000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "policy_bench.json")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    domains = [f"d{n:02d}" for n in range(args.domains)]
    workdir = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    try:
        counts = write_policies(workdir / "policies", args.rules, domains, rng)
        products = make_products(args.products, domains, rng)
        started = time.perf_counter()
        engine = PolicyEngine.load(workdir / "policies")
        load_ms = (time.perf_counter() - started) * 1000
        loaded = engine.policy_set
        total_rules = len(loaded.access) + len(loaded.masks) + len(loaded.row_filters) + len(loaded.aggregates)
        assert total_rules == args.rules, f"generated {total_rules} rules, wanted {args.rules}"

        # cold: the first decision for every product
        cold_principals = [make_principal(f"cold{i}", rng) for i in range(len(products))]
        cold = timed([lambda p=p, d=d: engine.decide(p, d) for p, d in zip(cold_principals, products)])

        # uncached: a principal never seen before on a random product
        pairs = [(make_principal(f"new{i}", rng), rng.choice(products)) for i in range(args.uncached)]
        decisions = []
        uncached = timed([lambda p=p, d=d: decisions.append(engine.decide(p, d)) for p, d in pairs])
        allowed = sum(d.allowed for d in decisions)

        # cached: pairs decided before
        repeat = [pairs[rng.randrange(len(pairs))] for _ in range(args.cached)]
        cached = timed([lambda p=p, d=d: engine.decide(p, d) for p, d in repeat])

        # plain casbin: the access check alone over every line of the same rules
        enforcer, casbin_lines = plain_casbin(engine)
        requests = []
        for p, d in pairs[: args.casbin]:
            subject = Subject(p.name, frozenset(p.roles), p.attributes)
            requests.append((subject, d.domain, Resource(d.product_id, d.domain, f"{d.domain}.*", frozenset(d.tags)), "read"))
        plain = timed([lambda r=r: enforcer.enforce(*r) for r in requests])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        "meshgate_cached": summary(cached),
        "meshgate_uncached": summary(uncached),
        "meshgate_cold_first_per_product": summary(cold),
        "casbin_enforce_all_rules": summary(plain),
    }
    rows = [
        ("meshgate, cached decision", "meshgate_cached", f"< {CACHED_TARGET_US:.0f}"),
        ("meshgate, uncached decision", "meshgate_uncached", f"< {UNCACHED_TARGET_US:.0f}"),
        ("meshgate, first decision per product", "meshgate_cold_first_per_product", ""),
        (f"plain casbin enforce, {casbin_lines} lines", "casbin_enforce_all_rules", ""),
    ]
    print(f"\n{total_rules} rules ({counts['global']} global, {counts['domain']} domain in {len(domains)} domains; "
          f"{len(loaded.access)} access rules = {casbin_lines} casbin lines with the built-ins), {len(products)} products; "
          f"policy load {load_ms:.0f} ms; {allowed}/{len(decisions)} uncached decisions allowed\n")
    header = f"{'decision latency (µs)':<42}{'p50':>9}{'p90':>9}{'p99':>10}{'p99.9':>10}{'mean':>9}{'n':>8}  target"
    print(header)
    print("-" * len(header))
    for label, key, target in rows:
        r = results[key]
        print(f"{label:<42}{r['p50_us']:>9.1f}{r['p90_us']:>9.1f}{r['p99_us']:>10.1f}{r['p999_us']:>10.1f}{r['mean_us']:>9.1f}{r['n']:>8}  {target}")
    speedup = results["casbin_enforce_all_rules"]["p50_us"] / results["meshgate_uncached"]["p50_us"]
    print(f"\nuncached meshgate (access + masks + filters) vs plain casbin (access only): {speedup:.0f}x faster at p50")
    ok = results["meshgate_uncached"]["p99_us"] < UNCACHED_TARGET_US and results["meshgate_cached"]["p99_us"] < CACHED_TARGET_US
    print(f"targets (p99 uncached < {UNCACHED_TARGET_US:.0f} µs, cached < {CACHED_TARGET_US:.0f} µs): {'met' if ok else 'MISSED'}")

    payload = {
        "benchmark": "policy_bench",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {
            "rules": total_rules,
            "global_rules": counts["global"],
            "domain_rules": counts["domain"],
            "domains": len(domains),
            "products": len(products),
            "products_with_own_policies": sum(1 for d in products if d.raw["spec"].get("policies")),
            "access_rules": len(loaded.access),
            "casbin_policy_lines_all_rules": casbin_lines,
            "seed": args.seed,
        },
        "policy_load_ms": round(load_ms, 1),
        "uncached_allowed": allowed,
        "results": results,
        "targets_us": {"uncached_p99": UNCACHED_TARGET_US, "cached_p99": CACHED_TARGET_US},
        "targets_met": ok,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "casbin": getattr(casbin, "__version__", None) or _version("casbin"),
        },
        "git": git_info(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output}")
    return 0 if ok else 1


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
