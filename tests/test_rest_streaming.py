"""A large result streams through the REST API without being held in the server's memory.

``meshgate serve`` runs as its own process over a product that is a PostgreSQL query of millions
of rows. The test reads Arrow IPC streams of one million rows (about 40 MiB), then of four million
(about 170 MiB), and watches the server's resident memory: after the first stream has warmed up
the buffers and the allocator, the four times larger one must not raise the peak by half its size
(materialising it would add all of it, and more). Measured on a 2-core machine: the 4-million-row
stream (168 MiB) raised the peak by ~55 MiB, and the peak over the idle server was the same ~75 MiB
for 3 and for 8 million rows (126 and 336 MiB): bounded, not proportional.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

pytestmark = pytest.mark.postgres

ROWS = 4_000_000
ARROW = "application/vnd.apache.arrow.stream"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Streamed:
    rows: int
    received: int  # Arrow bytes
    peak: int  # the server's highest resident memory seen while streaming
    first_batch: float  # seconds
    seconds: float

    def __str__(self) -> str:
        return (f"streamed {self.rows:,} rows, {self.received / 1024**2:.0f} MiB in {self.seconds:.1f} s, first batch after "
                f"{self.first_batch * 1000:.0f} ms; server peak RSS {self.peak / 1024**2:.0f} MiB")


def stream(url: str, pid: int, rows: int) -> Streamed:
    """Read ``rows`` rows as an Arrow stream, a little slowly, sampling the server's memory."""
    result = Streamed(0, 0, rss_bytes(pid), 0.0, 0.0)
    started = time.perf_counter()
    with urllib.request.urlopen(post(url, f"SELECT n, h FROM bulk.numbers WHERE n <= {rows}"), timeout=120) as response:
        for batch in pa.ipc.open_stream(response):
            result.first_batch = result.first_batch or time.perf_counter() - started
            result.rows += batch.num_rows
            result.received += batch.nbytes
            result.peak = max(result.peak, rss_bytes(pid))
            time.sleep(0.001)  # a slow reader: the server must not buffer ahead of it
    result.seconds = time.perf_counter() - started
    return result


def post(url: str, sql: str) -> urllib.request.Request:
    request = urllib.request.Request(url, data=json.dumps({"sql": sql}).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Accept", ARROW)
    return request


def test_millions_of_rows_stream_in_bounded_memory(pg_uri: str, tmp_path: Path, free_port) -> None:  # noqa: ANN001
    products = tmp_path / "products"
    products.mkdir()
    (products / "numbers.yaml").write_text(yaml.safe_dump({
        "apiVersion": "datamesh.io/v1", "kind": "DataProduct",
        "metadata": {"name": "numbers", "domain": "bulk", "owner": "bulk@example.com", "version": "1.0.0"},
        "spec": {
            "source": {"connector": "postgres", "uri": pg_uri,
                       "query": f"SELECT g::bigint AS n, md5(g::text) AS h FROM generate_series(1, {ROWS}) AS g"},
            "schema": [{"name": "n", "type": "int64", "required": True}, {"name": "h", "type": "string", "required": True}],
        },
    }))
    port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--http-port", str(http_port),
         "--registry", str(tmp_path / "registry.db"), "--products", str(products), "--insecure-no-auth",
         "--cache-bytes", "0", "--audit-log", str(tmp_path / "audit.log")],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    url = f"http://127.0.0.1:{http_port}/api/v1/query"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(post(url, "SELECT n, h FROM bulk.numbers LIMIT 1000"), timeout=5) as response:
                    pa.ipc.open_stream(response).read_all()  # warm: imports, connections, plan machinery
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        small = stream(url, process.pid, ROWS // 4)
        large = stream(url, process.pid, ROWS)
        print(f"\n{small}\n{large}")
        assert small.rows == ROWS // 4 and large.rows == ROWS and large.received > 150 * 1024**2
        assert large.peak - small.peak < large.received / 2, \
            f"a {large.received / 1024**2:.0f} MiB result raised the server's peak by {(large.peak - small.peak) / 1024**2:.0f} MiB"
        assert large.first_batch < large.seconds / 4
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
