"""Compiled policy rules: what a policy file or a descriptor's ``policies:`` section becomes.

Every rule has an ``id`` that says where it came from (``global/access.yaml#public-products``,
``domains/customers/access.yaml#no-contractors``, ``customers.customers@1.0.0#access[0]``) so
that a denial, an EXPLAIN or an audit record names the policy that acted.

Layers: ``global`` rules come from ``global/*.yaml``, ``domain`` rules from
``domains/<domain>/*.yaml`` and may only govern that domain's products, ``product`` rules from
the descriptor. Access needs every layer that has an opinion to allow; any deny wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policies.conditions import ALWAYS, Condition

ACTIONS = ("read", "manage", "weaken_governance")
"""``read`` a product; ``manage`` (publish, deprecate, retire) a domain's products; and
``weaken_governance``: publish a change that removes a mask, a row filter or a ``pii`` tag."""

LAYERS = ("global", "domain", "product")


@dataclass(frozen=True)
class AccessRule:
    """Allow or deny ``actions`` on ``products`` to principals with one of ``roles`` ("*": any)."""

    id: str
    layer: str
    domain: str  # "*" for global rules
    effect: str  # "allow" | "deny"
    roles: tuple[str, ...]
    actions: tuple[str, ...]
    products: tuple[str, ...]  # "*", "<domain>.*" or "<domain>.<name>"
    condition: Condition
    description: str = ""
    line: int = 0

    def rows(self) -> list[list[str]]:
        """The casbin policy lines (``p = sub, dom, obj, act, cond, eft, rule``) of this rule."""
        return [
            [role, self.domain, product, action, self.id, self.effect, self.id]
            for role in self.roles
            for product in self.products
            for action in self.actions
        ]

    def explain(self) -> str:
        return f"{self.id}: {self.description}" if self.description else self.id


@dataclass(frozen=True)
class ColumnSelector:
    """Which columns of a product a file-level mask applies to; every given test must hold."""

    pii: bool | None = None
    classification: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    tags_any: frozenset[str] = frozenset()

    def matches(self, name: str, spec: dict[str, Any]) -> bool:
        if self.pii is not None and bool(spec.get("pii", False)) != self.pii:
            return False
        if self.classification and spec.get("classification") not in self.classification:
            return False
        if self.names and name not in self.names:
            return False
        return not (self.tags_any and not (self.tags_any & set(spec.get("tags") or ())))


@dataclass(frozen=True)
class MaskRule:
    """Mask the selected columns with ``mask`` (``mask_non_text`` for non-string columns)."""

    id: str
    layer: str
    products: tuple[str, ...]
    condition: Condition  # product tags and exemptions (unless / unless_roles)
    columns: ColumnSelector
    mask: str
    mask_non_text: str | None = None
    expression: str | None = None
    description: str = ""
    line: int = 0


@dataclass(frozen=True)
class RowFilterRule:
    """Every row must pass ``filter`` (PostgreSQL, ``{user.attr}`` bound per principal)."""

    id: str
    layer: str
    products: tuple[str, ...]
    condition: Condition
    filter: str
    description: str = ""
    line: int = 0


@dataclass(frozen=True)
class AggregateRule:
    """Aggregates over the product suppress groups of fewer than ``min_group_size`` rows."""

    id: str
    layer: str
    products: tuple[str, ...]
    condition: Condition
    min_group_size: int
    description: str = ""
    line: int = 0


@dataclass(frozen=True)
class RoleLink:
    """``role`` inherits ``parent`` in ``domain`` ("*": everywhere). Global files only."""

    role: str
    parent: str
    domain: str
    source: str


@dataclass(frozen=True)
class PolicySet:
    """Everything loaded from one ``--policies`` directory, validated."""

    access: tuple[AccessRule, ...] = ()
    masks: tuple[MaskRule, ...] = ()
    row_filters: tuple[RowFilterRule, ...] = ()
    aggregates: tuple[AggregateRule, ...] = ()
    roles: tuple[RoleLink, ...] = ()
    files: tuple[str, ...] = ()


# Built into every policy set, whatever the directory holds (DESIGN.md "Principals and the
# default policy"). Role ``admin`` satisfies the allow requirement of every layer, but deny
# rules and masks still apply to it unless a rule exempts it.
ADMIN_READS = AccessRule(
    id="builtin#admin-reads-everything",
    layer="builtin",
    domain="*",
    effect="allow",
    roles=("admin",),
    actions=("read",),
    products=("*",),
    condition=ALWAYS,
    description="role admin may read every product (deny rules and masks still apply)",
)
OWNERS_MANAGE = AccessRule(
    id="builtin#owners-manage-their-domain",
    layer="builtin",
    domain="*",
    effect="allow",
    roles=("owner",),  # the role owner:<domain> is role owner in that domain
    actions=("manage",),
    products=("*",),
    condition=ALWAYS,
    description="owner:<domain> may publish, deprecate and retire the domain's products",
)
ADMIN_MANAGES = AccessRule(
    id="builtin#admin-manages-everything",
    layer="builtin",
    domain="*",
    effect="allow",
    roles=("admin",),
    actions=("manage", "weaken_governance"),
    products=("*",),
    condition=ALWAYS,
    description="role admin may manage every domain, including changes that weaken governance",
)
BUILTIN_ACCESS = (ADMIN_READS, OWNERS_MANAGE, ADMIN_MANAGES)
