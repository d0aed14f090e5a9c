"""Query history (gateway/query_history.py) on the live demo mesh: the ring buffer the service
feeds, ``mesh.queries`` through a real ADBC Flight SQL client, ``GET /api/v1/queries`` through a
real uvicorn server, restoring from the audit log after a restart, and ``meshgate top --once``
as a subprocess against that gateway.

A principal sees only its own queries unless it has role admin: alice and bob are analysts,
carol is an admin. Every test marks its queries with a unique string literal so that queries
of other tests in the shared gateway do not matter.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from gateway import audit as audit_module
from gateway.audit import AuditLog
from gateway.auth import Authenticator
from gateway.cache import ResultCache
from gateway.flight.server import MeshFlightServer
from gateway.query_history import MAX_SQL_CHARS, STOPPED, QueryHistory
from gateway.rest import create_app, serve_http
from gateway.service import GatewayService
from gateway.users import UsersFile, add_user
from policies import Principal
from policies.engine import PolicyEngine
from tests.http import basic, http
from tests.mesh import LiveMesh, demo_clock

pytestmark = pytest.mark.postgres

MESHGATE = [sys.executable, "-m", "gateway.cli"]
PASSWORDS = {"alice": "alice-Pw-1", "bob": "bob-Pw-22", "carol": "carol-Pw-333"}
ALICE = Principal("alice", frozenset({"analyst"}))
BOB = Principal("bob", frozenset({"analyst"}))
CAROL = Principal("carol", frozenset({"admin"}))
ORDERS = "SELECT status, count(*) AS n FROM orders.orders WHERE '{marker}' <> '' GROUP BY status ORDER BY status"
POLICY = """\
access:
  - {id: everyone-reads, effect: allow}
  - {id: deny-carriers, effect: deny, products: [shipping.carriers]}
"""


@dataclass
class Gateway:
    service: GatewayService
    flight_uri: str
    http_url: str
    tmp: Path

    def connect(self, user: str) -> Any:
        return flightsql.connect(self.flight_uri, db_kwargs={"username": user, "password": PASSWORDS[user]})

    def sql(self, user: str, sql: str, parameters: tuple = ()) -> list[dict[str, Any]]:
        with self.connect(user) as conn, conn.cursor() as cursor:
            cursor.execute(sql, parameters or None)
            return cursor.fetch_arrow_table().to_pylist()

    def get(self, path: str, user: str | None) -> tuple[int, dict[str, Any]]:
        response = http(self.http_url + path, authorization=basic(user, PASSWORDS.get(user, "wrong")) if user is not None else None)
        return response.status, response.json()


@pytest.fixture(scope="module")
def gateway(live_mesh: LiveMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("history")
    (tmp / "policies" / "global").mkdir(parents=True)
    (tmp / "policies" / "global" / "access.yaml").write_text(POLICY)
    add_user(tmp / "users.yaml", "alice", PASSWORDS["alice"], ["analyst"], {})
    add_user(tmp / "users.yaml", "bob", PASSWORDS["bob"], ["analyst"], {})
    add_user(tmp / "users.yaml", "carol", PASSWORDS["carol"], ["admin"], {})
    authenticator = Authenticator(UsersFile(tmp / "users.yaml"))
    service = GatewayService(live_mesh.registry, policies=PolicyEngine.load(tmp / "policies"),
                             audit=AuditLog(tmp / "audit.jsonl"),
                             cache=ResultCache(256 * 1024**2, clock=demo_clock(live_mesh.registry)))  # the demo data within its SLA
    flight_server = MeshFlightServer("grpc://127.0.0.1:0", service, authenticator=authenticator)
    http = serve_http(create_app(service, authenticator), "127.0.0.1", 0)
    try:
        yield Gateway(service, f"grpc://127.0.0.1:{flight_server.port}", http.url, tmp)
    finally:
        http.stop()
        flight_server.shutdown()
        service.close()


def marker() -> str:
    return f"m-{uuid.uuid4().hex[:12]}"


def mine(entries: list[Any], tag: str) -> list[Any]:
    return [e for e in entries if tag in (e["sql"] if isinstance(e, dict) else e.sql)]


# --- the ring buffer the service feeds ------------------------------------------------------------


def test_a_query_is_running_until_its_stream_ends_then_ok_with_rows_bytes_cache_and_fragments(gateway: Gateway) -> None:
    service, tag = gateway.service, marker()
    reader = service.execute(ORDERS.format(marker=tag), ALICE, client="ipv4:127.0.0.1:5555")
    [running] = mine(service.history.entries(principal="alice", statuses=["running"]), tag)
    assert running.cache == "miss" and running.finished is None and running.rows is None
    assert running.fragments and "orders" in running.fragments[0][1].lower()  # already sent to the source
    time.sleep(0.05)
    assert mine(service.history.entries(statuses=["running"]), tag)[0].duration_ms >= 50  # elapsed so far
    table = reader.read_all()
    [done] = mine(service.history.entries(principal="alice"), tag)
    assert done.id == running.id and done.status == "ok" and done.finished is not None
    assert done.rows == table.num_rows > 0 and done.bytes and done.bytes > 0 and done.duration_ms >= 50
    assert done.client == "ipv4:127.0.0.1:5555" and done.principal == "alice"
    assert [p for p, _ in done.products] == ["orders.orders"] and done.products[0][1].count(".") == 2

    service.execute(ORDERS.format(marker=tag), ALICE).read_all()  # the same query again: from the cache
    hit = mine(service.history.entries(principal="alice"), tag)[0]
    assert hit.cache == "hit" and hit.cache_age_seconds is not None and hit.fragments == [] and hit.status == "ok"
    as_json = hit.as_dict()
    assert as_json["cache"] == {"status": "hit", "age_seconds": hit.cache_age_seconds, "fragments": {}}
    assert as_json["id"] == hit.id

    federated = (f"SELECT o.status, count(*) AS n, '{tag}-f' AS t FROM orders.orders o "
                 "JOIN shipping.shipments s ON s.order_id = o.order_id GROUP BY o.status")
    service.execute(federated, ALICE).read_all()
    [joined] = mine(service.history.entries(principal="alice"), f"{tag}-f")
    assert joined.cache == "miss" and len(joined.fragment_cache) == 2 and set(joined.fragment_cache.values()) == {"miss"}
    assert joined.as_dict()["cache"]["fragments"] == joined.fragment_cache


def test_refused_failed_and_cancelled_queries_are_recorded(gateway: Gateway) -> None:
    service, tag = gateway.service, marker()
    with pytest.raises(Exception, match="deny-carriers"):
        service.execute(f"SELECT *, '{tag}' AS t FROM shipping.carriers", BOB)
    with pytest.raises(Exception, match="unknown data product"):
        service.execute(f"SELECT '{tag}' AS t FROM nowhere.nothing", BOB)
    reader = service.execute(f"SELECT o.*, '{tag}' AS t FROM orders.orders o", BOB)
    next(iter(reader))
    del reader  # the client goes away mid-stream: the stream is dropped
    gc.collect()
    found = {e.status: e for e in mine(service.history.entries(principal="bob"), tag)}
    assert set(found) == {"denied", "error", "cancelled"}
    assert "deny-carriers" in (found["denied"].error or "") and "nowhere.nothing" in (found["error"].error or "")
    assert found["cancelled"].rows is not None and found["cancelled"].finished is not None


def test_the_ring_buffer_is_bounded_and_truncates_long_sql(gateway: Gateway) -> None:
    history = QueryHistory(capacity=3)
    for i in range(10):
        history.finish(history.begin(ALICE, f"SELECT {i}", None, []), "ok", 1, 8)
    assert [e.sql for e in history.entries()] == ["SELECT 9", "SELECT 8", "SELECT 7"]
    tag = marker()
    long_sql = f"SELECT '{tag}' AS t" + " " * (MAX_SQL_CHARS * 2) + ", 1 AS one"
    gateway.service.execute(long_sql, ALICE).read_all()
    [entry] = mine(gateway.service.history.entries(), tag)
    assert len(entry.sql) == MAX_SQL_CHARS and entry.sql.endswith("…")


# --- mesh.queries through a real Flight SQL client -----------------------------------------------


def test_mesh_queries_shows_itself_running_and_answers_sql(gateway: Gateway) -> None:
    tag = marker()
    gateway.sql("alice", ORDERS.format(marker=tag))
    rows = gateway.sql("alice", f"SELECT status, sql, finished FROM mesh.queries WHERE sql LIKE '%{tag}%' AND status <> 'ok'")
    assert len(rows) == 1 and rows[0]["status"] == "running" and rows[0]["finished"] is None and tag in rows[0]["sql"]
    rows = gateway.sql("alice", f"""
        SELECT status, cache, products, rows > 0 AS has_rows, bytes > 0 AS has_bytes, fragments
        FROM mesh.queries WHERE sql LIKE '%{tag}%' AND sql LIKE '%orders.orders%' AND status = 'ok'
        ORDER BY started DESC""")
    assert len(rows) == 1 and rows[0]["has_rows"] and rows[0]["has_bytes"]
    assert rows[0]["products"].startswith("orders.orders@") and rows[0]["cache"] in ("miss", "hit")
    assert isinstance(json.loads(rows[0]["fragments"]), list)
    counts = gateway.sql("alice", "SELECT status, count(*) AS n, max(duration_ms) >= 0 AS timed FROM mesh.queries "
                                  "GROUP BY status ORDER BY status")
    assert {r["status"] for r in counts} >= {"ok", "running"} and all(r["timed"] for r in counts)


def test_alice_never_sees_bobs_sql(gateway: Gateway) -> None:
    secret = marker() + "-bob-secret"
    gateway.sql("bob", f"SELECT '{secret}' AS s")
    with pytest.raises(Exception):
        gateway.sql("bob", f"SELECT '{secret}' AS s FROM shipping.carriers")  # denied, still recorded
    probes = [
        "SELECT * FROM mesh.queries",
        # the secret is spelled in two halves: alice's own queries never contain it
        f"SELECT count(*) AS n FROM mesh.queries WHERE sql LIKE '%' || '{secret[:5]}' || '{secret[5:]}' || '%'",
        "SELECT principal, count(*) AS n, string_agg(sql, ';') AS all_sql FROM mesh.queries GROUP BY principal",
        "SELECT a.sql, b.sql AS other FROM mesh.queries a JOIN mesh.queries b ON a.principal <> b.principal",
        "SELECT q.sql FROM mesh.queries q RIGHT JOIN (SELECT 'bob' AS who) w ON q.principal = w.who",
        "SELECT sql FROM mesh.queries WHERE principal = 'bob' UNION ALL SELECT sql FROM mesh.queries",
        "WITH q AS (SELECT * FROM mesh.queries) SELECT max(sql) AS s, min(sql) AS t FROM q",
        "SELECT o.order_id, q.sql FROM orders.orders o JOIN mesh.queries q ON q.principal <> 'alice' LIMIT 5",
        "SELECT * FROM information_schema.columns WHERE table_schema = 'mesh' AND table_name = 'queries'",
        "SELECT * FROM information_schema.tables",
    ]
    for sql in probes:
        rows = gateway.sql("alice", sql)
        text = json.dumps(rows, default=str)
        assert secret not in text and '"bob"' not in text, sql
    assert gateway.sql("alice", probes[1]) == [{"n": 0}]
    assert gateway.sql("alice", "SELECT count(*) AS n FROM mesh.queries WHERE principal = ?", ("bob",)) == [{"n": 0}]
    assert {r["principal"] for r in gateway.sql("alice", "SELECT DISTINCT principal FROM mesh.queries")} == {"alice"}
    # the admin sees every principal's queries, bob's refused one included
    rows = gateway.sql("carol", f"SELECT principal, status FROM mesh.queries WHERE sql LIKE '%{secret}%' "
                                "AND principal = 'bob' ORDER BY started")
    assert rows == [{"principal": "bob", "status": "ok"}, {"principal": "bob", "status": "denied"}]


# --- GET /api/v1/queries ---------------------------------------------------------------------------


def test_rest_lists_own_queries_unless_admin_with_filters(gateway: Gateway) -> None:
    tag = marker()
    gateway.sql("alice", ORDERS.format(marker=tag))
    gateway.sql("bob", f"SELECT '{tag}' AS t")
    status, body = gateway.get("/api/v1/queries?limit=1000", "alice")
    assert status == 200 and body["principal"] == "alice" and body["count"] == len(body["queries"])
    assert {q["principal"] for q in body["queries"]} == {"alice"} and mine(body["queries"], tag)
    assert [q["started"] for q in body["queries"]] == sorted((q["started"] for q in body["queries"]), reverse=True)
    [query] = mine(body["queries"], tag)
    assert set(query) == {"id", "started", "finished", "principal", "client", "sql", "products", "status",
                          "duration_ms", "rows", "bytes", "cache", "fragments", "error"}
    assert query["products"][0]["id"] == "orders.orders" and query["client"]

    status, body = gateway.get("/api/v1/queries?principal=bob", "alice")
    assert status == 403 and body["field"] == "principal" and "admin" in body["detail"]
    status, body = gateway.get("/api/v1/queries?principal=bob&limit=1000", "carol")
    assert status == 200 and {q["principal"] for q in body["queries"]} == {"bob"} and mine(body["queries"], tag)
    status, body = gateway.get("/api/v1/queries?limit=1000", "carol")
    assert {"alice", "bob"} <= {q["principal"] for q in body["queries"]}

    status, body = gateway.get("/api/v1/queries?product=orders.orders&status=ok,error&since=5m&limit=1000", "carol")
    assert status == 200 and body["queries"] and mine(body["queries"], tag)
    assert all(any(p["id"] == "orders.orders" for p in q["products"]) and q["status"] in ("ok", "error")
               for q in body["queries"])
    assert gateway.get("/api/v1/queries?since=2999-01-01T00:00:00Z", "carol")[1]["count"] == 0
    assert gateway.get("/api/v1/queries?limit=2", "carol")[1]["count"] == 2
    running = gateway.get("/api/v1/queries?status=running", "carol")[1]["queries"]
    assert all(q["status"] == "running" and q["finished"] is None for q in running)


def test_rest_bad_parameters_are_422_listing_every_problem(gateway: Gateway) -> None:
    status, body = gateway.get("/api/v1/queries?limit=0&status=done&product=orders&since=yesterday&colour=red", "alice")
    assert status == 422 and body["error"] == "invalid request" and body["field"] == "colour"
    for name in ("colour", "limit", "status: 'done'", "product", "since"):
        assert name in body["detail"], name
    assert gateway.get("/api/v1/queries?limit=abc", "alice")[1]["field"] == "limit"
    assert gateway.get("/api/v1/queries?limit=1&limit=2", "alice")[0] == 422
    assert gateway.get("/api/v1/queries", None)[0] == 401
    assert gateway.get("/api/v1/queries", "mallory")[0] == 401


# --- after a restart and offline: from the audit log ----------------------------------------------


def test_history_after_a_restart_comes_from_the_audit_log_once(
    live_mesh: LiveMesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policies = tmp_path / "policies" / "global"
    policies.mkdir(parents=True)
    (policies / "access.yaml").write_text(POLICY)
    log, tag = tmp_path / "audit.jsonl", marker()

    def start() -> GatewayService:
        return GatewayService(live_mesh.registry, policies=PolicyEngine.load(tmp_path / "policies"), audit=AuditLog(log))

    first = start()
    first.execute(ORDERS.format(marker=tag), ALICE).read_all()
    with pytest.raises(Exception):
        first.execute(f"SELECT '{tag}' FROM shipping.carriers", BOB)
    first.execute(f"SELECT *, '{tag}-unfinished' AS t FROM orders.orders", ALICE)  # never read: no completion
    before = {e.id: e for e in mine(first.history.entries(), tag)}
    first.close()
    offline = mine(QueryHistory.from_audit(log).entries(), tag)  # e.g. the CLI: maybe still running elsewhere
    assert {e.status for e in offline} == {"ok", "denied", "running"}

    reads: list[Path] = []
    real = audit_module.read_queries
    monkeypatch.setattr(audit_module, "read_queries", lambda path, **kw: reads.append(path) or real(path, **kw))
    second = start()
    try:
        second.execute(f"SELECT '{tag}-after' AS t", CAROL).read_all()
        for _ in range(3):
            restored = {e.id: e for e in mine(second.history.entries(), tag)}
        assert reads == [log]  # read once, then served from memory
        assert set(before) < set(restored) and len(restored) == 4
        for record_id, old in before.items():
            new = restored[record_id]
            assert (new.principal, new.sql, new.products) == (old.principal, old.sql, old.products)
            if old.status == "running":
                assert new.status == "error" and new.error == STOPPED
            else:
                assert (new.status, new.rows, new.bytes, new.cache) == (old.status, old.rows, old.bytes, old.cache)
        assert second.execute(f"SELECT count(*) AS n FROM mesh.queries WHERE sql LIKE '%{tag}%'", ALICE).read_all() \
            .column(0).to_pylist() == [3]  # two of hers from before the restart, and this one
    finally:
        second.close()


# --- meshgate top ------------------------------------------------------------------------------


def top(gateway: Gateway, *args: str, user: str | None = "carol", password: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "COLUMNS": "220"}
    env.pop("MESHGATE_PASSWORD", None)
    if user is not None:
        env["MESHGATE_PASSWORD"] = password or PASSWORDS[user]
    command = [*MESHGATE, "top", "--server", gateway.http_url, *(["--user", user] if user else []), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_top_once_shows_running_recent_and_per_product_figures(gateway: Gateway) -> None:
    tag = marker()  # payments.payments is read by no other test: the figures are this test's
    sql = f"SELECT method, count(*) AS n FROM payments.payments WHERE '{tag}' <> '' GROUP BY method"
    gateway.service.cache.clear()  # type: ignore[union-attr]
    for _ in range(4):  # one miss, three hits
        gateway.service.execute(sql, ALICE).read_all()
    gateway.service.execute(f"SELECT '{tag}' AS t", BOB).read_all()
    running = gateway.service.execute(f"SELECT *, '{tag}-long' AS t FROM orders.orders", BOB)  # open stream
    try:
        shown = top(gateway, "--once")
    finally:
        running.close()
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "every principal's queries" in out and "Running (1)" in out and f"{tag}-long" in out
    product_line = next(line for line in out.splitlines() if "payments.payments" in line and "%" in line)
    assert "75%" in product_line and "│       4 │" in product_line  # 4 queries, 3 hits of them
    assert "alice" in out and "bob" in out and "hit" in out and "miss" in out

    as_alice = top(gateway, "--once", user="alice")
    assert as_alice.returncode == 0 and "queries of alice" in as_alice.stdout
    assert "payments.payments" in as_alice.stdout and "Running (0)" in as_alice.stdout
    assert f"'{tag}' AS t" not in as_alice.stdout and f"{tag}-long" not in as_alice.stdout  # bob's


def test_top_fills_the_terminal_and_no_more(gateway: Gateway) -> None:
    """The live view shows as many recent queries as fit below the running and product tables."""
    from rich.console import Console

    from gateway.cli.top import Snapshot, render

    for n in range(40):
        gateway.service.execute(f"SELECT {n} AS n", ALICE).read_all()
    queries = [entry.as_dict() for entry in gateway.service.history.entries()]
    for height in (24, 40):
        console = Console(width=150, height=height, record=True)
        console.print(render(Snapshot("test", queries, datetime.now(timezone.utc), None), recent=None, height=height))
        lines = console.export_text().rstrip("\n").splitlines()
        assert height - 3 <= len(lines) <= height, (height, len(lines))


def test_top_in_an_80_column_terminal_keeps_the_short_columns_whole() -> None:
    """Products and SQL give way; time, principal, status, ms, rows, bytes and cache stay readable."""
    from rich.console import Console

    from gateway.cli.top import Snapshot, render

    now = datetime.now(timezone.utc)
    query = {"id": "q1", "started": now.isoformat(), "finished": now.isoformat(), "principal": "alice",
             "sql": "SELECT o.status, count(*) FROM orders.orders o JOIN payments.payments p USING (order_id)",
             "products": [{"id": "orders.orders"}, {"id": "payments.payments"}], "status": "ok",
             "duration_ms": 1234.5, "rows": 12345, "bytes": 123456, "cache": {"status": "bypass"}}
    console = Console(width=80, record=True)
    console.print(render(Snapshot("test", [query], now, None), recent=5))
    row = next(line for line in console.export_text().splitlines() if "alice" in line and "│" in line)
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells[:7] == [now.astimezone().strftime("%H:%M:%S"), "alice", "ok", "1,234.5", "12345", "120.6 KiB", "bypass"], row


def test_top_errors(gateway: Gateway, free_port: Any) -> None:
    wrong = top(gateway, "--once", password="nope")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "authentication failed" in wrong.stderr
    no_password = top(gateway, "--once", user=None)
    assert no_password.returncode == 1 and "401" in no_password.stderr  # authentication is on
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("MESHGATE_PASSWORD", None)
    missing = subprocess.run([*MESHGATE, "top", "--user", "alice", "--once"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "MESHGATE_PASSWORD" in missing.stderr
    down = top(gateway, "--once", "--server", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_top_from_an_audit_log_without_a_gateway(gateway: Gateway) -> None:
    tag = marker()
    gateway.service.execute(f"SELECT '{tag}' AS t", ALICE).read_all()
    gateway.service.audit.flush()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "COLUMNS": "220"}
    shown = subprocess.run([*MESHGATE, "top", "--audit-log", str(gateway.tmp / "audit.jsonl")], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and tag in shown.stdout and "every principal's queries" in shown.stdout
    missing = subprocess.run([*MESHGATE, "top", "--audit-log", str(gateway.tmp / "nope.jsonl")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr
