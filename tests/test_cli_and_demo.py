"""The commands a new user types: ``meshgate demo``, ``meshgate query``, ``meshgate product register``;
and what a running gateway must do without a restart (registry changes, plan reuse, chaining)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pytest
import yaml

from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres

MESHGATE = [sys.executable, "-m", "gateway.cli"]


def meshgate(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHGATE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_demo_generates_registers_serves_and_prints_how_to_connect(tmp_path: Path, free_port) -> None:  # noqa: ANN001
    port = free_port()
    env = {**os.environ, "MESHGATE_HOME": str(tmp_path / "home")}
    env.pop("MESHGATE_DEMO_PG_URI", None)
    process = subprocess.Popen(
        [*MESHGATE, "demo", "--scale", "0.01", "--port", str(port), "--data-dir", str(tmp_path / "demo"),
         "--host", "0.0.0.0", "--http-port", "0"],  # as in a container; the banner still says 127.0.0.1
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        banner = _read_until(process.stdout, "Press Ctrl-C", timeout=120)
        assert f"grpc://127.0.0.1:{port}" in banner
        assert f"jdbc:arrow-flight-sql://127.0.0.1:{port}" in banner
        assert banner.count("SELECT") >= 3  # example queries

        # authentication is on: demo users with passwords drawn once, kept 0600, hashed in users.yaml
        passwords_file = tmp_path / "demo" / "demo-passwords.yaml"
        passwords = yaml.safe_load(passwords_file.read_text())
        assert passwords_file.stat().st_mode & 0o777 == 0o600
        users_file = (tmp_path / "demo" / "users.yaml").read_text()
        assert users_file.count("scrypt$") == 3 and not any(p in users_file for p in passwords.values())
        for name, role in (("alice", "analyst"), ("bob", "analyst"), ("carol", "admin")):
            (line,) = [line for line in banner.splitlines() if line.strip().startswith(f"{name} ")]
            assert passwords[name] in line and role in line
        assert f"user=alice&password={passwords['alice']}" in banner  # the JDBC URL

        uri = f"grpc://127.0.0.1:{port}"
        refused = meshgate("query", "--server", uri, "SHOW SCHEMAS")
        assert refused.returncode == 1 and "authentication required" in refused.stderr
        result = meshgate("query", "--server", uri, "--user", "alice", "SHOW SCHEMAS",
                          env={**os.environ, "MESHGATE_PASSWORD": passwords["alice"]})
        assert result.returncode == 0, result.stderr
        for domain in ("customers", "orders", "payments", "shipping"):
            assert domain in result.stdout
        # every example query the banner prints runs and returns rows for alice
        from gateway.demo_data import EXAMPLE_QUERIES

        alice = {"username": "alice", "password": passwords["alice"]}
        with flightsql.connect(uri, db_kwargs=alice) as conn, conn.cursor() as cur:
            for _, sql in EXAMPLE_QUERIES:
                cur.execute(sql)
                assert cur.fetch_arrow_table().num_rows > 0
        # bob has no pii_training: the policies see his attributes and refuse the pii product
        bob = {"username": "bob", "password": passwords["bob"]}
        with flightsql.connect(uri, db_kwargs=bob) as conn, conn.cursor() as cur:
            with pytest.raises(flightsql.Error, match="denied"):
                cur.execute("SELECT name FROM customers.customers LIMIT 1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        stderr = process.stderr.read()
        assert "served from DuckDB" in stderr and f"serving Flight SQL on grpc://0.0.0.0:{port}" in stderr
    finally:
        if process.poll() is None:
            process.kill()


def _read_until(stream, marker: str, timeout: float) -> str:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    text = ""
    while marker not in text:
        line = stream.readline()
        if not line and time.monotonic() > deadline:
            raise AssertionError(f"never printed {marker!r}; got:\n{text}")
        text += line
    return text


def test_serve_on_a_taken_flight_port_says_so(live_mesh: LiveMesh, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = meshgate("serve", "--host", "127.0.0.1", "--port", str(port), "--http-port", "0", "--no-sla-monitor",
                          "--registry", str(live_mesh.registry.path), "--insecure-no-auth",
                          "--audit-log", str(tmp_path / "audit.log"), env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 2, result.stderr
    assert f"cannot serve Flight SQL on 127.0.0.1:{port}: Address already in use (choose another --port)" in result.stderr
    assert "Traceback" not in result.stderr and "did not start properly" not in result.stderr


def test_an_open_gateway_listens_on_loopback_unless_told(live_mesh: LiveMesh, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    """Without authentication and without --host the gateway binds 127.0.0.1, not every interface."""
    port = free_port()
    process = subprocess.Popen(
        [*MESHGATE, "serve", "--insecure-no-auth", "--port", str(port), "--http-port", "0", "--no-sla-monitor",
         "--registry", str(live_mesh.registry.path), "--audit-log", str(tmp_path / "audit.log")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "250"},
    )
    try:
        lines = [process.stderr.readline() for _ in range(2)]
        assert "authentication is OFF" in lines[0] and "listening on 127.0.0.1 only" in lines[0], lines
        assert f"serving Flight SQL on grpc://127.0.0.1:{port}" in lines[1], lines
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_query_formats(live_mesh: LiveMesh) -> None:
    sql = "SELECT segment, priority FROM customers.segments ORDER BY segment"
    table = meshgate("query", "--server", live_mesh.uri, sql)
    assert table.returncode == 0 and "enterprise" in table.stdout and "(5 rows" in table.stderr
    csv = meshgate("query", "--server", live_mesh.uri, "--format", "csv", sql)
    assert csv.stdout.splitlines()[0] == '"segment","priority"'
    rows = [json.loads(line) for line in meshgate("query", "--server", live_mesh.uri, "--format", "json", sql).stdout.splitlines()]
    assert rows[0] == {"segment": "consumer", "priority": 3} and len(rows) == 5
    param = meshgate("query", "--server", live_mesh.uri, "--format", "json", "--param", "enterprise",
                     "SELECT priority FROM customers.segments WHERE segment = ?")
    assert json.loads(param.stdout) == {"priority": 1}


def test_query_errors_exit_2_with_the_message(live_mesh: LiveMesh) -> None:
    result = meshgate("query", "--server", live_mesh.uri, "SELECT * FROM orders.nope")
    assert result.returncode == 2
    assert "unknown data product 'orders.nope'" in result.stderr
    # the message alone: not pyarrow's server traceback (file paths) nor the driver's wrapping
    assert result.stderr.startswith("error: NOT_FOUND: unknown data product"), result.stderr
    assert "Traceback" not in result.stderr and "Detail:" not in result.stderr and "[FlightSQL]" not in result.stderr
    assert "?." not in result.stderr  # "did you mean ...?" is the end of the gateway's message


def test_running_gateway_sees_a_new_product_within_a_second(live_mesh: LiveMesh, tmp_path: Path) -> None:
    """A gateway of its own over an empty registry (the shared live mesh stays as it is)."""
    from gateway.registry import Registry
    from tests.mesh import start_gateway

    registry = Registry(tmp_path / "registry.db")
    data = live_mesh.mesh.products_dir.parent
    service, server, uri = start_gateway(registry, source_roots=[data])
    try:
        source = next(live_mesh.mesh.products_dir.glob("customers/segments.yaml"))
        doc = yaml.safe_load(source.read_text())
        doc["spec"]["source"]["uri"] = str((source.parent / doc["spec"]["source"]["uri"]).resolve())
        (tmp_path / "segments.yaml").write_text(yaml.safe_dump(doc))
        with pytest.raises(flightsql.Error, match="unknown data product"):
            _count(uri, "customers.segments")
        result = meshgate("product", "register", str(tmp_path / "segments.yaml"), "--registry", str(registry.path),
                          "--source-root", str(data))
        assert result.returncode == 0, result.stderr
        registered = time.monotonic()
        while True:
            try:
                assert _count(uri, "customers.segments") == 5
                break
            except flightsql.Error:
                assert time.monotonic() - registered < 1.0, "a registered product was not queryable within 1 s"
                time.sleep(0.05)
    finally:
        server.shutdown()
        service.close()


def _count(uri: str, product: str) -> int:
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) AS n FROM {product}")
        return cur.fetch_arrow_table().column("n")[0].as_py()


def test_repeated_and_prepared_statements_reuse_their_plan(live_mesh: LiveMesh) -> None:
    service = live_mesh.service
    sql = "SELECT c.country, count(*) AS n FROM customers.customers c JOIN orders.orders o ON o.customer_id = c.customer_id WHERE o.status = ? GROUP BY c.country"
    with flightsql.connect(live_mesh.uri) as conn, conn.cursor() as cur:
        cur.execute(sql, ("delivered",))
        cur.fetch_arrow_table()
        built = service.stats["plans_built"]
        for status in ("returned", "cancelled", "delivered"):
            cur.execute(sql, (status,))
            assert cur.fetch_arrow_table().num_rows > 0
        assert service.stats["plans_built"] == built


def test_a_meshgate_can_be_a_flightsql_source_of_another(live_mesh: LiveMesh, tmp_path: Path) -> None:
    from gateway.descriptor import validate
    from gateway.registry import Registry
    from tests.mesh import start_gateway

    descriptor = {
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": "remote_orders", "domain": "edge", "owner": "x@example.com", "version": "1.0.0"},
        "spec": {"source": {"connector": "flightsql", "uri": live_mesh.uri, "table": "orders.orders"},
                 "schema": [{"name": "order_id", "type": "int64"}, {"name": "status", "type": "string"},
                            {"name": "total_amount", "type": "decimal(12,2)"}]},
    }
    registry = Registry(tmp_path / "edge.db")
    registry.register([validate(descriptor)])
    service, server, uri = start_gateway(registry)
    try:
        with flightsql.connect(uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT status, count(*) AS n, sum(total_amount) AS total FROM edge.remote_orders GROUP BY status ORDER BY status")
            chained = cur.fetch_arrow_table()
            cur.execute("EXPLAIN SELECT status FROM edge.remote_orders WHERE total_amount > 100")
            plan = cur.fetch_arrow_table().to_pylist()
        with flightsql.connect(live_mesh.uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT status, count(*) AS n, sum(total_amount) AS total FROM orders.orders GROUP BY status ORDER BY status")
            direct = cur.fetch_arrow_table()
        assert chained.to_pylist() == direct.to_pylist()
        assert plan[0]["source"].startswith("flightsql:") and "total_amount\" > 100" in plan[0]["sql"]
    finally:
        server.shutdown()
        service.close()
