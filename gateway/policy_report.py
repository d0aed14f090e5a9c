"""What governance decided for a product, as people and the policy API read it.

``ProductDecision.report`` is the JSON shape of ``POST /api/v1/policy/evaluate`` and of
``meshgate policy check``: the decision, every policy that took part with its own effect, and the
SQL each transformation becomes.  ``Rewrite`` is a whole statement as governance rewrites it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gateway.descriptor import Descriptor
from policies.decision import ColumnMask, Decision, RowFilter


@dataclass(frozen=True)
class ProductDecision:
    """Governance of one product version for one principal and action, with the SQL each
    transformation becomes (PostgreSQL dialect, row-filter values bound as literals)."""

    product: Descriptor
    action: str
    decision: Decision
    masks: tuple[tuple[ColumnMask, str], ...] = ()  # (mask, SQL of the masked column)
    row_filters: tuple[tuple[RowFilter, str], ...] = ()  # (filter, predicate with bound values)
    group_sizes: Mapping[str, int] = field(default_factory=dict)  # aggregate policy id -> its size
    mask_policies: frozenset[str] = frozenset()  # ids of mask rules (some lose to a stricter one)

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    def report(self, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """The decision as JSON-ready data (the REST API's and ``meshgate policy check``'s shape):
        ``decision``, ``product``, ``reasons``, ``policies_applied`` (each policy with its own
        decision: allow / deny / transform / superseded, its reason or transformations),
        ``transformations`` (masks, row filters with bound values, min_group_size) and, per
        column, whether it is visible or masked. ``columns`` limits masks to those columns."""
        d, decision = self.product, self.decision
        wanted = None if columns is None else set(columns)
        masks = [
            {"column": m.column, "mask": m.kind, "policy_id": m.policy, "sql": sql}
            | ({"expression": m.expression} if m.expression else {})
            for m, sql in self.masks
            if wanted is None or m.column in wanted
        ]
        filters = [
            {"filter": f.sql, "bound_values": dict(f.bindings), "policy_id": f.policy, "sql": sql}
            for f, sql in self.row_filters
        ]
        applied: list[dict[str, Any]] = []
        unmatched = list(decision.reasons)
        effect = "allow" if decision.allowed else "deny"
        for policy in decision.policies:
            entry: dict[str, Any] = {"policy_id": policy}
            reason = next((r for r in unmatched if r == policy or r.startswith(policy + ":") or r.startswith(policy + " ")), None)
            transformations = [
                {"action": "mask", "column": m["column"], "mask": m["mask"], "sql": m["sql"]} for m in masks if m["policy_id"] == policy
            ] + [
                {"action": "row_filter", "filter": f["filter"], "bound_values": f["bound_values"], "sql": f["sql"]}
                for f in filters if f["policy_id"] == policy
            ]
            if decision.allowed and policy in self.group_sizes and decision.min_group_size:
                transformations.append({"action": "min_group_size", "min_group_size": self.group_sizes[policy]})
            if reason is not None:
                unmatched.remove(reason)
                entry |= {"decision": effect, "reason": reason.removeprefix(policy).removeprefix(":").strip() or reason}
            elif transformations:
                entry |= {"decision": "transform", "transformations": transformations}
            elif policy in self.mask_policies:
                if any(m.policy == policy for m, _ in self.masks):
                    continue  # it masks only columns not asked about
                entry |= {"decision": "superseded", "reason": "a stricter mask from another policy applies to the same column"}
            else:
                entry |= {"decision": effect}
            applied.append(entry)
        applied += [{"policy_id": None, "decision": effect, "reason": r} for r in unmatched]
        masked = {m.column: m.kind for m, _ in self.masks}
        shown = [c.name for c in d.columns if wanted is None or c.name in wanted]
        return {
            "decision": effect,
            "action": self.action,
            "product": {"id": d.product_id, "version": d.version, "domain": d.domain, "tags": list(d.tags)},
            "reasons": list(decision.reasons),
            "policies_applied": applied,
            "transformations": {
                "masks": [{k: v for k, v in m.items()} for m in masks],
                "row_filters": filters,
                "min_group_size": decision.min_group_size,
            },
            "columns": [
                {"name": c, "access": ("denied" if not decision.allowed else "masked" if c in masked else "visible")}
                | ({"mask": masked[c]} if decision.allowed and c in masked else {})
                for c in shown
            ],
        }


@dataclass(frozen=True)
class Rewrite:
    """A statement as governance rewrites it, without running it: the decision for every
    product it reads and, when all are allowed, the governed SQL (each product a masked,
    filtered sub-select; aggregates over small-group products with their ``HAVING``)."""

    sql: str
    products: tuple[ProductDecision, ...]
    governed_sql: str | None  # None when a product is denied

    @property
    def allowed(self) -> bool:
        return all(p.allowed for p in self.products)
