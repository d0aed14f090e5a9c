"""Pre-selecting rules so casbin only ever sees the few that can match.

casbin checks every policy line in turn (4-13 ms at 1,000 rules here), so the engine never gives
it a whole layer: ``RuleIndex`` buckets rules by action, product pattern (``*``, ``domain.*``,
``domain.name``) and, for rules that need a tag, by tag; a product's candidates are the union of
a handful of buckets. ``AccessEnforcers`` builds one small casbin enforcer per distinct candidate
set (deny rules first, so the model's first-match effect makes any deny win) and keeps it.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Generic, Iterable, Protocol, Sequence, TypeVar

import casbin
from casbin.model import Model

from policies.conditions import Condition, Resource, Subject
from policies.rules import AccessRule

MODEL_PATH = Path(__file__).with_name("model.conf")


class _Scoped(Protocol):
    @property
    def products(self) -> tuple[str, ...]: ...

    @property
    def condition(self) -> Condition: ...


R = TypeVar("R", bound=_Scoped)


class RuleIndex(Generic[R]):
    """Rules bucketed by (action, product pattern, tag); ``candidates`` keeps file order."""

    def __init__(self, rules: Iterable[R]) -> None:
        self._buckets: dict[tuple[str | None, str, str | None], list[tuple[int, R]]] = defaultdict(list)
        for order, rule in enumerate(rules):
            actions: Sequence[str | None] = getattr(rule, "actions", (None,))
            tags: Iterable[str | None] = rule.condition.tags_any or (None,)
            for action in actions:
                for pattern in rule.products:
                    for tag in tags:
                        self._buckets[(action, pattern, tag)].append((order, rule))

    def candidates(self, product_id: str, domain: str, tags: frozenset[str], action: str | None = None) -> list[R]:
        """The rules that may apply to ``product_id`` (tag conditions are checked here too)."""
        found: dict[int, R] = {}
        actions = (None,) if action is None else (action, "*")
        lookup_tags = (None, *tags)
        buckets = self._buckets
        for act in actions:
            for pattern in ("*", f"{domain}.*", product_id):
                for tag in lookup_tags:
                    for order, rule in buckets.get((act, pattern, tag), ()):
                        found[order] = rule
        return [rule for order, rule in sorted(found.items()) if rule.condition.product_matches(tags)]


class _Enforcer(casbin.Enforcer):
    """casbin's Enforcer, keeping the parsed matcher between calls.

    casbin parses the matcher text and builds a new evaluator on every ``enforce`` call; that is
    two thirds of its cost for a handful of rules. The evaluator holds per-call state (the
    names being evaluated), so each thread keeps its own.
    """

    _local = threading.local()

    @staticmethod
    def _get_expression(expr: str, functions: Any = None) -> Any:
        cache = getattr(_Enforcer._local, "cache", None)
        if cache is None:
            cache = _Enforcer._local.cache = {}
        key = (expr, id(functions))
        evaluator = cache.get(key)
        if evaluator is None:
            if len(cache) > 4096:
                cache.clear()
            evaluator = cache[key] = casbin.Enforcer._get_expression(expr, functions)
        return evaluator


class AccessCheck:
    """One layer's casbin enforcer over its pre-selected rules."""

    def __init__(self, enforcer: _Enforcer, rules: dict[str, AccessRule]) -> None:
        self.enforcer = enforcer
        self.rules = rules

    def check(self, subject: Subject, resource: Resource, action: str) -> tuple[bool, AccessRule | None]:
        """Allowed?, and the rule that decided (None: nothing matched, so denied)."""
        allowed, line = self.enforcer.enforce_ex(subject, resource.domain, resource, action)
        return allowed, (self.rules[line[-1]] if line else None)


class AccessEnforcers:
    """Builds and keeps one enforcer per distinct list of candidate rules."""

    def __init__(self, model_text: str | None = None) -> None:
        self._model_text = model_text if model_text is not None else MODEL_PATH.read_text(encoding="utf-8")
        self._checks: dict[tuple[tuple[str, ...], ...], AccessCheck] = {}
        self._lock = threading.Lock()

    def check_for(self, rules: Sequence[AccessRule], product_id: str, domain: str, action: str) -> AccessCheck:
        """An ``AccessCheck`` over ``rules`` (deny rules first), restricted to the policy lines
        that can match ``product_id`` and ``action``."""
        ordered = [r for r in rules if r.effect == "deny"] + [r for r in rules if r.effect != "deny"]
        targets = ("*", f"{domain}.*", product_id)
        lines = tuple(
            tuple(line)
            for rule in ordered
            for line in rule.rows()
            if line[2] in targets and line[3] in (action, "*")
        )
        check = self._checks.get(lines)
        if check is None:
            check = AccessCheck(self._build(lines, {r.id: r.condition for r in ordered}), {r.id: r for r in ordered})
            with self._lock:
                if len(self._checks) > 50_000:
                    self._checks.clear()
                self._checks[lines] = check
        return check

    def _build(self, lines: tuple[tuple[str, ...], ...], conditions: dict[str, Condition]) -> _Enforcer:
        model = Model()
        model.load_model_from_text(self._model_text)
        enforcer = _Enforcer(model)

        def satisfies(subject: Subject, resource: Resource, condition_id: str) -> bool:
            return conditions[condition_id].applies(subject, resource)

        enforcer.add_function("satisfies", satisfies)
        # Loaded straight into the model: add_policy would check each line for duplicates.
        enforcer.get_model()["p"]["p"].policy = [list(line) for line in lines]
        return enforcer


def role_enforcer(links: Iterable[tuple[str, str, str]], model_text: str | None = None) -> casbin.Enforcer:
    """An enforcer holding only the ``g`` role-inheritance links (role, parent, domain)."""
    model = Model()
    model.load_model_from_text(model_text if model_text is not None else MODEL_PATH.read_text(encoding="utf-8"))
    enforcer = casbin.Enforcer(model)
    for role, parent, domain in links:
        enforcer.add_named_grouping_policy("g", role, parent, domain)
    return enforcer
