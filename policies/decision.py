"""What governance decides for one (principal, product, action): the contract between the policy
engine (``policies/engine.py``) and the planner rules that enforce it.

A decision is data, not code: the planner turns masks into SQL expressions and row filters into
predicates whose principal-dependent values are bound literals, so enforcement happens by
rewriting the query before any source is contacted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MASK_KINDS = ("redact", "null", "hash", "email", "last4", "first4", "year_only", "custom")

MASK_STRICTNESS = {"null": 0, "redact": 1, "hash": 2, "year_only": 3, "email": 4, "last4": 5, "first4": 5, "custom": 6}
"""Lower is stricter: when two rules mask one column, the stricter mask wins."""


@dataclass(frozen=True)
class ColumnMask:
    """Mask ``column`` with ``kind``; ``expression`` is the SQL for ``custom`` masks, where
    ``{column}`` stands for the column. ``policy`` names the rule that asked for it."""

    column: str
    kind: str
    policy: str
    expression: str | None = None


@dataclass(frozen=True)
class RowFilter:
    """A predicate on the product's columns (PostgreSQL dialect) that every row must pass.

    ``sql`` may contain ``{user.attr}`` references; ``bindings`` holds their values for this
    principal, which the planner substitutes as typed literals (never as SQL text).
    """

    sql: str
    policy: str
    bindings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """Allow or deny, with the reasons, and the transformations an allowed read must apply."""

    allowed: bool
    reasons: tuple[str, ...]  # human-readable, each naming the policy ("global/pii.yaml: ...")
    masks: tuple[ColumnMask, ...] = ()
    row_filters: tuple[RowFilter, ...] = ()
    min_group_size: int | None = None
    policies: tuple[str, ...] = ()  # ids of every policy that took part, for audit

    @property
    def denied_by(self) -> str:
        return "; ".join(self.reasons) if not self.allowed else ""
