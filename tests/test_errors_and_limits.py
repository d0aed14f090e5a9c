"""Errors are clear and typed, limits hold, and nothing a client does takes the gateway down.

Each gateway here is a real Flight SQL server on a socket, queried with the real ADBC driver;
the PostgreSQL source is the real throw-away server, stopped and started for the outage test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import adbc_driver_flightsql.dbapi as flightsql
import psycopg2
import pytest

from gateway.registry import Registry
from gateway.service import Settings
from tests.mesh import LiveMesh, start_gateway

pytestmark = pytest.mark.postgres


def run(uri: str, sql: str, params: tuple | None = None):  # noqa: ANN201
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def error_of(uri: str, sql: str) -> str:
    with pytest.raises(flightsql.Error) as info:
        run(uri, sql)
    return str(info.value)


def assert_still_serving(uri: str) -> None:
    assert run(uri, "SELECT count(*) AS n FROM customers.segments").column("n")[0].as_py() == 5


@pytest.fixture()
def limited(live_mesh: LiveMesh) -> Iterator:
    """A factory for extra gateways over the same registry with tighter limits."""
    started = []

    def make(**settings: object) -> str:
        service, server, uri = start_gateway(live_mesh.registry, Settings(**settings))  # type: ignore[arg-type]
        started.append((service, server))
        return uri

    yield make
    for service, server in started:
        server.shutdown()
        service.close()


def test_syntax_error_is_invalid_argument_with_position(live_mesh: LiveMesh) -> None:
    message = error_of(live_mesh.uri, "SELECT customer_id FROM customers.customers WHERE (")
    assert "INVALID_ARGUMENT" in message or "InvalidArgument" in message
    assert "syntax error" in message and "line 1" in message
    assert_still_serving(live_mesh.uri)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO orders.orders VALUES (1)",
        "DELETE FROM orders.orders",
        "UPDATE orders.orders SET status = 'x'",
        "DROP TABLE orders.orders",
        "CREATE TABLE x (a int)",
        "COPY orders.orders TO '/tmp/x'",
        "SET search_path = orders",
        "SELECT 1; DROP TABLE orders.orders",
    ],
)
def test_anything_but_a_read_is_rejected(live_mesh: LiveMesh, sql: str) -> None:
    message = error_of(live_mesh.uri, sql)
    assert "INVALID_ARGUMENT" in message or "InvalidArgument" in message, message
    assert "not allowed" in message or "one statement at a time" in message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM payments.payments p, read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/tmp/*.parquet')",
        "SELECT pg_read_file('/etc/passwd') FROM shipping.carriers",
        "SELECT * FROM payments.payments WHERE method = (SELECT read_text('/etc/hostname'))",
        "SELECT * FROM dblink('host=127.0.0.1', 'SELECT 1') AS t(a int)",
        "SELECT load_extension('x') FROM customers.segments",
        "SELECT current_setting('data_directory') FROM shipping.carriers",
        "SELECT * FROM sqlite_master",
    ],
)
def test_functions_that_reach_outside_the_mesh_are_rejected(live_mesh: LiveMesh, sql: str) -> None:
    message = error_of(live_mesh.uri, sql)
    assert "not allowed" in message or "NOT_FOUND" in message or "NotFound" in message, message
    assert "root:" not in message


def test_unknown_product_is_not_found_with_suggestions(live_mesh: LiveMesh) -> None:
    message = error_of(live_mesh.uri, "SELECT * FROM orders.order")
    assert "NOT_FOUND" in message or "NotFound" in message, message
    assert "orders.order" in message and "did you mean" in message and "orders.orders" in message


def test_unqualified_name_points_to_the_product(live_mesh: LiveMesh) -> None:
    message = error_of(live_mesh.uri, "SELECT * FROM carriers")
    assert "shipping.carriers" in message


def test_unknown_column_is_invalid_argument_naming_it(live_mesh: LiveMesh) -> None:
    message = error_of(live_mesh.uri, "SELECT colour FROM customers.customers")
    assert "colour" in message and ("INVALID_ARGUMENT" in message or "InvalidArgument" in message)


def test_source_outage_is_unavailable_and_the_gateway_recovers(live_mesh: LiveMesh, pg_control) -> None:  # noqa: ANN001
    sql = "SELECT k.name, count(*) AS n FROM shipping.shipments s JOIN shipping.carriers k ON k.carrier_id = s.carrier_id GROUP BY k.name"
    before = run(live_mesh.uri, sql)
    pg_control.stop()
    try:
        message = error_of(live_mesh.uri, sql)
        assert "UNAVAILABLE" in message or "Unavailable" in message, message
        assert "postgres:" in message and "shipping.shipments@1.0.0" in message
        assert_still_serving(live_mesh.uri)  # other sources keep working
    finally:
        pg_control.start()
    assert run(live_mesh.uri, sql).equals(before)


def test_query_past_its_timeout_is_cancelled_at_the_source(live_mesh: LiveMesh, limited, pg_uri: str) -> None:  # noqa: ANN001
    uri = limited(query_timeout=1.0)
    started = time.monotonic()
    message = error_of(uri, "SELECT pg_sleep(20), k.name FROM shipping.carriers k")
    assert time.monotonic() - started < 8
    assert "DEADLINE_EXCEEDED" in message or "timeout" in message.lower(), message
    deadline = time.monotonic() + 5
    while _sleeping_queries(pg_uri) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleeping_queries(pg_uri) == 0, "pg_sleep still running at the source after the timeout"
    assert_still_serving(uri)


def _sleeping_queries(pg_uri: str, call: str = "pg_sleep(20)") -> int:
    conn = psycopg2.connect(pg_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
                        (f"%{call}%",))
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_memory_hungry_query_fails_alone_with_resource_exhausted(live_mesh: LiveMesh, limited) -> None:  # noqa: ANN001
    uri = limited(memory_limit=8 * 1024 * 1024)
    message = error_of(
        uri,
        "SELECT a.order_id, array_agg(b.payment_id) AS p FROM orders.order_items a CROSS JOIN payments.payments b "
        "GROUP BY a.order_id",
    )
    # pyarrow's Flight server cannot send gRPC RESOURCE_EXHAUSTED: UNAVAILABLE, named in the message
    assert "RESOURCE_EXHAUSTED: " in message and ("Unavailable" in message or "UNAVAILABLE" in message), message
    assert "memory" in message
    assert_still_serving(uri)


def test_concurrency_limit_queues_then_refuses(live_mesh: LiveMesh, limited) -> None:  # noqa: ANN001
    uri = limited(max_concurrent_queries=1, max_queued_queries=0)
    slow = threading.Thread(target=lambda: run(uri, "SELECT pg_sleep(2), name FROM shipping.carriers LIMIT 1"))
    slow.start()
    time.sleep(0.7)
    message = error_of(uri, "SELECT count(*) FROM customers.segments")
    slow.join()
    assert "RESOURCE_EXHAUSTED: " in message, message
    assert "capacity" in message
    assert_still_serving(uri)


def test_queued_query_waits_for_a_slot(live_mesh: LiveMesh, limited) -> None:  # noqa: ANN001
    uri = limited(max_concurrent_queries=1, max_queued_queries=4)
    slow = threading.Thread(target=lambda: run(uri, "SELECT pg_sleep(1), name FROM shipping.carriers LIMIT 1"))
    slow.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert_still_serving(uri)
    assert time.monotonic() - started > 0.3  # it waited for the slow one
    slow.join()


def test_client_disconnect_mid_stream_frees_the_query(live_mesh: LiveMesh) -> None:
    service = live_mesh.service
    conn = flightsql.connect(live_mesh.uri)
    cur = conn.cursor()
    cur.execute("SELECT a.order_id, b.payment_id FROM orders.order_items a CROSS JOIN payments.payments b")
    reader = cur.fetch_record_batch()
    reader.read_next_batch()
    cur.close()
    conn.close()
    deadline = time.monotonic() + 10
    while service._admission.running and time.monotonic() < deadline:  # noqa: SLF001 - the observable we need
        time.sleep(0.1)
    assert service._admission.running == 0  # noqa: SLF001
    assert_still_serving(live_mesh.uri)


def test_large_result_streams_in_bounded_batches(live_mesh: LiveMesh) -> None:
    with flightsql.connect(live_mesh.uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT a.order_id, a.product_sku, b.method FROM orders.order_items a CROSS JOIN payments.payments b LIMIT 3000000")
        reader = cur.fetch_record_batch()
        rows = 0
        for batch in reader:
            assert batch.nbytes <= 16 * 1024 * 1024
            rows += batch.num_rows
    assert rows == 3_000_000


def test_secrets_in_uris_never_reach_explain_or_errors(tmp_path: Path, pg_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_TEST_SECRET", "s3cr3t-pw")
    host = pg_uri.split("@", 1)[1]
    descriptor = {
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": "probe", "domain": "secrets", "owner": "x@example.com", "version": "1.0.0"},
        "spec": {"source": {"connector": "postgres", "uri": "postgresql://postgres:${MESHGATE_TEST_SECRET}@" + host,
                            "table": "pg_catalog.pg_namespace"},
                 "schema": [{"name": "nspname", "type": "string"}]},
    }
    from gateway.descriptor import validate

    registry = Registry(tmp_path / "r.db")
    registry.register([validate(descriptor)])
    service, server, uri = start_gateway(registry)
    try:
        plan = run(uri, "EXPLAIN SELECT nspname FROM secrets.probe")
        text = str(plan.to_pylist())
        assert "s3cr3t-pw" not in text and "***" in text
        assert run(uri, "SELECT count(*) AS n FROM secrets.probe").column("n")[0].as_py() > 0
        message = error_of(uri, "SELECT nspname, pg_sleep('x') FROM secrets.probe")
        assert "s3cr3t-pw" not in message
    finally:
        server.shutdown()
        service.close()


def test_sigterm_drains_running_queries_then_exits(tmp_path: Path, live_mesh: LiveMesh, free_port, pg_uri: str) -> None:  # noqa: ANN001
    port = free_port()
    env = {**os.environ, "MESHGATE_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--insecure-no-auth", "--host", "127.0.0.1", "--port", str(port),
         "--registry", str(live_mesh.registry.path), "--grace-period", "10"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    uri = f"grpc://127.0.0.1:{port}"
    try:
        first_line = process.stderr.readline()
        assert "authentication is OFF" in first_line
        _wait_until_serving(uri)
        result: dict[str, object] = {}
        slow = threading.Thread(
            target=lambda: result.update(table=run(uri, "SELECT pg_sleep(2) AS s, name FROM shipping.carriers LIMIT 1"))
        )
        slow.start()
        deadline = time.monotonic() + 20  # SIGTERM once the query runs at the source, however loaded the machine
        while not _sleeping_queries(pg_uri, "pg_sleep(2)") and slow.is_alive():
            assert time.monotonic() < deadline, "the query never reached PostgreSQL"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        slow.join(timeout=20)
        assert result.get("table") is not None and result["table"].num_rows == 1  # type: ignore[union-attr]
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_refuses_to_start_without_auth_or_insecure_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--registry", str(tmp_path / "r.db")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "--insecure-no-auth" in result.stderr


def _wait_until_serving(uri: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            run(uri, "SELECT 1 AS one")
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


