"""``GET /api/v1/catalog/search``: find data products across domains (``gateway/catalog_search.py``).

Parameters: ``q`` (free text; empty lists every product by popularity and health), ``domain``
and ``owner`` (comma-separated or repeated: any of them), ``tags`` (comma-separated or repeated:
all of them), ``limit`` (1-1000, default 20). The response is the seed design's shape
(``results``, ``total_results``, ``search_time_ms``), each result with its ``score``,
``matches`` and ``why``. Only products the caller may read are searched. A bad parameter is a
422 naming every problem.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.catalog_search import DEFAULT_LIMIT, MAX_LIMIT, search_as
from gateway.descriptor import NAME
from gateway.rest.app import ApiError, Problem, caller, errors
from policies import Principal

router = APIRouter(tags=["catalog"])

PARAMETERS = ("q", "domain", "tags", "owner", "limit")
MAX_QUERY_LENGTH = 1000
_TAG = re.compile(r"^[^,\s][^,]*$")


@router.get("/api/v1/catalog/search", responses=errors(), summary="Search data products across domains")
def search(request: Request, principal: Principal = Depends(caller)) -> JSONResponse:
    """Products matching `q` (name, description, columns, tags, owner, domain), ranked (exact name
    first, then relevance boosted by usage and health), filtered by `domain`, `tags` (all),
    `owner`; at most `limit` (1-1000, default 20). Only products the caller may read."""
    params = request.query_params
    problems: list[tuple[str, str]] = []  # (field, message)
    for unknown in sorted(set(params) - set(PARAMETERS)):
        problems.append((unknown, f"unknown parameter '{unknown}' (known: {', '.join(PARAMETERS)})"))
    texts = params.getlist("q")
    if len(texts) > 1:
        problems.append(("q", "give q once"))
    text = texts[0] if texts else ""
    if len(text) > MAX_QUERY_LENGTH:
        problems.append(("q", f"at most {MAX_QUERY_LENGTH} characters (got {len(text)})"))
    domains = _listed(params.getlist("domain"))
    problems += [("domain", f"'{d}' is not a domain name (lower-case, [a-z][a-z0-9_]*)") for d in domains if not NAME.match(d)]
    tags = _listed(params.getlist("tags"))
    problems += [("tags", f"'{t}' is not a tag") for t in tags if not _TAG.match(t)]
    owners = _listed(params.getlist("owner"))
    limit = DEFAULT_LIMIT
    limits = params.getlist("limit")
    if len(limits) > 1:
        problems.append(("limit", "give limit once"))
    elif limits:
        try:
            limit = int(limits[0])
            if not 1 <= limit <= MAX_LIMIT:
                raise ValueError
        except ValueError:
            problems.append(("limit", f"expected a whole number from 1 to {MAX_LIMIT}, got '{limits[0]}'"))
    if problems:
        raise ApiError(422, "invalid request", "; ".join(f"{f}: {m}" for f, m in problems), problems[0][0],
                       problems=[Problem(field=f, message=m) for f, m in problems])
    results = search_as(request.app.state.service, principal, text, domains=domains, tags=tags, owners=owners, limit=limit)
    return JSONResponse(results.to_json())


def _listed(values: list[str]) -> list[str]:
    """``a,b`` and repeated parameters alike, blanks dropped, each stripped."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
