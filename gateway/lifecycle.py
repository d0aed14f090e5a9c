"""Deprecating and retiring product versions: who may, and when.

``active`` -> ``deprecated``: still queryable; metadata, ``product list`` and the audit log say
so, so consumers can move. ``deprecated`` -> ``retired``: no longer queryable; a query gets
NOT_FOUND saying when it was retired and what to use instead. Both need role
``owner:<domain>`` or ``admin`` (``PolicyEngine.may_manage``).

A version may be retired only once it has been deprecated for its
``spec.deprecation.notice_days`` (0 when the descriptor does not say): the notice consumers were
promised. ``force`` skips both the deprecation and the notice period and needs ``admin``.

The target is a whole product (``""``), a major (``"2"`` or ``"@2"``) or one version (``"2.1.0"``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.descriptor import SEMVER
from gateway.errors import InvalidRequest, NotFound, PermissionDenied, PreconditionFailed
from gateway.registry import Registry, VersionRecord
from policies import Principal
from policies.engine import PolicyEngine

DAY = 86400.0
ADMIN_ROLE = "admin"
_MAJOR = re.compile(r"^@?(\d+)$")


@dataclass(frozen=True)
class StatusChange:
    """What ``set_status`` did: the versions it moved to ``status`` and those already there."""

    product_id: str
    status: str
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    at: float
    principal: str
    reason: str = ""
    replaced_by: str = ""
    forced: bool = False

    def describe(self) -> str:
        if not self.changed:
            return f"{self.product_id}: {', '.join(self.unchanged)} already {self.status}; nothing changed"
        text = f"{self.status} {self.product_id} {', '.join(self.changed)}"
        if self.forced:
            text += " (forced by admin)"
        if self.reason:
            text += f": {self.reason}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "status": self.status, "changed": list(self.changed),
                "unchanged": list(self.unchanged), "at": datetime.fromtimestamp(self.at, timezone.utc).isoformat(),
                "principal": self.principal, "reason": self.reason, "replaced_by": self.replaced_by, "forced": self.forced}


def notice_days(record: VersionRecord) -> int:
    """The deprecation notice the version's descriptor promises, in days (0 when it says none)."""
    deprecation = record.descriptor.raw.get("spec", {}).get("deprecation") or {}
    return int(deprecation.get("notice_days", 0)) if isinstance(deprecation, dict) else 0


def targets(records: list[VersionRecord], product_id: str, version_or_major: str) -> list[VersionRecord]:
    """The versions ``version_or_major`` names: all (``""``), a major, or one version."""
    selector = version_or_major.strip()
    if not selector:
        return records
    major = _MAJOR.match(selector)
    if major:
        found = [r for r in records if r.descriptor.major == int(major.group(1))]
        what = f"major version {major.group(1)}"
    elif SEMVER.match(selector):
        found = [r for r in records if r.version == selector]
        what = f"version {selector}"
    else:
        raise InvalidRequest(f"'{version_or_major}' is not a major version (2 or @2) or a version (2.1.0)")
    if not found:
        raise NotFound(f"{product_id} has no {what} (registered: {', '.join(r.version for r in records)})")
    return found


def set_status(
    registry: Registry,
    policies: PolicyEngine,
    product_id: str,
    version_or_major: str,
    status: str,
    principal: Principal,
    *,
    reason: str = "",
    replaced_by: str = "",
    force: bool = False,
    now: float | None = None,
) -> StatusChange:
    """Deprecate or retire the versions ``version_or_major`` names, checking permission and,
    for retiring, the deprecation notice period (``force``: skip it, needs admin)."""
    if status not in ("deprecated", "retired"):
        raise InvalidRequest(f"status must be 'deprecated' or 'retired', not '{status}'")
    now = time.time() if now is None else now
    records = registry.records(product_id)
    if not records:
        raise NotFound(f"no data product '{product_id}' is registered")
    chosen = targets(records, product_id, version_or_major)
    domain = product_id.split(".")[0]
    decision = policies.may_manage(principal, domain)
    if not decision.allowed:
        raise PermissionDenied(f"{principal.name} may not {status[:-1]} {product_id}: needs role owner:{domain} or "
                               f"admin ({'; '.join(decision.reasons) or 'no rule allows it'})")
    if force and ADMIN_ROLE not in principal.roles:
        raise PermissionDenied(f"{principal.name} may not force a lifecycle change of {product_id}: --force needs role admin")
    pending = [r for r in chosen if r.status != "retired" and r.status != status]
    if status == "retired" and not force:
        problems = [p for r in pending if (p := _retire_problem(r, now))]
        readers = _derived_readers(registry, product_id, records, pending)
        if readers:
            problems.append(f"derived product(s) {', '.join(readers)} read it and would stop answering: "
                            "change or retire them first")
        if problems:
            raise PreconditionFailed(f"cannot retire {product_id} yet: " + "; ".join(problems)
                                     + " (an admin may retire earlier with --force)")
    changed = registry.set_status(product_id, [r.version for r in pending], status, principal.name,
                                  reason=reason, replaced_by=replaced_by, at=now)
    unchanged = tuple(r.version for r in chosen if r.version not in changed)
    return StatusChange(product_id, status, tuple(changed), unchanged, now, principal.name, reason, replaced_by, force)


def _derived_readers(registry: Registry, product_id: str, records: list[VersionRecord], retiring: list[VersionRecord]) -> list[str]:
    """The derived products whose queries read a major that retiring ``retiring`` takes away
    (every queryable version of that major is in it): they would fail with NOT_FOUND."""
    from gateway.lineage import QUERY, LineageGraph

    leaving = {r.version for r in retiring}
    gone = {r.descriptor.major for r in records if r.version in leaving}
    gone = {m for m in gone if all(r.version in leaving or r.status == "retired"
                                   for r in records if r.descriptor.major == m)}
    if not gone:
        return []
    catalog = registry.catalog(max_age=0)
    versions = catalog.versions.get(product_id)
    if not versions:
        return []
    graph = LineageGraph(catalog)
    newest = versions[0].major
    nodes = {product_id if m == newest else f"{product_id}@{m}" for m in gone}
    return sorted({e.downstream for n in nodes for e in graph.downstream.get(n, []) if e.kind == QUERY} - nodes)


def _retire_problem(record: VersionRecord, now: float) -> str:
    """Why ``record`` may not be retired at ``now`` ('' when it may)."""
    if record.status == "active":
        return f"{record.version} is active: deprecate it first (consumers get its notice period of {notice_days(record)} day(s))"
    days = notice_days(record)
    since = record.deprecated_at or now
    ready = since + days * DAY
    if now < ready:
        left = (ready - now) / DAY
        return (f"{record.version} was deprecated on {_date(since)} with {days} day(s) notice: it may be retired from "
                f"{_date(ready)} ({left:.1f} day(s) from now)")
    return ""


def _date(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
