"""``GET /api/v1/lineage/{product}``: the products a product is built from and the ones built
from it (``gateway/lineage.py``).

Parameters: ``direction`` (``up``, ``down`` or ``both``, default ``both``) and ``depth`` (edges
to follow, 1-50, default 3). ``product`` is ``domain.name`` (the newest active major) or
``domain.name@MAJOR``. The answer lists ``nodes`` (each with its ``distance``: negative upstream,
positive downstream) and ``edges`` (``from`` upstream ``to`` downstream, ``kind`` ``query`` or
``input_port``). A product the caller may not read appears as an opaque ``hidden`` node; the
product asked about must be readable (404 otherwise, as for an unknown one). A bad parameter is
a 422 naming every problem.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.lineage import DIRECTIONS, MAX_DEPTH, lineage
from gateway.rest.app import ApiError, caller
from gateway.rest.query import visible_product
from policies import Principal

router = APIRouter()

PARAMETERS = ("direction", "depth")
DEFAULT_DEPTH = 3


@router.get("/api/v1/lineage/{product}")
def product_lineage(product: str, request: Request, principal: Principal = Depends(caller)) -> JSONResponse:
    params = request.query_params
    problems: list[tuple[str, str]] = []
    for unknown in sorted(set(params) - set(PARAMETERS)):
        problems.append((unknown, f"unknown parameter '{unknown}' (known: {', '.join(PARAMETERS)})"))
    direction = params.get("direction", "both")
    if direction not in DIRECTIONS:
        problems.append(("direction", f"'{direction}' is not one of {', '.join(DIRECTIONS)}"))
    depth = DEFAULT_DEPTH
    if "depth" in params:
        try:
            depth = int(params["depth"])
            if not 1 <= depth <= MAX_DEPTH:
                raise ValueError
        except ValueError:
            problems.append(("depth", f"expected a whole number from 1 to {MAX_DEPTH}, got '{params['depth']}'"))
    if problems:
        raise ApiError(422, "invalid request", "; ".join(f"{f}: {m}" for f, m in problems), problems[0][0])
    service = request.app.state.service
    visible_product(service, principal, product)  # unknown or unreadable: 404 alike, no hint at other products
    visible = lambda descriptor: service.policies.decide(principal, descriptor).allowed  # noqa: E731
    graph = lineage(service.catalog(), product, direction, depth, visible)
    return JSONResponse(graph.as_json())
