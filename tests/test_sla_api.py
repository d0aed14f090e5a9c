"""The SLA monitor's surfaces: ``meshgate sla check/status`` as a real subprocess, ``GET
/api/v1/sla`` and ``/readyz`` over real HTTP, and ``meshgate serve`` running the monitor in the
background, alerting a real webhook receiver and exporting the metrics on ``/metrics``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.audit import AuditLog
from gateway.descriptor import load_file
from gateway.registry import Registry
from gateway.rest import create_app, serve_http
from gateway.service import GatewayService
from gateway.sla_monitor import SlaMonitor
from gateway.alerts import AlertSink
from policies.engine import PolicyEngine
from tests.test_sla_monitor import Receiver, sqlite_product

WORKTREE = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(WORKTREE), "COLUMNS": "250"}


def meshgate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if response.headers["content-type"].startswith("application/json") else body
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())


def people_product(folder: Path) -> Path:
    """``shop.people``, tagged pii: the shipped policies hide it from ``anonymous``."""
    doc = yaml.safe_load((folder / "orders.yaml").read_text())
    doc["metadata"].update(name="people", tags=["pii"])
    path = folder / "people.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_sla_check_and_status_cli(tmp_path: Path) -> None:
    registry = tmp_path / "registry.db"
    sqlite_product(tmp_path, newest=time.time() - 120)
    Registry(registry).register([load_file(tmp_path / "orders.yaml")])
    ok = meshgate("sla", "check", "--registry", str(registry))
    assert ok.returncode == 0, ok.stderr
    assert "shop.orders" in ok.stdout and "ok" in ok.stdout and "(SLA 1h)" in ok.stdout
    assert "1 product(s) checked, 0 breaching their SLA" in ok.stdout

    receiver = Receiver()
    try:
        from tests.test_sla_monitor import execute_sqlite, stamp

        execute_sqlite(tmp_path, "UPDATE orders SET updated_at = ?", stamp(time.time() - 7200))  # 2 h old data
        stale = meshgate("sla", "check", "shop.orders", "--registry", str(registry), "--alert-webhook", receiver.url)
        assert stale.returncode == 1, stale.stderr
        assert "BREACH" in stale.stdout and "freshness: data is 2h" in stale.stdout
        assert "SLA breach: shop.orders 1.0.0 freshness" in stale.stderr  # the alert's log line
        assert [(b["status"], b["condition"]) for b in receiver.bodies] == [("firing", "freshness")]  # delivered before exit
    finally:
        receiver.close()

    history = meshgate("sla", "status", "shop.orders", "--registry", str(registry))
    assert "2 check(s) of shop.orders, 1 breaching its SLA" in history.stdout, history.stdout
    status = meshgate("sla", "status", "shop.orders", "--registry", str(registry), "--format", "json")
    assert status.returncode == 0, status.stderr
    checks = json.loads(status.stdout)
    assert [c["ok"] for c in checks] == [False, True]  # newest first
    assert checks[0]["breaches"]["freshness"].startswith("data is 2h") and checks[0]["targets"]["freshness"] == 3600

    unknown = meshgate("sla", "check", "shop.nothing", "--registry", str(registry))
    assert unknown.returncode == 2 and "unknown data product 'shop.nothing'" in unknown.stderr
    bad_hook = meshgate("sla", "check", "--registry", str(registry), "--alert-webhook", "mailto:ops@example.com")
    assert bad_hook.returncode == 2 and "expected an http:// or https:// URL" in bad_hook.stderr


def test_rest_sla_lists_visible_products_with_history_and_readyz_shows_the_monitor(tmp_path: Path) -> None:
    sqlite_product(tmp_path, newest=time.time() - 120)
    registry = Registry(tmp_path / "registry.db")
    registry.register([load_file(tmp_path / "orders.yaml"), load_file(people_product(tmp_path))])
    service = GatewayService(registry, policies=PolicyEngine.load(), audit=AuditLog(tmp_path / "audit.log"))
    monitor = SlaMonitor(registry, service.sources.connector_for, AlertSink())
    http = serve_http(create_app(service), "127.0.0.1", 0)
    try:
        status, body = get(http.url + "/api/v1/sla")
        assert status == 200 and [p["product_id"] for p in body["products"]] == ["shop.orders"]  # people: pii, hidden
        assert body["products"][0]["latest"] is None and body["monitor"] is None
        monitor.check_now()
        monitor.check_now()
        service.sla_monitor = monitor
        status, body = get(http.url + "/api/v1/sla?history=1")
        [orders] = body["products"]
        assert orders["latest"]["ok"] and orders["latest"]["availability"] == 100.0 and len(orders["history"]) == 1
        assert orders["targets"] == {"freshness": 3600.0, "freshness_column": "updated_at", "availability": 99.0,
                                     "completeness": 99.0, "quality_threshold": 1.0, "monitor_every": 300.0}
        assert body["monitor"]["products_checked"] == 2 and body["monitor"]["breaching"] == {}
        status, one = get(http.url + "/api/v1/sla/shop.orders")
        assert status == 200 and len(one["history"]) == 2 and one["latest"] == one["history"][0]
        assert get(http.url + "/api/v1/sla?breaching=true")[1]["products"] == []
        status, denied = get(http.url + "/api/v1/sla/shop.people")
        assert status == 404 and denied["detail"] == "unknown data product 'shop.people'"  # invisible, as if unknown
        status, missing = get(http.url + "/api/v1/sla/shop.nothing")
        assert status == 404 and "unknown data product" in missing["detail"]
        status, ready = get(http.url + "/readyz")
        assert status == 200 and ready["sla_monitor"]["products_checked"] == 2 and not ready["sla_monitor"]["running"]
    finally:
        http.stop()
        monitor.stop()
        service.close()


def test_serve_runs_the_monitor_alerts_and_exports_metrics(tmp_path: Path, free_port) -> None:  # noqa: ANN001
    products = tmp_path / "products"
    products.mkdir()
    sqlite_product(products, newest=time.time() - 7200, monitor_every="1s")  # 2 h old against a 1 h SLA
    receiver = Receiver()
    http_port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--insecure-no-auth", "--host", "127.0.0.1", "--port", "0",
         "--http-port", str(http_port), "--registry", str(tmp_path / "registry.db"), "--products", str(products),
         "--alert-webhook", receiver.url, "--grace-period", "0"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        bodies = receiver.wait_for(1, timeout=30)
        assert [(b["status"], b["product_id"], b["condition"]) for b in bodies] == [("firing", "shop.orders", "freshness")]
        assert 7200 <= bodies[0]["observed"] < 7300
        base = f"http://127.0.0.1:{http_port}"
        status, ready = get(base + "/readyz")
        assert status == 200 and ready["sla_monitor"]["running"] and ready["sla_monitor"]["breaching"] == {"shop.orders": ["freshness"]}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # checked every second: the history grows
            if len(get(base + "/api/v1/sla/shop.orders")[1]["history"]) >= 3:
                break
            time.sleep(0.2)
        text = get(base + "/metrics")[1]
        found = {(s.name, tuple(sorted(s.labels.items()))): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        assert 7200 <= found[("product_data_age_seconds", (("product_id", "shop.orders"),))] < 7300
        assert found[("product_sla_freshness_breaches_total", (("product_id", "shop.orders"),))] == 1  # once, not per check
        assert found[("product_sla_breached", (("condition", "freshness"), ("product_id", "shop.orders")))] == 1
        assert found[("product_availability_ratio", (("product_id", "shop.orders"),))] == 1.0
        assert found[("product_quality_score", (("product_id", "shop.orders"),))] == 1.0
        assert found[("sla_check_seconds_count", ())] >= 3
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        receiver.close()
    assert server.returncode == 0, err
    assert "SLA monitor on: 1 products" in err and "SLA breach: shop.orders 1.0.0 freshness" in err
