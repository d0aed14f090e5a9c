"""``GET /api/v1/queries``: the gateway's recent queries, running ones included (``gateway/query_history.py``).

Query parameters, all optional: ``limit`` (1-1000, default 100), ``status`` (``running``, ``ok``,
``error``, ``denied``, ``cancelled``; several comma-separated), ``principal`` (a user name),
``product`` (``domain.product``: queries that read it), ``since`` (an ISO 8601 time, or a duration
such as ``15m`` meaning that long ago). A caller sees only its own queries unless it has role
``admin``; asking for another principal's without it is a 403. Bad parameters are a 422 naming
every one that is wrong. Newest first; each query as ``QueryEntry.as_dict`` describes.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Depends, Request

from gateway.query_history import ADMIN_ROLE, STATUSES, is_admin
from gateway.rest.app import ApiError, caller
from gateway.types import parse_duration
from policies import Principal

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PARAMETERS = ("limit", "status", "principal", "product", "since")

router = APIRouter()


@router.get("/api/v1/queries")
def list_queries(request: Request, principal: Principal = Depends(caller)) -> dict[str, Any]:
    asked = _parameters(request)
    wanted = asked["principal"]
    if not is_admin(principal):
        if wanted is not None and wanted != principal.name:
            raise ApiError(403, "permission denied", f"{principal.name} may list only its own queries; "
                           f"listing the queries of '{wanted}' needs role {ADMIN_ROLE}", "principal")
        wanted = principal.name
    entries = request.app.state.service.history.entries(
        principal=wanted, statuses=asked["status"], product=asked["product"], since=asked["since"], limit=asked["limit"]
    )
    return {"queries": [e.as_dict() for e in entries], "count": len(entries),
            "principal": wanted, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}


def _parameters(request: Request) -> dict[str, Any]:
    """The query parameters, checked; a 422 lists every bad one (the first names ``field``)."""
    params = request.query_params
    problems: list[tuple[str, str]] = []
    for name in params:
        if name not in PARAMETERS:
            problems.append((name, f"unknown parameter (known: {', '.join(PARAMETERS)})"))
    for name in PARAMETERS:
        if len(params.getlist(name)) > 1:
            problems.append((name, "given more than once"))
    asked: dict[str, Any] = {"limit": DEFAULT_LIMIT, "status": (), "principal": None, "product": None, "since": None}
    if (limit := params.get("limit")) is not None:
        if not re.fullmatch(r"\d+", limit.strip()) or not 1 <= int(limit) <= MAX_LIMIT:
            problems.append(("limit", f"{limit!r} is not a whole number from 1 to {MAX_LIMIT}"))
        else:
            asked["limit"] = int(limit)
    if (status := params.get("status")) is not None:
        statuses = tuple(s.strip().lower() for s in status.split(","))
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            problems.append(("status", f"{', '.join(map(repr, unknown))} is not a status (one or more of: {', '.join(STATUSES)})"))
        asked["status"] = statuses
    if (name := params.get("principal")) is not None:
        if not name.strip():
            problems.append(("principal", "a user name is required"))
        asked["principal"] = name.strip()
    if (product := params.get("product")) is not None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*", product.strip().lower()):
            problems.append(("product", f"{product!r} is not a product id (write domain.product)"))
        asked["product"] = product.strip().lower()
    if (since := params.get("since")) is not None:
        try:
            asked["since"] = parse_since(since)
        except ValueError as err:
            problems.append(("since", str(err)))
    if problems:
        raise ApiError(422, "invalid request", "; ".join(f"{f}: {p}" for f, p in problems), problems[0][0])
    return asked


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (naive means UTC) or a duration (``15m``, ``1h``, ``2d``) before now."""
    value = text.strip()
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return datetime.now(timezone.utc) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time (2026-01-31T12:00:00Z) nor a duration (15m, 1h, 2d)") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
