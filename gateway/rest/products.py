"""Data products over HTTP: publish, list, describe, version history, deprecate, retire.

- ``POST /api/v1/data-products``: a descriptor (or several: a list, or a multi-document YAML
  stream) as YAML (``Content-Type: application/yaml``) or JSON, published atomically through
  ``GatewayService.publish`` with every check (``gateway/publishing.py``). 201 when a version was
  published, 200 when nothing changed or for ``?dry_run=true``, 403 without role
  ``owner:<domain>`` or ``admin``, 422 listing every problem, 409 when a concurrent registration
  of the same product won. The answer is the seed design's (``product_id``, ``version``,
  ``status``, ``validation_checks``) with every check.
- ``GET /api/v1/data-products``: the products the caller may read, newest version each, filtered
  by ``domain``, ``tag`` (repeatable, all must match), ``owner``, ``status`` (repeatable; default
  the queryable ones, active and deprecated), paginated by ``limit`` and ``offset``.
- ``GET /api/v1/data-products/{id}``: the newest queryable version (or ``{id}@MAJOR``'s): its
  contract, SLA, lifecycle status, majors and latest quality result.
- ``GET /api/v1/data-products/{id}/versions``: every registered version with its status.
- ``POST /api/v1/data-products/{id}/deprecate`` and ``/retire``: ``GatewayService.set_status``
  (owner or admin; retiring waits for the deprecation notice unless an admin forces it).

A product the caller may not read is invisible to the GETs: 404, exactly as if it did not
exist, as Flight SQL's metadata calls leave it out.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

import yaml
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway.descriptor import Descriptor
from gateway.errors import NotFound
from gateway.registry import VersionRecord
from gateway.rest.app import ApiError, Problem, caller, errors, path_problem
from gateway.rest.query import visible_product
from policies import Principal

router = APIRouter(tags=["data products"])

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
MAX_LIMIT = 1000


# --- models (for the OpenAPI description) ----------------------------------------------------------


class Summary(BaseModel):
    """A product as listings show it (its newest version)."""

    product_id: str
    domain: str
    name: str
    version: str
    status: str = Field(description="active, deprecated or retired")
    owner: str
    description: str
    tags: list[str]
    sla: dict[str, Any]
    majors: list[int] = Field(description="queryable major versions, newest first (query one as domain.\"name@MAJOR\")")


class ProductList(BaseModel):
    products: list[Summary]
    total: int = Field(description="products matching the filters (before pagination)")
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, null on the last")


class Lifecycle(BaseModel):
    status: str
    registered_at: dt.datetime
    published_by: str | None = None
    deprecated_at: dt.datetime | None = None
    retired_at: dt.datetime | None = None
    reason: str = ""
    replaced_by: str = ""


class Detail(Summary):
    """One product version with its contract, SLA, lifecycle and latest quality."""

    lifecycle: Lifecycle
    contract: dict[str, Any] = Field(description="columns (name, type, required, primary_key, description, pii, "
                                                 "classification, enum, min, max, pattern, references, tags), compatibility, deprecation")
    quality_rules: list[dict[str, Any]]
    quality: dict[str, Any] | None = Field(description="the latest quality run (score, version, checked_at, results), null if none")
    source: dict[str, Any] = Field(description="the connector (and table); never the URI")
    input_ports: list[dict[str, Any]]


class VersionEntry(Lifecycle):
    version: str
    major: int


class VersionList(BaseModel):
    product_id: str
    versions: list[VersionEntry] = Field(description="newest first")


class CheckResult(BaseModel):
    product_id: str
    version: str
    name: str = Field(description="descriptor, permission, version, compatibility, governance, source_root, "
                                  "source_connectivity, schema_validation, quality.<rule> or publish")
    status: str = Field(description="passed, failed, warning or skipped")
    detail: str


class PublishResult(BaseModel, extra="allow"):
    """The seed design's answer (``product_id``, ``version``, ``status``, ``validation_checks``)
    with every check; on a refusal also ``error``, ``detail``, ``field`` and ``problems``."""

    product_id: str | None = Field(None, description="the (first) product of the request")
    version: str | None = None
    status: str = Field(description="published, unchanged, validated (dry run) or refused")
    validation_checks: dict[str, str] = Field(description="each kind of check: its worst status")
    checks: list[CheckResult]
    published: list[dict[str, str]]


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(None, description="a major (2 or @2) or a version (2.1.0); default: the major of the "
                                                  "path's @MAJOR, else every version of the product")
    reason: str = Field("", description="why, for consumers (shown in metadata and errors)")
    replaced_by: str = Field("", description="what to use instead, e.g. orders.orders@3")
    force: bool = Field(False, description="retire without deprecation notice (needs role admin)")


class StatusResult(BaseModel):
    product_id: str
    status: str
    changed: list[str]
    unchanged: list[str]
    at: str
    principal: str
    reason: str
    replaced_by: str
    forced: bool


# --- publishing ------------------------------------------------------------------------------------


PUBLISH_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}, "example": "apiVersion: datamesh.io/v1\nkind: DataProduct\n..."},
        "application/json": {"schema": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}},
    },
}


@router.post("/api/v1/data-products", status_code=201, response_model=PublishResult,
             responses={200: {"model": PublishResult, "description": "nothing changed, or a dry run"},
                        **errors(400, 403, 409), 415: {"description": "not YAML or JSON"}},
             openapi_extra={"requestBody": PUBLISH_BODY}, summary="Publish data product descriptors")
async def publish(request: Request, dry_run: bool = Query(False, description="run every check, publish nothing"),
                  skip_quality: bool = Query(False, description="do not run the quality gates at the source"),
                  principal: Principal = Depends(caller)) -> JSONResponse:
    """Validate, check (permission, compatibility, governance, source, schema, quality gates) and
    publish one or more descriptors atomically: all or none. Every problem is listed."""
    documents = _documents(await request.body(), request.headers.get("content-type"))
    report = await run_in_threadpool(lambda: request.app.state.service.publish(
        documents, principal, run_quality=not skip_quality, dry_run=dry_run))
    body = report.to_json()
    first = next(iter(report.checks), None)
    if first is not None:
        body = {"product_id": first.product_id, "version": first.version, **body}
    if report.ok:
        created = report.status == "published"
        headers = {"Location": f"/api/v1/data-products/{first.product_id}"} if created and first else {}
        return JSONResponse(body, status_code=201 if created else 200, headers=headers)
    failures = report.failures
    denied = any(c.name == "permission" for c in failures)
    problems = [path_problem(c.detail) if c.name == "descriptor" else Problem(field=c.name, message=f"{c.product_id} {c.version}: {c.detail}")
                for c in failures]
    error = ApiError(403 if denied else 422, "permission denied" if denied else "invalid data product",
                     "; ".join(f"{p.field}: {p.message}" for p in problems), problems[0].field, problems=problems)
    return JSONResponse({**body, **json.loads(error.response().body)}, status_code=error.status)


def _documents(raw: bytes, content_type: str | None) -> list[Any]:
    """The descriptor documents of a YAML or JSON body (one, a list, or a YAML stream)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if not raw.strip():
        raise ApiError(422, "invalid request", "body: a data product descriptor (YAML or JSON) is required", "body")
    try:
        if media in YAML_TYPES:
            documents = [d for d in yaml.safe_load_all(raw) if d is not None]
            if len(documents) == 1 and isinstance(documents[0], list):
                documents = documents[0]
        elif media == "application/json" or media.endswith("+json"):
            parsed = json.loads(raw)
            documents = parsed if isinstance(parsed, list) else [parsed]
        else:
            raise ApiError(415, "unsupported media type", f"send the descriptor as application/yaml or application/json, "
                           f"not {media or 'no Content-Type'}", "Content-Type")
    except yaml.YAMLError as err:
        raise ApiError(400, "invalid YAML", f"the request body is not valid YAML: {err}") from None
    except ValueError as err:
        raise ApiError(400, "invalid JSON", f"the request body is not valid JSON: {err}") from None
    if not documents:
        raise ApiError(422, "invalid request", "body: no descriptor in the body", "body")
    return documents


# --- reading ---------------------------------------------------------------------------------------


@router.get("/api/v1/data-products", response_model=ProductList, responses=errors(), summary="List data products")
def list_products(
    request: Request,
    domain: str | None = Query(None, description="only this domain"),
    tag: list[str] = Query([], description="only products with this tag (repeat: all of them)"),
    owner: str | None = Query(None, description="only this owner (case-insensitive)"),
    status: list[Literal["active", "deprecated", "retired"]] = Query(
        [], description="only products whose newest version has this status (repeatable; default active and deprecated)"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(caller),
) -> ProductList:
    service = request.app.state.service
    catalog = service.registry.catalog(max_age=0)  # read your writes: a publish or retire shows at once
    wanted = set(status) or {"active", "deprecated"}
    candidates: list[tuple[Descriptor, str]] = []
    for descriptor in catalog.products():
        candidates.append((descriptor, "deprecated" if catalog.deprecation(descriptor) else "active"))
    if "retired" in wanted:
        for product_id, majors in sorted(catalog.retired.items()):
            if product_id not in catalog.versions and majors:
                candidates.append((majors[max(majors)].descriptor, "retired"))
    tags = {t.lower() for t in tag}
    found = [
        (d, s) for d, s in candidates
        if s in wanted and (domain is None or d.domain == domain.lower())
        and (owner is None or d.owner.lower() == owner.lower()) and tags <= {t.lower() for t in d.tags}
        and service.may_read(principal, d)
    ]
    found.sort(key=lambda item: item[0].product_id)
    page = found[offset:offset + limit]
    return ProductList(
        products=[_summary(d, s, catalog.majors(d.product_id)) for d, s in page],
        total=len(found), limit=limit, offset=offset,
        next_offset=offset + limit if offset + limit < len(found) else None,
    )


@router.get("/api/v1/data-products/{product_id}", response_model=Detail, responses=errors(404),
            summary="A data product: contract, SLA, lifecycle, quality")
def get_product(product_id: str, request: Request, principal: Principal = Depends(caller)) -> Detail:
    """`product_id` is `domain.product` (the newest queryable version) or `domain.product@MAJOR`."""
    service = request.app.state.service
    descriptor = visible_product(service, principal, product_id)
    record = _record(service, descriptor)
    quality = service.registry.latest_quality(descriptor.product_id)
    spec = descriptor.raw.get("spec", {})
    contract_keys = ("compatibility", "deprecation")
    return Detail(
        **_summary(descriptor, record.status, service.registry.catalog(max_age=0).majors(descriptor.product_id)).model_dump(),
        lifecycle=_lifecycle(record),
        contract={"columns": spec.get("schema", []), **{k: spec[k] for k in contract_keys if k in spec}},
        quality_rules=list(spec.get("quality", [])),
        quality=None if quality is None else {
            "score": quality[0], "version": quality[1], "checked_at": _time(quality[2]), "results": quality[3]},
        source={"connector": descriptor.source.connector,
                **({"table": descriptor.source.table} if descriptor.source.table else {}),
                **({"query": descriptor.source.query} if descriptor.source.connector == "mesh" else {})},
        input_ports=list(spec.get("input_ports", [])),
    )


@router.get("/api/v1/data-products/{product_id}/versions", response_model=VersionList, responses=errors(404),
            summary="Every registered version of a data product")
def list_versions(product_id: str, request: Request, principal: Principal = Depends(caller)) -> VersionList:
    service = request.app.state.service
    base = product_id.split("@")[0]
    records = service.registry.records(base)
    if not records or not service.may_read(principal, records[0].descriptor):
        raise NotFound(f"unknown data product '{base}'")
    return VersionList(product_id=base, versions=[
        VersionEntry(version=r.version, major=r.descriptor.major, **_lifecycle(r).model_dump()) for r in records])


# --- lifecycle -------------------------------------------------------------------------------------


@router.post("/api/v1/data-products/{product_id}/deprecate", response_model=StatusResult,
             responses=errors(403, 404, 409), summary="Deprecate a product, a major or a version")
def deprecate(product_id: str, request: Request, body: StatusRequest | None = Body(None),
              principal: Principal = Depends(caller)) -> StatusResult:
    """Deprecated versions stay queryable; metadata and the audit log flag them. Needs role
    `owner:<domain>` or `admin`."""
    return _set_status(request, product_id, "deprecated", body or StatusRequest(), principal)


@router.post("/api/v1/data-products/{product_id}/retire", response_model=StatusResult,
             responses=errors(403, 404, 409), summary="Retire a product, a major or a version")
def retire(product_id: str, request: Request, body: StatusRequest | None = Body(None),
           principal: Principal = Depends(caller)) -> StatusResult:
    """Retired versions are no longer queryable. Allowed once they have been deprecated for their
    `spec.deprecation.notice_days` (409 before); `force` (admin) skips that. Needs role
    `owner:<domain>` or `admin`."""
    return _set_status(request, product_id, "retired", body or StatusRequest(), principal)


def _set_status(request: Request, product_id: str, status: str, body: StatusRequest, principal: Principal) -> StatusResult:
    base, _, major = product_id.partition("@")
    version = body.version if body.version is not None else major
    change = request.app.state.service.set_status(base, version, status, principal, reason=body.reason,
                                                  replaced_by=body.replaced_by, force=body.force)
    return StatusResult(**change.to_json())


# --- helpers -------------------------------------------------------------------------------------


def _summary(d: Descriptor, status: str, majors: list[Descriptor]) -> Summary:
    sla = d.raw.get("spec", {}).get("sla") or {}
    return Summary(product_id=d.product_id, domain=d.domain, name=d.name, version=d.version, status=status, owner=d.owner,
                   description=d.description, tags=list(d.tags), sla=dict(sla), majors=[m.major for m in majors])


def _record(service: Any, descriptor: Descriptor) -> VersionRecord:
    for record in service.registry.records(descriptor.product_id):
        if record.version == descriptor.version:
            return record
    raise NotFound(f"unknown data product '{descriptor.product_id}'")  # removed since the snapshot


def _lifecycle(record: VersionRecord) -> Lifecycle:
    return Lifecycle(status=record.status, registered_at=_time(record.registered_at), published_by=record.published_by,
                     deprecated_at=_time(record.deprecated_at), retired_at=_time(record.retired_at),
                     reason=record.reason, replaced_by=record.replaced_by)


def _time(at: float | None) -> dt.datetime | None:
    return None if at is None else dt.datetime.fromtimestamp(at, dt.timezone.utc)

