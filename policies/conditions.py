"""Conditions on the principal's attributes and the product's tags, as data.

A policy never carries code: ``principal: {region: [CN, RU]}`` compiles to an ``AttributeTest``
and the casbin matcher calls ``Condition.applies`` through the registered ``satisfies``
function. Attribute values are compared in a normal form so that ``pii_training: true`` in a
policy matches ``true`` from a users file and ``"true"`` from ``meshgate user add --attr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


def normal(value: Any) -> str:
    """The form attribute values are compared in: booleans (and "true"/"false" in any case)
    become ``true``/``false``, everything else its ``str``; ``1`` is not ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    lowered = text.lower()
    return lowered if lowered in ("true", "false") else text


@dataclass(frozen=True)
class AttributeTest:
    """The principal's attribute ``name`` must equal one of ``values`` (normal forms)."""

    name: str
    values: frozenset[str]

    def describe(self) -> str:
        shown = sorted(self.values)
        return f"{self.name} = {shown[0]}" if len(shown) == 1 else f"{self.name} in ({', '.join(shown)})"


@dataclass
class Subject:
    """What the casbin matcher sees of a principal for one decision (``r.sub``).

    ``roles`` are the effective roles in the product's domain (inherited roles included);
    ``missing`` collects the attributes a rule needed and the principal lacks, so a denial can
    say which attribute to add. A Subject lives for one decision only (not shared by threads).
    """

    name: str
    roles: frozenset[str]
    attributes: Mapping[str, Any]
    missing: list[tuple[str, str]] = field(default_factory=list)  # (rule id, attribute)


@dataclass(frozen=True)
class Resource:
    """What the matcher sees of the product (``r.obj``); ``scope`` is ``domain.*``."""

    id: str
    domain: str
    scope: str
    tags: frozenset[str]


@dataclass(frozen=True)
class Condition:
    """When a rule applies, beyond role, product and action (which casbin matches itself).

    - ``tags_any`` / ``tags_none``: the product has at least one of / none of these tags;
    - ``principal``: every test holds. A missing attribute makes an allow rule not apply and a
      deny rule apply (fail closed) unless ``deny_if_missing`` is false;
    - ``unless`` / ``unless_roles``: exemptions; the rule does not apply to a principal whose
      attributes all match ``unless`` (a missing attribute never exempts) or who has one of
      ``unless_roles``.
    """

    rule: str
    tags_any: frozenset[str] = frozenset()
    tags_none: frozenset[str] = frozenset()
    principal: tuple[AttributeTest, ...] = ()
    unless: tuple[AttributeTest, ...] = ()
    unless_roles: frozenset[str] = frozenset()
    deny_if_missing: bool = False

    def product_matches(self, tags: frozenset[str]) -> bool:
        if self.tags_any and not (self.tags_any & tags):
            return False
        return not (self.tags_none & tags)

    def exempts(self, subject: Subject) -> bool:
        if self.unless_roles & subject.roles:
            return True
        if not self.unless:
            return False
        attributes = subject.attributes
        for test in self.unless:
            if test.name not in attributes or normal(attributes[test.name]) not in test.values:
                return False
        return True

    def applies(self, subject: Subject, resource: Resource) -> bool:
        if not self.product_matches(resource.tags) or self.exempts(subject):
            return False
        missing: list[str] = []
        attributes = subject.attributes
        for test in self.principal:
            if test.name not in attributes:
                missing.append(test.name)
            elif normal(attributes[test.name]) not in test.values:
                return False  # a present attribute that does not match: the rule is out
        if missing:
            subject.missing.extend((self.rule, name) for name in missing)
            return self.deny_if_missing
        return True


ALWAYS = Condition(rule="builtin")
