"""Probes and metrics: ``/healthz``, ``/readyz``, ``/metrics``; no authentication.

- ``GET /healthz``: ``{"status": "ok"}``.
- ``GET /readyz``: 200 when the registry is readable, the policies loaded without error and every
  source answers a cheap probe (its first product, ``LIMIT 0``, within 2 s); 503 otherwise.
  The body has each check and a ``sources`` list with per-source detail, and, when the SLA
  monitor runs, its state (``sla_monitor``: running, last pass, products breaching their SLA),
  which does not affect readiness.
- ``GET /metrics``: Prometheus text format (``gateway/metrics.py``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    report = readiness(request.app.state.service)
    return JSONResponse(report, status_code=200 if report["ready"] else 503)


@router.get("/metrics")
def prometheus_metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def readiness(service: Any, timeout: float = 2.0) -> dict[str, Any]:
    """The ``/readyz`` report: registry, policies and each source's probe, with ``ready``."""
    from concurrent.futures import ThreadPoolExecutor, wait

    report: dict[str, Any] = {"ready": False, "registry": {"ok": False}, "policies": {"ok": False}, "sources": []}
    try:
        catalog = service.registry.catalog()
        report["registry"] = {"ok": True, "generation": catalog.generation, "products": len(catalog.versions)}
    except Exception as err:  # noqa: BLE001 - any failure to read it means not ready
        report["registry"] = {"ok": False, "error": str(err)[:300]}
        return report
    error = service.policies.last_error
    report["policies"] = {"ok": error is None, "generation": service.policies.generation} | ({"error": error} if error else {})
    by_source: dict[tuple[str, str], Any] = {}
    for descriptor in catalog.products():
        if descriptor.derived:  # a view over other products: their sources are probed
            continue
        by_source.setdefault((descriptor.source.connector, descriptor.source.uri), descriptor)
    pool = ThreadPoolExecutor(max_workers=max(1, min(8, len(by_source))), thread_name_prefix="readyz")
    futures = {pool.submit(_probe, service, d): d for d in by_source.values()}
    done, _ = wait(futures, timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    for future, d in futures.items():
        detail: dict[str, Any] = {"connector": d.source.connector, "probed_product": d.product_id}
        if future not in done:
            detail |= {"ok": False, "error": f"no answer within {timeout:g} s"}
        elif future.exception() is not None:
            detail |= {"ok": False, "error": str(future.exception())[:300]}
        else:
            detail |= {"ok": True, "source": future.result()[0], "latency_ms": future.result()[1]}
        report["sources"].append(detail)
    report["ready"] = report["policies"]["ok"] and all(s["ok"] for s in report["sources"])
    monitor = getattr(service, "sla_monitor", None)
    if monitor is not None:  # informational: a product breaching its SLA does not make the gateway unready
        try:
            report["sla_monitor"] = monitor.state()
        except Exception as err:  # noqa: BLE001
            report["sla_monitor"] = {"running": monitor.running, "error": str(err)[:300]}
    return report


def _probe(service: Any, descriptor: Any) -> tuple[str, float]:
    """Ask the product's source for none of its rows; (source's display name, milliseconds)."""
    from sqlglot import exp

    started = time.perf_counter()
    connector = service.sources.connector_for(descriptor)
    relation = connector.relation(descriptor.source.table, descriptor.source.query)
    scan = connector.scan(connector.render(exp.select("*").from_(relation).limit(0)))
    try:
        scan.reader.schema
    finally:
        scan.close()
    return connector.display_name, round((time.perf_counter() - started) * 1000, 3)
