"""The shared Redis cache tier (gateway/redis_tier.py) against the real throw-away Redis server
``scripts/test`` starts: two gateways share a hit, keys are namespaced and hashed with a TTL of
the remaining freshness, and a Redis killed mid-test never fails a query."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from gateway.cache import HIT, MISS, REDIS
from gateway.redis_tier import PREFIX, RedisTier
from tests.fresh_mesh import JOIN, KINDS, Mesh

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path, {"freshness": "30m"})
    yield m
    m.service.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_two_gateways_share_a_hit_through_redis(mesh: Mesh, redis_uri: str) -> None:
    tiers = [RedisTier(redis_uri), RedisTier(redis_uri)]
    first, second = mesh.replica(tiers[0]), mesh.replica(tiers[1])
    client = redis.Redis.from_url(redis_uri)
    try:
        hits_before = sample("gateway_cache_hits_total", level="result", tier=REDIS)
        answer, meta, fragments = mesh.run(JOIN, first)
        assert meta["meshgate.cache"] == MISS and fragments == {"events": MISS, "kinds": MISS}
        shared, meta, _ = mesh.run(JOIN, second)  # another replica: nothing in its memory, the entry in Redis
        assert meta["meshgate.cache"] == HIT and meta["meshgate.cache_tier"] == REDIS and shared.equals(answer)
        assert mesh.sent(second) == [] and float(meta["meshgate.age_seconds"]) == 600
        assert sample("gateway_cache_hits_total", level="result", tier=REDIS) == hits_before + 1
        _, meta, _ = mesh.run(JOIN, second)  # now in its own memory too
        assert meta["meshgate.cache"] == HIT and meta["meshgate.cache_tier"] == "memory"
        mesh.at(60)
        _, meta, fragments = mesh.run(KINDS + " WHERE 1 = 1", second)  # a passthrough: its own result entry
        assert meta["meshgate.cache"] == MISS
        _, meta, _ = mesh.run(KINDS + " WHERE 1 = 1", first)
        assert meta["meshgate.cache"] == HIT and meta["meshgate.cache_tier"] == REDIS

        keys = [k.decode() for k in client.keys(f"{PREFIX}:*")]
        mine = [k for k in keys if client.ttl(k) > 0]
        assert {k.split(":")[3] for k in mine} >= {"result", "fragment"}
        assert all(len(k.split(":")[4]) == 64 and "SELECT" not in k for k in mine)  # hashed, never SQL
        # TTL: the remaining freshness (kinds 30m from its fetch at T0 + 60; events' data was 10 min old)
        assert 0 < client.ttl(f"{PREFIX}:result:" + first.query_cache.result_lookup(  # type: ignore[union-attr]
            *_plan(first, KINDS + " WHERE 1 = 1")).key) <= 1800
    finally:
        first.close()
        second.close()
        for tier in tiers:
            tier.close()


def _plan(service, sql):  # noqa: ANN001, ANN202 - (plan, bound plan, max_staleness) as execute makes them
    from gateway.planner.bind import bind
    from policies import ANONYMOUS

    plan = service._planned(sql, ANONYMOUS).plan
    return plan, bind(plan, []), None


def test_a_redis_outage_never_fails_a_query(mesh: Mesh, redis_uri: str, redis_control,  # noqa: ANN001
                                            caplog: pytest.LogCaptureFixture) -> None:
    tier = RedisTier(redis_uri, retry_after=0.3)
    gateway = mesh.replica(tier)
    try:
        answer, meta, _ = mesh.run(JOIN, gateway)
        assert meta["meshgate.cache"] == MISS
        errors_before = sample("gateway_cache_errors_total", tier=REDIS)
        redis_control.kill()
        with caplog.at_level(logging.WARNING, logger="gateway.redis_tier"):
            fresh = mesh.replica(tier)  # nothing in its memory: it asks Redis, which is gone
            try:
                again, meta, _ = mesh.run(JOIN, fresh)
                assert meta["meshgate.cache"] == MISS and again.equals(answer) and mesh.sent(fresh)
                assert mesh.run(JOIN, fresh)[1]["meshgate.cache_tier"] == "memory"  # the in-process cache still works
                time.sleep(0.35)  # past retry_after: Redis is tried again (and fails again)
                mesh.run(KINDS, fresh)
            finally:
                fresh.close()
        assert tier.errors >= 2 and sample("gateway_cache_errors_total", tier=REDIS) >= errors_before + 2
        outage = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(outage) == 1 and "serving from this process's cache only" in outage[0].getMessage()  # logged once
        redis_control.start()
        time.sleep(0.35)
        mesh.at(5)
        mesh.run(KINDS + " WHERE 2 = 2", gateway)  # written to Redis again
        other = mesh.replica(RedisTier(redis_uri))
        try:
            assert mesh.run(KINDS + " WHERE 2 = 2", other)[1]["meshgate.cache_tier"] == REDIS
        finally:
            other.close()
            other.cache.shared.close()  # type: ignore[union-attr]
    finally:
        gateway.close()
        tier.close()


def test_cache_flag_rejects_what_is_not_a_redis_uri(tmp_path: Path) -> None:
    for value, message in (("http://127.0.0.1:6379", "not a Redis URI"), ("redis://127.0.0.1:6379/x", "not a number")):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--insecure-no-auth", "--cache", value],
                              capture_output=True, text=True, cwd=REPO, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 2 and message in done.stderr and "--cache" in done.stderr, done.stderr


def test_serve_with_cache_flag_writes_its_entries_to_redis(mesh: Mesh, redis_uri: str, free_port, tmp_path: Path) -> None:  # noqa: ANN001
    import signal

    import adbc_driver_flightsql.dbapi as flightsql
    import yaml

    products = tmp_path / "products"
    products.mkdir()
    (products / "kinds.yaml").write_text(yaml.safe_dump(mesh.kinds.raw))
    client = redis.Redis.from_url(redis_uri)
    before = set(client.keys(f"{PREFIX}:result:*"))
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--insecure-no-auth", "--host", "127.0.0.1", "--port", str(port),
               "--http-port", "0", "--no-sla-monitor", "--products", str(products), "--registry", str(tmp_path / "r.db"),
               "--cache", redis_uri]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESHGATE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with flightsql.connect(f"grpc://127.0.0.1:{port}", autocommit=True) as conn, conn.cursor() as cur:
                    for _ in range(2):
                        cur.execute("SELECT count(*) AS n FROM fresh.kinds")
                        assert cur.fetch_arrow_table().column("n")[0].as_py() == 3
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else ""
                time.sleep(0.3)
        added = set(client.keys(f"{PREFIX}:result:*")) - before
        assert len(added) == 1 and 0 < client.ttl(added.pop()) <= 1800  # kinds: 30m from the fetch
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert f"shared cache tier: {redis_uri}" in stderr
