"""Per-product usage from the audit log: counts, consumers, domains, ``since``; read incrementally
across rotations, and exactly what ``read_queries`` still holds once old files are dropped."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from gateway.audit import AuditLog, read_queries
from gateway.usage import UsageIndex, usage_index
from policies import Principal
from policies.decision import Decision

ALLOW = Decision(True, ("test: allowed",))
DENY = Decision(False, ("test: denied",))


def query(log: AuditLog, who: Principal, *products: str, allowed: bool = True) -> None:
    decisions = {p: ALLOW if allowed else DENY for p in products}
    record = log.begin(who, f"SELECT * FROM {products[0]}", products=[(p, "1.0.0") for p in products], decisions=decisions)
    log.complete(record, rows=1, durable=False)


ALICE = Principal("alice", frozenset({"analyst", "owner:sales"}))
BOB = Principal("bob", frozenset({"analyst"}))
CAROL = Principal("carol", frozenset({"admin"}))


def test_counts_consumers_domains_and_recent(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    for _ in range(3):
        query(log, ALICE, "sales.orders")
    query(log, BOB, "sales.orders", "crm.customers")
    query(log, CAROL, "crm.customers", allowed=False)  # refused: not usage
    log.flush()
    index = UsageIndex(log.path, principal_domain=lambda name: "finance" if name == "bob" else None)
    orders = index.usage("sales.orders")
    assert (orders.queries, orders.consumers) == (4, 2)
    assert orders.consumer_domains == ("finance", "sales")  # bob by lookup, alice by her owner:sales role
    assert [c.name for c in orders.recent_consumers] == ["bob", "alice"]  # most recent first
    assert [c.queries for c in orders.recent_consumers] == [1, 3]
    assert orders.last_queried is not None and orders.last_queried <= datetime.now(timezone.utc)
    customers = index.usage("crm.customers")
    assert (customers.queries, customers.consumers, customers.unknown_domain_consumers) == (1, 1, 0)
    assert index.usage("nobody.uses").queries == 0 and index.usage("nobody.uses").last_queried is None
    assert index.counts() == {"sales.orders": (4, 2), "crm.customers": (1, 1)}
    assert index.activity()["sales.orders"] == (4, 2, orders.last_queried.timestamp())
    without_lookup = UsageIndex(log.path).usage("sales.orders")
    assert without_lookup.consumer_domains == ("sales",) and without_lookup.unknown_domain_consumers == 1
    log.close()


def test_since_counts_only_later_queries(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    query(log, ALICE, "sales.orders")
    log.flush()
    middle = datetime.now(timezone.utc) + timedelta(microseconds=1)
    query(log, BOB, "sales.orders")
    query(log, BOB, "sales.orders")
    log.flush()
    recent = UsageIndex(log.path).usage("sales.orders", since=middle)
    assert (recent.queries, recent.consumers, [c.name for c in recent.recent_consumers]) == (2, 1, ["bob"])
    assert UsageIndex(log.path).usage("sales.orders", since=datetime.now(timezone.utc) + timedelta(hours=1)).queries == 0
    log.close()


def test_reads_only_what_was_appended(tmp_path: Path) -> None:
    """Bytes already read are never parsed again: scribbling over them changes nothing, while a
    new line is picked up on the next refresh."""
    log = AuditLog(tmp_path / "audit.log")
    query(log, ALICE, "sales.orders")
    log.flush()
    index = UsageIndex(log.path, min_interval=0)
    assert index.usage("sales.orders").queries == 1
    generation = index.generation
    assert index.refresh() is False and index.generation == generation  # nothing new
    size = log.path.stat().st_size
    with open(log.path, "r+b") as f:  # same size, old bytes garbled: a re-parse would lose the query
        f.seek(100)
        f.write(b"x" * 40)
    assert log.path.stat().st_size == size
    query(log, BOB, "sales.orders")
    log.flush()
    usage = index.usage("sales.orders")
    assert (usage.queries, usage.consumers) == (2, 2) and index.generation > generation
    log.close()


def test_min_interval_limits_how_often_files_are_looked_at(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    index = UsageIndex(log.path, min_interval=3600)
    assert index.usage("sales.orders").queries == 0
    query(log, ALICE, "sales.orders")
    log.flush()
    assert index.usage("sales.orders").queries == 0  # not looked at again within the hour
    assert index.refresh(force=True) and index.usage("sales.orders").queries == 1
    log.close()


def test_follows_rotation_and_forgets_dropped_files(tmp_path: Path) -> None:
    """With a tiny log that rotates every few records and keeps two backups, usage always equals
    what read_queries reports from the files still on disk."""
    log = AuditLog(tmp_path / "audit.log", max_bytes=2000, backups=2)
    index = UsageIndex(log.path, backups=2, min_interval=0)
    for i in range(60):
        query(log, [ALICE, BOB, CAROL][i % 3], "sales.orders" if i % 2 else "crm.customers")
        if i % 7 == 0:
            log.flush()
            expected = read_queries(log.path, backups=2)
            for product in ("sales.orders", "crm.customers"):
                mine = [q for q in expected if any(p["id"] == product for p in q["products"])]
                usage = index.usage(product)
                assert usage.queries == len(mine), (i, product)
                assert usage.consumers == len({q["principal"]["name"] for q in mine}), (i, product)
    assert (tmp_path / "audit.log.2").exists()  # it really rotated past the backups kept
    log.close()


def test_torn_last_line_is_read_once_complete(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    query(log, ALICE, "sales.orders")
    log.close()
    whole = log.path.read_bytes()
    line = whole.splitlines(keepends=True)[0]
    with open(log.path, "ab") as f:
        f.write(line[:50])  # a writer mid-line
    index = UsageIndex(log.path, min_interval=0)
    assert index.usage("sales.orders").queries == 1
    with open(log.path, "ab") as f:
        f.write(line[50:])
    assert index.usage("sales.orders").queries == 2


def test_one_shared_index_per_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    assert usage_index(path) is usage_index(Path(os.path.relpath(path)))
    assert usage_index(path) is not usage_index(tmp_path / "other.log")
