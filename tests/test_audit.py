"""The audit log: complete records, durable before ``begin`` returns, rotation, many writers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.audit import AuditLog, read_queries
from policies import Principal
from policies.decision import ColumnMask, Decision, RowFilter

REPO = Path(__file__).resolve().parents[1]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_begin_records_who_what_and_how_it_was_governed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1 << 20, backups=2)
    decision = Decision(
        True,
        ("global/access.yaml#public-products: any principal may read",),
        masks=(ColumnMask("email", "email", "global/privacy.yaml#pii-columns"),),
        row_filters=(RowFilter("country = {user.region}", "customers.customers@1.0.0#row_filters[0]", {"user.region": "DE"}),),
        min_group_size=5,
        policies=("global/access.yaml#public-products", "global/privacy.yaml#pii-columns"),
    )
    query = "SELECT email FROM customers.customers WHERE country = 'DE'"
    record_id = log.begin(
        Principal("alice", frozenset({"analyst"})),
        query,
        client="ipv4:127.0.0.1:50000",
        products=[("customers.customers", "1.0.0")],
        decisions={"customers.customers": decision},
        fragments=[("duckdb:customers", 'SELECT "email" FROM "customers" WHERE "country" = \'DE\'')],
    )
    log.complete(record_id, rows=3)
    log.close()
    begin, end = read_lines(tmp_path / "audit.jsonl")
    assert begin["type"] == "query" and begin["id"] == record_id and begin["time"].endswith("Z")
    assert begin["principal"] == {"name": "alice", "roles": ["analyst"]}
    assert begin["client"] == "ipv4:127.0.0.1:50000"
    assert begin["query"] == query and begin["query_sha256"] == hashlib.sha256(query.encode()).hexdigest()
    assert begin["products"] == [{"id": "customers.customers", "version": "1.0.0"}]
    assert begin["decision"] == {"allowed": True, "reasons": list(decision.reasons)}
    assert begin["policies"] == sorted(decision.policies)
    assert begin["masks"] == [
        {"product": "customers.customers", "column": "email", "mask": "email", "policy": "global/privacy.yaml#pii-columns"}
    ]
    assert begin["row_filters"][0]["bindings"] == {"user.region": "DE"}
    assert begin["min_group_size"] == {"customers.customers": 5}
    assert begin["fragments"] == [{"source": "duckdb:customers", "sql": 'SELECT "email" FROM "customers" WHERE "country" = \'DE\''}]
    assert begin["status"] == "running"
    assert end["type"] == "complete" and end["id"] == record_id and end["rows"] == 3 and end["status"] == "ok"
    assert end["duration_ms"] >= 0


def test_a_denied_query_is_recorded_with_its_reasons(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl", max_bytes=1 << 20, backups=1) as log:
        log.begin(
            "bob",
            "SELECT * FROM shipping.carriers",
            products=[("shipping.carriers", "1.0.0")],
            decisions={"shipping.carriers": Decision(False, ("global policies: no rule allows bob",))},
        )
        log.begin("carol", "SELEC 1", allowed=False, status="error", error="syntax error at 'SELEC'")
    denied, broken = read_lines(tmp_path / "audit.jsonl")
    assert denied["decision"] == {"allowed": False, "reasons": ["global policies: no rule allows bob"]}
    assert denied["status"] == "denied"
    assert broken["status"] == "error" and broken["error"] == "syntax error at 'SELEC'"
    assert broken["decision"]["allowed"] is False


def test_begin_returns_only_after_its_line_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=1 << 20, backups=1)
    synced_sizes: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            synced_sizes.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    for i in range(5):
        log.begin("alice", f"SELECT {i}")
        size_now = path.stat().st_size
        assert synced_sizes and synced_sizes[-1] >= size_now, "begin returned before its line was synced"
    log.close()


def test_a_writer_killed_right_after_begin_has_its_line_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    writer = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from gateway.audit import AuditLog
        log = AuditLog(Path({str(path)!r}), max_bytes=1 << 20, backups=1)
        for i in range(3):
            record_id = log.begin("alice", "SELECT " + str(i), client="test")
            print(record_id, flush=True)
        time.sleep(60)  # killed here, without close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        ids = [proc.stdout.readline().strip() for _ in range(3)]  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    records = read_lines(path)
    assert [r["id"] for r in records] == ids
    assert [r["query"] for r in records] == ["SELECT 0", "SELECT 1", "SELECT 2"]


def test_rotation_keeps_the_newest_lines_in_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=2_000, backups=3)
    ids = [log.begin("alice", f"SELECT {i} /* {'x' * 100} */") for i in range(200)]
    log.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all(f.stat().st_size <= 2_000 for f in files)
    kept = [r["id"] for name in ("audit.jsonl.3", "audit.jsonl.2", "audit.jsonl.1", "audit.jsonl") for r in read_lines(tmp_path / name)]
    assert kept == ids[-len(kept):], "the kept files are the newest lines, oldest backup first, none lost in between"
    line_bytes = len((tmp_path / "audit.jsonl.1").read_bytes().splitlines()[0]) + 1
    assert len(kept) >= 3 * (2_000 // line_bytes), "full backups were kept"


def test_rotation_without_backups_starts_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=500, backups=0) as log:
        for i in range(20):
            log.begin("alice", f"SELECT {i}")
    assert [f.name for f in tmp_path.iterdir()] == ["audit.jsonl"]
    assert read_lines(path)[-1]["query"] == "SELECT 19"


def test_concurrent_writers_share_fsyncs_and_never_interleave_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=40_000, backups=50)
    real_fsync = os.fsync
    calls = []

    def slow_fsync(fd: int) -> None:  # a slow disk makes the batching visible
        calls.append(fd)
        time.sleep(0.005)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    threads, per_thread = 8, 40
    returned: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(per_thread):
            record_id = log.begin(f"user{n}", f"SELECT {n}, {i} /* {'y' * 200} */")
            log.complete(record_id, rows=i, durable=(i % 2 == 0))
            with lock:
                returned.append(record_id)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    files = sorted(tmp_path.iterdir(), key=lambda f: int(f.suffix[1:]) if f.suffix[1:].isdigit() else 0, reverse=True)
    assert len(files) > 2, "the test writes enough to rotate"
    records = [r for f in files for r in read_lines(f)]  # every line parses: none interleaved
    begins = {r["id"] for r in records if r["type"] == "query"}
    completes = {r["id"] for r in records if r["type"] == "complete"}
    assert begins == completes == set(returned) and len(returned) == threads * per_thread
    assert len(calls) < threads * per_thread, f"{len(calls)} fsyncs for {threads * per_thread * 1.5:.0f} durable lines"


def test_a_closed_log_refuses_to_write(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1000, backups=1)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.begin("alice", "SELECT 1")


def test_read_queries_joins_completions_across_rotated_files(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=600, backups=3)
    finished = log.begin("alice", "SELECT 1", products=[("orders.orders", "1.0.0")])
    log.complete(finished, rows=1, bytes_out=8)
    running = log.begin("bob", "SELECT 2 " + "x" * 300)
    log.begin("carol", "SELECT nope", allowed=False, error="syntax")
    log.close()
    with (tmp_path / "audit.jsonl").open("ab") as torn:  # a crash mid-line
        torn.write(b'{"type": "query", "id": "half')
    assert (tmp_path / "audit.jsonl.1").exists()  # the records span rotated files
    queries = {q["principal"]["name"]: q for q in read_queries(tmp_path / "audit.jsonl", backups=3)}
    assert list(queries) == ["alice", "bob", "carol"]
    assert queries["alice"]["rows"] == 1 and queries["alice"]["bytes"] == 8 and queries["alice"]["status"] == "ok"
    assert queries["alice"]["products"] == [{"id": "orders.orders", "version": "1.0.0"}]
    assert queries["bob"]["id"] == running and queries["bob"]["status"] == "running"
    assert queries["carol"]["status"] == "denied"
    later = datetime.now(timezone.utc) + timedelta(seconds=5)
    assert read_queries(tmp_path / "audit.jsonl", backups=3, since=later) == []
