"""``POST /api/v1/policy/evaluate``: what governance decides for a principal, an action and a
product (the seed design's request and response shape, ``README.md`` "Policy API and CLI").
Evaluating for another principal than the caller needs role ``admin``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from gateway.auth import Authenticator
from gateway.rest.app import ADMIN_ROLE, ApiError, caller
from policies import Principal
from policies.rules import ACTIONS

ACTION_ALIASES = {"query": "read", "select": "read"}
"""The seed design says ``"action": "query"``; the policy engine calls it ``read``."""

router = APIRouter()


@router.post("/api/v1/policy/evaluate")
def evaluate(request: Request, body: Any = Body(...), principal: Principal = Depends(caller)) -> JSONResponse:
    started = time.perf_counter()
    asked = _evaluation_request(body)
    subject = _subject(asked["principal"], principal, request.app.state.authenticator)
    decided = request.app.state.service.evaluate(subject, asked["product"], asked["action"])
    columns = asked["columns"]
    if columns is not None:
        known = {c.name for c in decided.product.columns}
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ApiError(422, "invalid request", f"{decided.product.product_id} has no column(s) "
                           f"{', '.join(map(repr, unknown))} (it has: {', '.join(sorted(known))})", "columns")
    report = decided.report(columns)
    report["principal"] = {"name": subject.name, "roles": sorted(subject.roles), "attributes": dict(subject.attributes)}
    report["evaluation_time_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return JSONResponse(jsonable_encoder(report, custom_encoder={frozenset: sorted}))



def _evaluation_request(body: Any) -> dict[str, Any]:
    """Normalise both accepted shapes (ours and the seed design's) to principal, action,
    product and columns; raise ApiError 422 naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid request", "the body must be a JSON object with principal, action and product", "body")
    known = {"principal", "user", "action", "product", "resource", "columns"}
    extra = sorted(set(body) - known)
    if extra:
        raise ApiError(422, "invalid request", f"unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(known))})", extra[0])
    if "principal" in body and "user" in body:
        raise ApiError(422, "invalid request", "give principal or user, not both", "user")
    resource = body.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise ApiError(422, "invalid request", "resource must be an object {data_product, columns}", "resource")
    resource = resource or {}
    product = body.get("product", resource.get("data_product", resource.get("product")))
    field = "product" if "product" in body else "resource.data_product"
    if isinstance(product, dict):
        product = product.get("id")
    if not isinstance(product, str) or not product.strip():
        raise ApiError(422, "invalid request", f"{field}: a product id (domain.product) is required", field)
    columns = body.get("columns", resource.get("columns"))
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        raise ApiError(422, "invalid request", "columns: expected a list of column names", "columns")
    action = body.get("action", "read")
    if not isinstance(action, str) or ACTION_ALIASES.get(action.lower(), action.lower()) not in ACTIONS:
        raise ApiError(422, "invalid request", f"action: {action!r} is not one of {', '.join(ACTIONS)} (or query)", "action")
    principal = body.get("principal", body.get("user"))
    return {
        "principal": (principal, "principal" if "principal" in body else "user"),
        "action": ACTION_ALIASES.get(action.lower(), action.lower()),
        "product": product.strip(),
        "columns": columns,
    }


def _subject(given: tuple[Any, str], caller: Principal, authenticator: Authenticator | None) -> Principal:
    """The principal to evaluate for: the caller, a user of the users file, or one described inline.
    Anyone but the caller needs the caller to have role admin."""
    value, field = given
    if value is None:
        return caller
    is_admin = ADMIN_ROLE in caller.roles
    if isinstance(value, str):
        if value == caller.name:
            return caller
        _require_admin(is_admin, caller, value)
        user = authenticator.users.get(value) if authenticator is not None else None
        if user is None:
            where = "in the users file" if authenticator is not None else "(the server has no users file: describe the principal inline)"
            raise ApiError(404, "unknown principal", f"no user '{value}' {where}", field)
        return user.principal()
    if not isinstance(value, dict):
        raise ApiError(422, "invalid request", f"{field}: a user name or an object {{name, roles, attributes}}", field)
    subject = _inline_principal(value, field)
    if subject == Principal(caller.name, frozenset(caller.roles), dict(caller.attributes)):
        return caller
    _require_admin(is_admin, caller, subject.name)
    return subject


def _inline_principal(value: dict[str, Any], field: str) -> Principal:
    """``{name, roles, attributes}``, or the seed design's ``{id, role, <attributes>...}``."""
    name = value.get("name", value.get("id"))
    if not isinstance(name, str) or not name:
        raise ApiError(422, "invalid request", f"{field}.name: a principal name is required", f"{field}.name")
    roles = value.get("roles", [])
    if "role" in value:
        roles = [value["role"], *(roles if isinstance(roles, list) else [])]
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        raise ApiError(422, "invalid request", f"{field}.roles: expected a list of role names", f"{field}.roles")
    attributes = value.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ApiError(422, "invalid request", f"{field}.attributes: expected an object", f"{field}.attributes")
    attributes = dict(attributes)
    for key, item in value.items():  # seed shape: attributes beside id and role
        if key not in ("name", "id", "role", "roles", "attributes"):
            attributes[key] = item
    for key, item in attributes.items():
        if not isinstance(item, (str, int, float, bool)) and item is not None:
            raise ApiError(422, "invalid request", f"{field}.attributes.{key}: expected a string, number or boolean",
                           f"{field}.attributes.{key}")
    return Principal(name, frozenset(roles), attributes)


def _require_admin(is_admin: bool, caller: Principal, other: str) -> None:
    if not is_admin:
        raise ApiError(403, "permission denied",
                       f"{caller.name} may evaluate policies only for itself; evaluating for '{other}' needs role {ADMIN_ROLE}",
                       "principal")
