"""``GET /api/v1/sla``: each product's SLA targets, latest check and recent history, as the SLA
monitor recorded them (``gateway/sla_monitor.py``); only products the caller may read.

- ``GET /api/v1/sla?history=10&breaching=true``: every visible product read from a source:
  ``product_id``, ``version``, ``targets``, ``latest`` (null until first checked) and the
  ``history`` (newest first, ``history`` checks, default 10, 0 for none); ``breaching=true``
  keeps only products whose latest check breaches its SLA. ``monitor`` is the background
  monitor's state (null when the gateway runs without it).
- ``GET /api/v1/sla/{product_id}?history=100``: one product; 404 if unknown or if the caller
  may not read it (an unreadable product is invisible, as in the data-products API).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from gateway.descriptor import Descriptor
from gateway.rest.app import caller
from gateway.rest.query import visible_product
from gateway.sla_monitor import store_for, targets_json
from policies import Principal

router = APIRouter()


@router.get("/api/v1/sla")
def sla_overview(
    request: Request,
    history: int = Query(10, ge=0, le=1000),
    breaching: bool = Query(False),
    principal: Principal = Depends(caller),
) -> dict[str, Any]:
    service = request.app.state.service
    store = store_for(service.registry)
    latest = store.latest_all()
    products = []
    for d in service.registry.catalog().products():
        if d.source.connector == "mesh" or not service.policies.decide(principal, d).allowed:
            continue
        if breaching and not (d.product_id in latest and latest[d.product_id].breaches):
            continue
        products.append(_product(d, latest.get(d.product_id), store.history(d.product_id, history) if history else []))
    monitor = getattr(service, "sla_monitor", None)
    return {"products": products, "monitor": monitor.state() if monitor is not None else None}


@router.get("/api/v1/sla/{product_id}")
def sla_product(
    request: Request,
    product_id: str,
    history: int = Query(100, ge=0, le=10000),
    principal: Principal = Depends(caller),
) -> dict[str, Any]:
    service = request.app.state.service
    descriptor = visible_product(service, principal, product_id)  # unknown or unreadable: 404 alike
    store = store_for(service.registry)
    recorded = store.history(descriptor.product_id, max(history, 1))
    return _product(descriptor, recorded[0] if recorded else None, recorded[:history])


def _product(d: Descriptor, latest: Any, history: list[Any]) -> dict[str, Any]:
    return {
        "product_id": d.product_id,
        "version": d.version,
        "targets": targets_json(d.sla),
        "latest": latest.to_json() if latest is not None else None,
        "history": [s.to_json() for s in history],
    }
