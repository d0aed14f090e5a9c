"""Product lifecycle through the real CLI and a real gateway: init -> validate -> register ->
deprecate (still queryable, flagged) -> retire (NOT_FOUND through a real query), notice periods,
permissions, versions and list."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import pytest
import yaml

from gateway.errors import PermissionDenied, PreconditionFailed
from gateway.registry import Registry
from gateway.service import GatewayService
from gateway.source_roots import SourceRoots
from policies import Principal
from policies.engine import PolicyEngine
from tests.mesh import start_gateway

ROOT = Path(__file__).resolve().parents[1]


def meshgate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=90, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"})


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    conn = sqlite3.connect(tmp_path / "shop.db")
    conn.execute("CREATE TABLE orders (id INTEGER NOT NULL, customer TEXT, amount REAL NOT NULL, ordered_on DATE)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", [(1, "ann", 10.0, "2024-01-01"), (2, "bob", 20.0, "2024-01-02")])
    conn.commit()
    conn.close()
    return tmp_path


def test_init_scaffolds_a_descriptor_that_validates_and_registers(shop: Path) -> None:
    result = meshgate("product", "init", "--connector", "sqlite", "--uri", "shop.db", "--table", "orders",
                      "--domain", "sales", "--name", "orders", "-o", "products/orders.yaml", cwd=shop)
    assert result.returncode == 0, result.stderr
    assert "4 column(s) (2 required)" in result.stdout
    assert "the owner owner@example.com" in " ".join(result.stdout.split())  # the placeholder to replace is named
    doc = yaml.safe_load((shop / "products" / "orders.yaml").read_text())
    assert doc["spec"]["source"] == {"connector": "sqlite", "uri": "../shop.db", "table": "orders"}
    assert [(c["name"], c["type"], c.get("required", False)) for c in doc["spec"]["schema"]] == [
        ("id", "int64", True), ("customer", "string", False), ("amount", "double", True), ("ordered_on", "string", False)]
    roots = ("--source-root", str(shop))
    validate = meshgate("product", "validate", "products/orders.yaml", *roots, cwd=shop)
    assert validate.returncode == 0, validate.stderr
    assert "valid: sales.orders 1.0.0" in validate.stdout
    again = meshgate("product", "init", "--connector", "sqlite", "--uri", "shop.db", "--table", "orders",
                     "--domain", "sales", "--name", "orders", "-o", "products/orders.yaml", cwd=shop)
    assert again.returncode == 2 and "--force" in again.stderr
    register = meshgate("product", "register", "products/orders.yaml", "--registry", "r.db", *roots, cwd=shop)
    assert register.returncode == 0, register.stderr
    assert "registered  sales.orders 1.0.0" in register.stdout


def test_init_reads_duckdb_and_postgresql_types(tmp_path: Path, pg_uri: str) -> None:
    conn = duckdb.connect(str(tmp_path / "m.duckdb"))
    conn.execute("CREATE TABLE m (id INTEGER NOT NULL, seen_at TIMESTAMPTZ, v DECIMAL(10,2), ok BOOLEAN)")
    conn.close()
    out = meshgate("product", "init", "--connector", "duckdb", "--uri", "m.duckdb", "--table", "m", "--domain", "ops",
                   "--name", "metrics", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    columns = {c["name"]: (c["type"], c.get("required", False)) for c in yaml.safe_load(out.stdout)["spec"]["schema"]}
    assert columns == {"id": ("int32", True), "seen_at": ("timestamptz", False), "v": ("decimal(10,2)", False), "ok": ("boolean", False)}
    import psycopg2

    pg = psycopg2.connect(pg_uri)
    pg.autocommit = True
    with pg.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS lifecycle_init; CREATE TABLE lifecycle_init (id bigint NOT NULL, name text, d date)")
    pg.close()
    out = meshgate("product", "init", "--connector", "postgres", "--uri", pg_uri, "--table", "public.lifecycle_init",
                   "--domain", "ops", "--name", "things", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    columns = {c["name"]: (c["type"], c.get("required", False)) for c in yaml.safe_load(out.stdout)["spec"]["schema"]}
    assert columns == {"id": ("int64", True), "name": ("string", False), "d": ("date", False)}


def _descriptor(folder: Path, version: str, notice_days: int = 0, extra_column: bool = False) -> Path:
    schema = [{"name": "id", "type": "int64", "required": True}, {"name": "amount", "type": "double"}]
    if not extra_column:
        schema.append({"name": "customer", "type": "string"})
    doc = {"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
           "metadata": {"name": "orders", "domain": "sales", "owner": "s@example.com", "version": version,
                        "description": f"orders v{version}"},
           "spec": {"source": {"connector": "sqlite", "uri": "shop.db", "table": "orders"}, "schema": schema,
                    "deprecation": {"notice_days": notice_days}}}
    path = folder / f"orders-{version}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _count(uri: str, sql: str) -> int:
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_deprecate_then_retire_through_the_cli_and_a_real_gateway(shop: Path) -> None:
    registry_path = shop / "r.db"
    r = ("--registry", str(registry_path))
    assert meshgate("product", "register", str(_descriptor(shop, "1.0.0")), *r).returncode == 0
    assert meshgate("product", "register", str(_descriptor(shop, "2.0.0", extra_column=True)), *r).returncode == 0
    registry = Registry(registry_path)
    service, server, uri = start_gateway(registry, source_roots=[shop])
    try:
        assert _count(uri, 'SELECT count(*) FROM sales."orders@1"') == 2
        early = meshgate("product", "retire", "sales.orders@1", *r)
        assert early.returncode == 2 and "is active: deprecate it first" in early.stderr

        deprecated = meshgate("product", "deprecate", "sales.orders@1", "--reason", "customer moved out", *r)
        assert deprecated.returncode == 0, deprecated.stderr
        assert "deprecated sales.orders 1.0.0: customer moved out" in deprecated.stdout
        time.sleep(0.6)  # the gateway re-reads the registry within a second
        assert _count(uri, 'SELECT count(*) FROM sales."orders@1"') == 2  # still queryable over Flight SQL
        from policies import ANONYMOUS

        reader = service.execute('SELECT count(*) FROM sales."orders@1"', ANONYMOUS)  # and says so
        reader.read_all()
        assert b"sales.orders@1.0.0 is deprecated since" in reader.schema.metadata[b"meshgate.deprecated"]
        remarks = {(t.name, t.description) for t in service.list_tables(None, "sales", None)}
        assert any(name == "orders@1" and text.startswith("DEPRECATED (deprecated since") for name, text in remarks)
        listing = meshgate("product", "list", *r)
        assert "1.0.0 (deprecated)" in " ".join(listing.stdout.split()) or "(deprecated)" in listing.stdout

        retired = meshgate("product", "retire", "sales.orders@1", *r)
        assert retired.returncode == 0, retired.stderr
        assert "retired sales.orders 1.0.0" in retired.stdout
        time.sleep(0.6)
        with pytest.raises(flightsql.Error, match=r"major version 1 of data product 'sales.orders' was retired.*"
                                                  r"customer moved out.*use sales.orders \(major 2\)"):
            _count(uri, 'SELECT count(*) FROM sales."orders@1"')
        assert _count(uri, "SELECT count(*) FROM sales.orders") == 2  # the newest active major
        versions = meshgate("product", "versions", "sales.orders", *r)
        assert versions.returncode == 0 and "retired" in versions.stdout and "local-operator" in versions.stdout
        refused = meshgate("product", "register", str(_descriptor(shop, "1.1.0")), *r)
        assert refused.returncode == 2 and "major version 1 of sales.orders is retired" in refused.stderr
        assert meshgate("product", "retire", "sales.orders", *r).returncode == 2  # 2.0.0 is still active
    finally:
        server.shutdown()
        service.close()


def test_notice_period_and_permissions(shop: Path) -> None:
    registry = Registry(shop / "r.db")
    service = GatewayService(registry, policies=PolicyEngine.load(), source_roots=SourceRoots.of([shop]))
    owner, stranger, admin = (Principal("o", frozenset({"owner:sales"})), Principal("x", frozenset({"owner:hr"})),
                              Principal("a", frozenset({"admin"})))
    try:
        from gateway.descriptor import load_file

        assert service.publish([load_file(_descriptor(shop, "1.0.0", notice_days=30))], owner).ok
        with pytest.raises(PermissionDenied, match="needs role owner:sales or admin"):
            service.set_status("sales.orders", "1", "deprecated", stranger)
        change = service.set_status("sales.orders", "1", "deprecated", owner, reason="v2 soon")
        assert change.changed == ("1.0.0",) and change.to_json()["status"] == "deprecated"
        with pytest.raises(PreconditionFailed, match="30 day\\(s\\) notice: it may be retired from"):
            service.set_status("sales.orders", "1", "retired", owner)
        with pytest.raises(PermissionDenied, match="--force needs role admin"):
            service.set_status("sales.orders", "1", "retired", owner, force=True)
        from gateway.lifecycle import set_status

        later = time.time() + 31 * 86400  # the notice has passed
        assert set_status(registry, service.policies, "sales.orders", "1.0.0", "retired", owner, now=later).changed == ("1.0.0",)
        assert [r.status for r in registry.records("sales.orders")] == ["retired"]
        assert service.publish([load_file(_descriptor(shop, "2.0.0", notice_days=30))], owner).ok
        assert service.set_status("sales.orders", "2", "deprecated", owner).changed == ("2.0.0",)
        assert service.set_status("sales.orders", "2", "retired", admin, force=True).forced
    finally:
        service.close()
