"""Publishing (``GatewayService.publish`` and ``meshgate product register``): every check listed,
permissions, source roots, fail-closed quality gates, atomicity under kill -9 and under races.

Real sources (SQLite, DuckDB, parquet, a closed PostgreSQL port), real CLI subprocesses where
the process boundary is the point (crash, concurrency).
"""

from __future__ import annotations

import copy
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gateway.descriptor import validate
from gateway.errors import Conflict
from gateway.registry import PAUSE_FOR_TESTS, Registry
from gateway.service import GatewayService
from gateway.source_roots import SourceRoots
from gateway.users import User, hash_password, write_users
from policies import Principal
from policies.engine import PolicyEngine

ROOT = Path(__file__).resolve().parents[1]
ADMIN = Principal("ada", frozenset({"admin"}))
SALES_OWNER = Principal("sam", frozenset({"owner:sales"}))
HR_OWNER = Principal("hal", frozenset({"owner:hr"}))
ANALYST = Principal("ann", frozenset({"analyst"}))

DOC = {
    "apiVersion": "datamesh.io/v1",
    "kind": "DataProduct",
    "metadata": {"name": "orders", "domain": "sales", "owner": "sales@example.com", "version": "1.0.0", "tags": ["pii"]},
    "spec": {
        "source": {"connector": "sqlite", "uri": "shop.db", "table": "orders"},
        "schema": [
            {"name": "id", "type": "int64", "required": True},
            {"name": "customer", "type": "string", "pii": True},
            {"name": "amount", "type": "double"},
        ],
        "quality": [
            {"name": "id_present", "rule": "id IS NOT NULL", "severity": "error"},
            {"name": "small", "rule": "amount < 100", "severity": "warning"},
        ],
        "policies": {"masks": [{"column": "customer", "mask": "redact"}]},
    },
}


def doc(version: str = "1.0.0", edit=None) -> dict:  # noqa: ANN001
    d = copy.deepcopy(DOC)
    d["metadata"]["version"] = version
    if edit:
        edit(d)
    return d


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    conn = sqlite3.connect(folder / "shop.db")
    conn.execute("CREATE TABLE orders (id INTEGER NOT NULL, customer TEXT, amount REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", [(1, "ann", 10.0), (2, "bob", 250.0), (3, "cy", 5.0)])
    conn.commit()
    conn.close()
    return folder


@pytest.fixture
def service(tmp_path: Path, data: Path):  # noqa: ANN201
    svc = GatewayService(Registry(tmp_path / "state" / "registry.db"), policies=PolicyEngine.load(),
                         source_roots=SourceRoots.of([data]))
    yield svc
    svc.close()


def descriptor(folder: Path, version: str = "1.0.0", edit=None):  # noqa: ANN001, ANN201
    return validate(doc(version, edit), "test", folder)


def statuses(report) -> dict[str, str]:  # noqa: ANN001
    return {f"{c.version} {c.name}": c.status for c in report.checks}


def test_every_check_is_reported_and_the_version_published(service: GatewayService, data: Path) -> None:
    report = service.publish([descriptor(data)], SALES_OWNER)
    assert report.ok, report.failures
    got = statuses(report)
    for name in ("permission", "version", "compatibility", "source_root", "source_connectivity", "schema_validation",
                 "quality.id_present", "publish"):
        assert got[f"1.0.0 {name}"] == "passed", name
    assert got["1.0.0 quality.small"] == "warning"  # recorded, does not block
    assert report.published == [("sales.orders", "1.0.0", "registered")]
    body = report.to_json()
    assert body["status"] == "published" and body["validation_checks"]["quality_gates"] == "warning"
    assert {"product_id", "version", "name", "status", "detail"} <= set(body["checks"][0])
    score, version, _, results = service.registry.latest_quality("sales.orders")
    assert (round(score, 3), version) == (0.667, "1.0.0")  # 2 of 3 rules passed; the failing warning counts
    assert {r["name"]: r["passed"] for r in results} == {"id_present": True, "small": False, "id.required": True}
    assert service.registry.records("sales.orders")[0].published_by == "sam"
    again = service.publish([descriptor(data)], SALES_OWNER)
    assert again.ok and again.published == [("sales.orders", "1.0.0", "unchanged")] and again.status == "unchanged"


def test_dry_run_publishes_nothing(service: GatewayService, data: Path) -> None:
    report = service.publish([descriptor(data)], SALES_OWNER, dry_run=True)
    assert report.ok and report.status == "validated" and report.published == []
    assert service.registry.versions("sales.orders") == []


def test_owner_of_another_domain_is_refused_without_touching_the_source(service: GatewayService, data: Path) -> None:
    for who in (HR_OWNER, ANALYST):
        report = service.publish([descriptor(data)], who)
        got = statuses(report)
        assert not report.ok and got["1.0.0 permission"] == "failed"
        assert "needs role owner:sales or admin" in report.failures[0].detail
        assert got["1.0.0 source_connectivity"] == "skipped" and got["1.0.0 quality.id_present"] == "skipped"
    assert service.registry.versions("sales.orders") == []


def test_weakening_governance_needs_admin(service: GatewayService, data: Path) -> None:
    assert service.publish([descriptor(data)], SALES_OWNER).ok

    def unmask(d: dict) -> None:
        d["spec"]["policies"]["masks"] = []
        d["metadata"]["tags"] = []
        del d["spec"]["schema"][1]["pii"]

    weaker = descriptor(data, "2.0.0", unmask)  # a new major: compatibility allows it, governance does not
    report = service.publish([weaker], SALES_OWNER)
    got = statuses(report)
    assert not report.ok and got["2.0.0 governance"] == "failed" and got["2.0.0 compatibility"] == "passed"
    detail = next(c.detail for c in report.failures)
    for change in ("mask 'redact' removed", "pii tag removed", "needs role admin"):
        assert change in detail
    assert service.publish([weaker], ADMIN).ok


def test_breaking_change_in_a_major_and_every_problem_listed(service: GatewayService, data: Path) -> None:
    assert service.publish([descriptor(data)], ADMIN).ok

    def broken(d: dict) -> None:
        d["spec"]["schema"][0]["type"] = "int32"  # narrowed: breaking
        d["spec"]["schema"].append({"name": "region", "type": "string"})  # not in the real table
        d["spec"]["quality"].append({"name": "tiny", "rule": "amount < 1", "severity": "error"})

    report = service.publish([descriptor(data, "1.1.0", broken)], ADMIN)
    failed = {c.name for c in report.failures}
    assert failed == {"compatibility", "schema_validation", "quality.tiny"}
    assert [d.version for d in service.registry.versions("sales.orders")] == ["1.0.0"]


def test_unreachable_source_fails_the_gate(service: GatewayService, data: Path, free_port) -> None:  # noqa: ANN001
    def remote(d: dict) -> None:
        d["spec"]["source"] = {"connector": "postgres", "uri": f"postgresql://nobody@127.0.0.1:{free_port()}/x", "table": "orders"}

    report = service.publish([descriptor(data, edit=remote)], ADMIN)
    got = statuses(report)
    assert got["1.0.0 source_connectivity"] == "failed"
    assert got["1.0.0 quality.id_present"] == "failed"  # fail-closed: an error rule that cannot run blocks
    assert got["1.0.0 quality.small"] == "warning"
    assert "could not run: source unreachable" in next(c.detail for c in report.checks if c.name == "quality.id_present")
    assert service.registry.versions("sales.orders") == []


def test_a_batch_is_all_or_nothing(service: GatewayService, data: Path) -> None:
    other = descriptor(data, edit=lambda d: d["metadata"].update(name="refunds", domain="sales"))
    bad = descriptor(data, edit=lambda d: d["metadata"].update(name="broken") or d["spec"]["source"].update(table="nope"))
    report = service.publish([other, bad], ADMIN)
    assert not report.ok and [c.product_id for c in report.failures] == ["sales.broken"] * len(report.failures)
    assert service.registry.product_ids() == []


def test_parsed_documents_are_validated_with_every_problem(service: GatewayService, data: Path) -> None:
    bad = doc(edit=lambda d: d["spec"]["schema"].append({"name": "x", "type": "strng"}) or d["metadata"].update(version="one"))
    report = service.publish([bad], ADMIN)
    details = [c.detail for c in report.failures if c.name == "descriptor"]
    assert any("unknown type 'strng'" in d for d in details) and any("metadata.version" in d for d in details)


# --- source roots ---------------------------------------------------------------------------------


def test_file_sources_outside_the_roots_are_refused(service: GatewayService, data: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "shop.db").rename(outside / "shop.db")
    (data / "link.db").symlink_to(outside / "shop.db")  # a symlink inside the root pointing out
    for uri in ("../outside/shop.db", str(outside / "shop.db"), "link.db", "sub/../../outside/shop.db"):
        report = service.publish([descriptor(data, edit=lambda d, u=uri: d["spec"]["source"].update(uri=u))], ADMIN)
        got = statuses(report)
        assert got["1.0.0 source_root"] == "failed", uri
        assert "outside the gateway's source roots" in report.failures[0].detail
        assert got["1.0.0 source_connectivity"] == "skipped" and got["1.0.0 quality.id_present"] == "failed"
    # the same check when a gateway opens a source registered some other way (fail closed)
    service.registry.register([descriptor(data, edit=lambda d: d["spec"]["source"].update(uri="link.db"))])
    from gateway.errors import PermissionDenied

    with pytest.raises(PermissionDenied, match="outside the gateway's source roots"):
        service.execute("SELECT count(*) FROM sales.orders", ADMIN).read_all()


def test_the_users_file_and_registry_are_never_sources(tmp_path: Path, data: Path) -> None:
    users = data / "users.yaml"  # even inside a root
    write_users(users, [User("root", hash_password("pw"), ("admin",), {})])
    registry = Registry(data / "registry.db")
    svc = GatewayService(registry, policies=PolicyEngine.load(), source_roots=SourceRoots.of([data], [users]))
    try:
        for uri, table in (("users.yaml", "users"), ("registry.db", "product_versions")):
            report = svc.publish([descriptor(data, edit=lambda d, u=uri, t=table: d["spec"]["source"].update(uri=u, table=t))], ADMIN)
            assert not report.ok and "one of the gateway's own files" in report.failures[0].detail, uri
    finally:
        svc.close()


def test_parquet_sources_cannot_read_beyond_the_roots(service: GatewayService, data: Path, tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "customer": ["a", "b"], "amount": [1.0, 2.0]}), data / "orders.parquet")
    secret = tmp_path / "secret.csv"
    secret.write_text("id,customer,amount\n9,root,1\n")

    def parquet(d: dict, query: str | None = None) -> None:
        d["spec"]["source"] = {"connector": "parquet", "uri": "*.parquet", **({"query": query} if query else {})}

    assert service.publish([descriptor(data, edit=parquet)], ADMIN).ok
    sneaky = descriptor(data, "1.1.0", lambda d: parquet(d, f"SELECT * FROM read_csv('{secret}')"))
    report = service.publish([sneaky], ADMIN)
    assert not report.ok and "reads only its own files" in report.failures[0].detail
    escaping = descriptor(data, "1.2.0", lambda d: d["spec"].update(source={"connector": "parquet", "uri": "*/../../secret.csv"}))
    report = service.publish([escaping], ADMIN)
    assert not report.ok and "'..' inside its glob" in report.failures[0].detail


def test_parquet_duckdb_reads_only_under_its_allowed_directories(data: Path, tmp_path: Path) -> None:
    """Defence in depth below the query check: the engine itself refuses files outside the roots."""
    from connectors import open_connector
    from connectors.base import SourceConfig
    from gateway.errors import MeshError

    pq.write_table(pa.table({"x": [1]}), data / "in.parquet")
    pq.write_table(pa.table({"x": [2]}), tmp_path / "out.parquet")
    connector = open_connector(SourceConfig("parquet", "in.parquet", data, (str(data.resolve()),)))
    try:
        scan = connector.scan(f"SELECT * FROM read_parquet('{data.resolve() / 'in.parquet'}')")
        assert scan.reader.read_all().column(0).to_pylist() == [1]
        scan.close()
        for sql in (f"SELECT * FROM read_parquet('{tmp_path / 'out.parquet'}')", "SELECT * FROM read_text('/etc/hostname')"):
            with pytest.raises(MeshError):
                scan = connector.scan(sql)
                try:
                    scan.reader.read_all()
                finally:
                    scan.close()
    finally:
        connector.close()


def test_cli_register_refuses_a_descriptor_pointing_at_the_users_file(tmp_path: Path, data: Path) -> None:
    users = tmp_path / "users.yaml"
    write_users(users, [User("sam", hash_password("s3cret"), ("owner:sales",), {})])
    (tmp_path / "products").mkdir()
    evil = tmp_path / "products" / "evil.yaml"
    evil.write_text(yaml.safe_dump(doc(edit=lambda d: d["spec"]["source"].update(uri=str(users), table="users"))))
    result = meshgate("product", "register", str(evil), "--registry", str(tmp_path / "r.db"), "--source-root", str(data))
    assert result.returncode == 2
    assert "source_root" in result.stderr and "outside the gateway's source roots" in result.stderr
    # ... and even with the users file's folder as a root, as --users it is the gateway's own file
    result = meshgate("product", "register", str(evil), "--registry", str(tmp_path / "r.db"), "--users", str(users),
                      "--user", "sam", "--source-root", str(tmp_path), env={"MESHGATE_PASSWORD": "s3cret"})
    assert result.returncode == 2 and "one of the gateway's own files" in result.stderr
    assert Registry(tmp_path / "r.db").product_ids() == []


# --- the CLI as a principal -----------------------------------------------------------------------


def meshgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250", **(env or {})})


def test_cli_user_needs_owner_role_and_password(tmp_path: Path, data: Path) -> None:
    users = tmp_path / "users.yaml"
    write_users(users, [User("sam", hash_password("s3cret"), ("owner:sales",), {}),
                        User("hal", hash_password("h4l"), ("owner:hr",), {})])
    file = data / "orders.yaml"
    file.write_text(yaml.safe_dump(doc()))
    registry = str(tmp_path / "r.db")
    args = ("product", "register", str(file), "--registry", registry, "--users", str(users))
    refused = meshgate(*args, "--user", "hal", env={"MESHGATE_PASSWORD": "h4l"})
    assert refused.returncode == 2 and "hal may not publish in domain sales" in refused.stderr
    wrong = meshgate(*args, "--user", "sam", env={"MESHGATE_PASSWORD": "nope"})
    assert wrong.returncode == 2 and "authentication failed" in wrong.stderr
    ok = meshgate(*args, "--user", "sam", env={"MESHGATE_PASSWORD": "s3cret"})
    assert ok.returncode == 0, ok.stderr
    assert "registered  sales.orders 1.0.0" in ok.stdout and "quality.small" in ok.stderr
    assert Registry(tmp_path / "r.db").records("sales.orders")[0].published_by == "sam"


# --- durability -----------------------------------------------------------------------------------


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the publisher never reached the pause point"
        time.sleep(0.02)


def _register(file: Path, registry: Path, pause: str = "", *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    if pause:
        env[PAUSE_FOR_TESTS] = pause
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "product", "register", str(file), "--registry", str(registry), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_kill_9_inside_the_registration_transaction_leaves_nothing_half_published(tmp_path: Path, data: Path) -> None:
    registry_path = tmp_path / "r.db"
    first = data / "v1.yaml"
    first.write_text(yaml.safe_dump(doc()))
    assert _register(first, registry_path).wait(timeout=60) == 0
    generation = Registry(registry_path).generation()
    batch = data / "batch"
    batch.mkdir()
    parent = lambda d: d["spec"]["source"].update(uri="../shop.db")  # noqa: E731
    (batch / "v1_1.yaml").write_text(yaml.safe_dump(doc("1.1.0", parent)))
    (batch / "refunds.yaml").write_text(yaml.safe_dump(doc(edit=lambda d: parent(d) or d["metadata"].update(name="refunds"))))
    marker = tmp_path / "in-transaction"
    victim = _register(batch, registry_path, f"in-transaction:{marker}", "--source-root", str(data))
    _wait_for(marker, victim)  # both rows are written, the transaction is open
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert victim.returncode == -signal.SIGKILL
    registry = Registry(registry_path)  # opens: SQLite rolls the open transaction back
    assert registry.product_ids() == ["sales.orders"]
    assert [d.version for d in registry.versions("sales.orders")] == ["1.0.0"]
    assert registry.generation() == generation
    assert registry.catalog(max_age=0).resolve("sales", "orders").version == "1.0.0"
    again = _register(batch, registry_path, "", "--source-root", str(data))
    assert again.wait(timeout=60) == 0, again.communicate()
    assert registry.product_ids() == ["sales.orders", "sales.refunds"]


@pytest.mark.parametrize("second_version", ["1.1.0", "1.2.0"])
def test_concurrent_registrations_serialize_and_the_loser_gets_a_conflict(tmp_path: Path, data: Path, second_version: str) -> None:
    registry_path = tmp_path / "r.db"
    base = data / "v1.yaml"
    base.write_text(yaml.safe_dump(doc()))
    assert _register(base, registry_path).wait(timeout=60) == 0
    winner_file, loser_file = data / "winner.yaml", data / "loser.yaml"
    winner_file.write_text(yaml.safe_dump(doc("1.1.0", lambda d: d["metadata"].update(description="winner"))))
    loser_file.write_text(yaml.safe_dump(doc(second_version, lambda d: d["metadata"].update(description="loser"))))
    in_tx, before_tx = tmp_path / "winner-in-tx", tmp_path / "loser-before-tx"
    winner = _register(winner_file, registry_path, f"in-transaction:{in_tx}")
    _wait_for(in_tx, winner)  # the winner holds the write lock, its version not yet committed
    loser = _register(loser_file, registry_path, f"before-transaction:{before_tx}")
    _wait_for(before_tx, loser)  # the loser checked against a registry without the winner's version
    in_tx.unlink()
    assert winner.wait(timeout=60) == 0, winner.communicate()
    before_tx.unlink()
    out, err = loser.communicate(timeout=60)
    assert loser.returncode == 1, (out, err)
    assert "sales.orders changed while this registration was being checked" in err and "1.1.0" in err
    registry = Registry(registry_path)
    assert [(d.version, d.description) for d in registry.versions("sales.orders")] == [("1.1.0", "winner"), ("1.0.0", "")]


def test_conflict_is_a_mesh_error_the_rest_api_maps_to_409() -> None:
    from gateway.rest.app import _STATUS

    assert _STATUS[Conflict.status] == 409
