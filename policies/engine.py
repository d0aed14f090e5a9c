"""The policy engine: for (principal, product, action), a ``Decision`` (``policies/decision.py``).

Semantics (DESIGN.md "Principals and the default policy"):

- **Access** needs every layer with an opinion to allow, and any deny anywhere wins:
  the *global* layer (``global/*.yaml``) must allow; the *domain* layer
  (``domains/<domain>/*.yaml``) must allow where it has allow rules for the product, and its
  deny rules always count; the *product* layer (``spec.policies.access``) must allow where the
  product has access rules. A domain (or product) rule can therefore only narrow what the
  global layer allows: a domain allow never satisfies the global layer.
- Role ``admin`` satisfies the allow requirement of every layer (built in), but deny rules still
  apply to it, and so do masks and row filters unless a rule exempts it (``unless_roles``).
- A rule that needs an attribute the principal lacks: an allow rule does not apply; a deny rule
  applies (fail closed, unless it says ``if_attribute_missing: ignore``); a row filter that
  needs it denies the read. The reason names the rule and the attribute.
- **Masks** from every layer apply unless the rule exempts the principal; when several mask one
  column, the strictest (``MASK_STRICTNESS``) wins. **Row filters** from every layer apply
  (AND-ed), their ``{user.attr}`` values bound per principal (``{user.name}`` is the
  principal's name). ``min_group_size``: the largest. Masks and filters are for ``read`` only.
- Any error while deciding is a deny whose reason says evaluation failed (fail closed).

Speed: casbin sees only the rules ``RuleIndex`` pre-selected for the product's domain, name,
tags and action, and decisions are cached per (principal name, roles, attributes, product
id@version, action) until the policy files change; the key also holds a digest of the
descriptor, so a different definition under the same version never gets a stale decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from gateway.descriptor import Descriptor
from policies.conditions import ALWAYS, AttributeTest, Condition, Resource, Subject, normal
from policies.decision import MASK_KINDS, MASK_STRICTNESS, ColumnMask, Decision, RowFilter
from policies.index import MODEL_PATH, AccessCheck, AccessEnforcers, RuleIndex, role_enforcer
from policies.loader import PolicyError, load_policy_set, signature
from policies.principal import Principal
from policies.row_filters import FilterError, filter_references
from policies.rules import (
    ACTIONS,
    ADMIN_READS,
    BUILTIN_ACCESS,
    AccessRule,
    AggregateRule,
    MaskRule,
    PolicySet,
    RowFilterRule,
)

log = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path(__file__).parent
"""The packaged policies: ``policies/global/*.yaml`` and ``policies/domains/<domain>/*.yaml``."""

DECISION_CACHE_SIZE = 100_000
VIEW_CACHE_SIZE = 20_000

_NO_DOMAIN_OPINION = AccessRule(
    id="builtin#domain-has-no-allow-rules",
    layer="builtin",
    domain="*",
    effect="allow",
    roles=("*",),
    actions=("*",),
    products=("*",),
    condition=ALWAYS,
    description="the domain has no allow rules for this product, only deny rules",
)


class PolicyEngine:
    """Loads a policy directory and decides; reloads when its files change.

    ``decide`` and ``may_manage`` are safe to call from many threads; a reload swaps in a whole
    new rule set (and an empty decision cache) at once.
    """

    def __init__(self, directory: Path, policy_set: PolicySet, files_signature: tuple[Any, ...] = ()) -> None:
        self.directory = directory
        self.last_error: str | None = None
        self._state = _State(policy_set, generation=1)
        self._signature = files_signature
        self._failed_signature: tuple[Any, ...] | None = None
        self._reload_lock = threading.Lock()
        self._last_check = 0.0
        self._fingerprints: dict[int, tuple[Any, str]] = {}

    @classmethod
    def load(cls, directory: Path | None = None) -> "PolicyEngine":
        """Load ``directory`` (default: the packaged ``policies/``); ``PolicyError`` lists every
        problem by file and line."""
        directory = Path(directory) if directory is not None else DEFAULT_DIRECTORY
        files_signature = signature(directory)
        return cls(directory, load_policy_set(directory), files_signature)

    # --- reloading ------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Counts successful loads; a decision cached under an older generation is never served."""
        return self._state.generation

    @property
    def policy_set(self) -> PolicySet:
        return self._state.policies

    def reload_if_changed(self, min_interval: float = 0.0) -> bool:
        """Reload when a policy file was added, removed or changed (an mtime/size/inode check).

        Returns True when a new set was loaded. A set with an invalid file is not loaded: the
        last good set stays in force and ``last_error`` says what is wrong, by file and line,
        until the files change again. ``min_interval`` skips the check if one ran more recently.
        """
        now = time.monotonic()
        if min_interval and now - self._last_check < min_interval:
            return False
        self._last_check = now
        current = signature(self.directory)
        if current == self._signature or current == self._failed_signature:
            return False
        return self._reload(current)

    def reload(self) -> bool:
        """Reload unconditionally (same error handling as ``reload_if_changed``)."""
        return self._reload(signature(self.directory))

    def _reload(self, files_signature: tuple[Any, ...]) -> bool:
        with self._reload_lock:
            try:
                policy_set = load_policy_set(self.directory)
            except PolicyError as err:
                self._failed_signature = files_signature
                self.last_error = str(err)
                log.error("policy reload failed; keeping the previous policies: %s", err)
                return False
            self._state = _State(policy_set, generation=self._state.generation + 1)
            self._signature = files_signature
            self._failed_signature = None
            self.last_error = None
            log.info("policies reloaded from %s (%d files)", self.directory, len(policy_set.files))
            return True

    # --- deciding -------------------------------------------------------------------------------

    def decide(self, principal: Principal, product: Descriptor, action: str = "read") -> Decision:
        """Whether ``principal`` may ``action`` ``product``, and what a read must apply."""
        try:
            state = self._state
            fingerprint = self._fingerprint(product)
            key = (
                principal.name,
                frozenset(principal.roles),
                _attributes_key(principal.attributes),
                product.product_id,
                product.version,
                fingerprint,
                action,
            )
            decision = state.decisions.get(key)
            if decision is None:
                decision = state.decide(principal, product, action, fingerprint)
                state.remember(key, decision)
            return decision
        except Exception as err:  # fail closed: an engine bug must never let a read through
            log.exception("policy evaluation failed for %s on %s", getattr(principal, "name", "?"), _product_name(product))
            return Decision(
                False,
                (f"policy evaluation failed ({type(err).__name__}: {err}); the read is denied (fail closed)",),
                policies=("engine",),
            )

    def may_manage(self, principal: Principal, domain: str, weakens_governance: bool = False) -> Decision:
        """May ``principal`` publish, deprecate or retire products of ``domain``?

        Needs role ``owner:<domain>`` (role ``owner`` in that domain) or ``admin``; a change that
        weakens governance (removes a mask, a row filter or a ``pii`` tag) needs ``admin``.
        Domain policy files may add deny rules for ``manage`` / ``weaken_governance``.
        """
        action = "weaken_governance" if weakens_governance else "manage"
        try:
            return self._state.decide_domain(principal, domain, action)
        except Exception as err:
            log.exception("policy evaluation failed for %s managing %s", getattr(principal, "name", "?"), domain)
            return Decision(
                False, (f"policy evaluation failed ({type(err).__name__}: {err}); denied (fail closed)",), policies=("engine",)
            )

    def _fingerprint(self, product: Descriptor) -> str:
        """A digest of the descriptor's content, so a cached decision or compiled view is only
        reused for the very same product definition (versions are immutable in one registry,
        but an engine may outlive a registry, and tests build products freely). Memoised by the
        identity of ``product.raw``, which the memo keeps alive so its id is not reused."""
        raw = product.raw
        memo = self._fingerprints.get(id(raw))
        if memo is not None and memo[0] is raw:
            return memo[1]
        text = json.dumps(raw, sort_keys=True, default=str)
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()
        if len(self._fingerprints) > 50_000:
            self._fingerprints.clear()
        self._fingerprints[id(raw)] = (raw, digest)
        return digest

    def __call__(self, principal: Principal, product: Descriptor) -> Decision:
        """``engine(principal, product)``: the service's ``Policy`` callable (a read)."""
        return self.decide(principal, product)


# --- one loaded policy set ----------------------------------------------------------------------


@dataclass
class _Mask:
    column: str
    kind: str
    expression: str | None
    policy: str
    condition: Condition
    order: int


@dataclass
class _Filter:
    sql: str
    references: tuple[str, ...]
    policy: str
    condition: Condition


@dataclass
class _ProductView:
    """Everything about one product version that does not depend on the principal."""

    resource: Resource
    label: str  # "customers.customers@1.0.0"
    product_rules: tuple[AccessRule, ...]
    masks: list[_Mask]
    filters: list[_Filter]
    aggregates: list[tuple[str, int, Condition]]
    checks: dict[str, list[tuple[str, AccessCheck]]] = field(default_factory=dict)  # action -> layers
    error: str | None = None


class _State:
    """A validated ``PolicySet`` with its indexes and caches (replaced whole on reload)."""

    def __init__(self, policies: PolicySet, generation: int) -> None:
        self.policies = policies
        self.generation = generation
        model_text = MODEL_PATH.read_text(encoding="utf-8")
        self.enforcers = AccessEnforcers(model_text)
        self.global_access = RuleIndex([r for r in policies.access if r.layer == "global"])
        self.domain_access = RuleIndex([r for r in policies.access if r.layer == "domain"])
        self.masks: RuleIndex[MaskRule] = RuleIndex(policies.masks)
        self.row_filters: RuleIndex[RowFilterRule] = RuleIndex(policies.row_filters)
        self.aggregates: RuleIndex[AggregateRule] = RuleIndex(policies.aggregates)
        self.roles = role_enforcer(((l.role, l.parent, l.domain) for l in policies.roles), model_text)
        self.has_role_links = bool(policies.roles)
        self.decisions: dict[tuple[Any, ...], Decision] = {}
        self.views: dict[tuple[str, str, str], _ProductView] = {}
        self._effective: dict[tuple[frozenset[str], str], frozenset[str]] = {}
        self._lock = threading.Lock()

    def remember(self, key: tuple[Any, ...], decision: Decision) -> None:
        with self._lock:
            if len(self.decisions) >= DECISION_CACHE_SIZE:
                for old in list(self.decisions)[: DECISION_CACHE_SIZE // 10]:  # oldest tenth
                    del self.decisions[old]
            self.decisions[key] = decision

    # -- roles --

    def effective_roles(self, roles: frozenset[str], domain: str) -> frozenset[str]:
        """The principal's roles in ``domain``: its roles, ``R`` for each ``R:<domain>``, and
        every role those inherit (global ``roles:`` links, in this domain or everywhere)."""
        key = (roles, domain)
        cached = self._effective.get(key)
        if cached is not None:
            return cached
        found = set(roles)
        for role in roles:
            head, sep, scope = role.rpartition(":")
            if sep and head and scope == domain:
                found.add(head)
        if self.has_role_links:
            queue = list(found)
            while queue:
                role = queue.pop()
                for scope in (domain, "*"):
                    for parent in self.roles.get_roles_for_user_in_domain(role, scope):
                        if parent not in found:
                            found.add(parent)
                            queue.append(parent)
        result = frozenset(found)
        if len(self._effective) > 10_000:
            self._effective.clear()
        self._effective[key] = result
        return result

    # -- product views --

    def view(self, product: Descriptor, fingerprint: str) -> _ProductView:
        key = (product.product_id, product.version, fingerprint)
        view = self.views.get(key)
        if view is None:
            view = self._build_view(product)
            with self._lock:
                if len(self.views) >= VIEW_CACHE_SIZE:
                    self.views.clear()
                self.views[key] = view
        return view

    def _build_view(self, product: Descriptor) -> _ProductView:
        pid, domain = product.product_id, product.domain
        tags = frozenset(product.tags)
        resource = Resource(pid, domain, f"{domain}.*", tags)
        label = f"{pid}@{product.version}"
        view = _ProductView(resource, label, (), [], [], [])
        try:
            self._compile_product(product, view)
        except (FilterError, ValueError, KeyError, TypeError) as err:
            view.error = f"{label}: its policies cannot be enforced ({err}); every read is denied until fixed"
        return view

    def _compile_product(self, product: Descriptor, view: _ProductView) -> None:
        pid, domain, tags = product.product_id, product.domain, view.resource.tags
        columns = {c.name: c for c in product.columns}
        order = 0
        # file layers first (global, then domain), then the product's own rules
        for rule in self.masks.candidates(pid, domain, tags):
            for name, column in columns.items():
                if rule.columns.matches(name, column.spec):
                    is_text = column.type.name == "string"
                    kind = rule.mask if is_text or not rule.mask_non_text else rule.mask_non_text
                    view.masks.append(_Mask(name, kind, rule.expression, rule.id, rule.condition, order))
                    order += 1
        for rule in self.row_filters.candidates(pid, domain, tags):
            try:
                refs = filter_references(rule.filter, columns)
            except FilterError as err:
                raise FilterError(f"row filter {rule.id} cannot apply: {err}") from None
            view.filters.append(_Filter(rule.filter, refs, rule.id, rule.condition))
        view.aggregates += [(r.id, r.min_group_size, r.condition) for r in self.aggregates.candidates(pid, domain, tags)]

        spec = product.raw.get("spec", {}).get("policies") or {}
        label = view.label
        rules: list[AccessRule] = []
        for i, item in enumerate(spec.get("access") or ()):
            rule_id = f"{label}#access[{i}]"
            tests = _tests(item.get("require"))
            rules.append(
                AccessRule(
                    id=rule_id,
                    layer="product",
                    domain=domain,
                    effect="allow",
                    roles=tuple(item.get("allow_roles") or ("*",)),
                    actions=("read",),
                    products=(pid,),
                    condition=Condition(rule=rule_id, principal=tests),
                    description=_describe_access(item),
                )
            )
        view.product_rules = tuple(rules)
        for i, item in enumerate(spec.get("masks") or ()):
            rule_id = f"{label}#masks[{i}]"
            kind = item["mask"]
            if kind not in MASK_KINDS:
                raise ValueError(f"masks[{i}]: unknown mask '{kind}'")
            if item["column"] not in columns:
                raise ValueError(f"masks[{i}]: no column '{item['column']}'")
            if kind == "custom" and not item.get("expression"):
                raise ValueError(f"masks[{i}]: a custom mask needs an expression")
            view.masks.append(
                _Mask(item["column"], kind, item.get("expression"), rule_id, _exemption(rule_id, item), order)
            )
            order += 1
        for i, item in enumerate(spec.get("row_filters") or ()):
            rule_id = f"{label}#row_filters[{i}]"
            try:
                refs = filter_references(item["filter"], columns)
            except FilterError as err:
                raise FilterError(f"row_filters[{i}]: {err}") from None
            view.filters.append(_Filter(item["filter"], refs, rule_id, _exemption(rule_id, item)))
        size = spec.get("min_group_size")
        if size is not None:
            view.aggregates.append((f"{label}#min_group_size", int(size), ALWAYS))

    def layer_checks(self, view: _ProductView, action: str) -> list[tuple[str, AccessCheck]]:
        """The casbin checks a request must pass, per layer, for ``view`` and ``action``."""
        checks = view.checks.get(action)
        if checks is not None:
            return checks
        resource = view.resource
        pid, domain, tags = resource.id, resource.domain, resource.tags
        builtins = [r for r in BUILTIN_ACCESS if action in r.actions]
        checks = []
        global_rules = self.global_access.candidates(pid, domain, tags, action) + builtins
        checks.append(("global policies", self.enforcers.check_for(global_rules, pid, domain, action)))
        domain_rules = self.domain_access.candidates(pid, domain, tags, action)
        if domain_rules:
            if any(r.effect == "allow" for r in domain_rules):
                domain_rules = domain_rules + builtins
            else:
                domain_rules = domain_rules + [_NO_DOMAIN_OPINION]
            checks.append((f"domain policies of '{domain}'", self.enforcers.check_for(domain_rules, pid, domain, action)))
        if action == "read" and view.product_rules:
            product_rules = list(view.product_rules) + [ADMIN_READS]
            checks.append((f"{view.label} spec.policies.access", self.enforcers.check_for(product_rules, pid, domain, action)))
        view.checks[action] = checks
        return checks

    # -- decisions --

    def decide(self, principal: Principal, product: Descriptor, action: str, fingerprint: str) -> Decision:
        if action not in ACTIONS:
            return Decision(False, (f"unknown action '{action}' (known: {', '.join(ACTIONS)})",), policies=("engine",))
        view = self.view(product, fingerprint)
        if view.error:
            return Decision(False, (view.error,), policies=(view.label,))
        subject = Subject(principal.name, self.effective_roles(frozenset(principal.roles), product.domain), principal.attributes)
        allowed, reasons, policies = self._access(subject, view, action)
        if not allowed or action != "read":
            return Decision(allowed, tuple(reasons), policies=tuple(policies))
        return self._transformations(principal, subject, view, reasons, policies)

    def decide_domain(self, principal: Principal, domain: str, action: str) -> Decision:
        resource = Resource(f"{domain}.*", domain, f"{domain}.*", frozenset())
        view = _ProductView(resource, f"domain {domain}", (), [], [], [])
        subject = Subject(principal.name, self.effective_roles(frozenset(principal.roles), domain), principal.attributes)
        allowed, reasons, policies = self._access(subject, view, action)
        return Decision(allowed, tuple(reasons), policies=tuple(policies))

    def _access(self, subject: Subject, view: _ProductView, action: str) -> tuple[bool, list[str], list[str]]:
        reasons: list[str] = []
        policies: list[str] = []
        for label, check in self.layer_checks(view, action):
            seen = len(subject.missing)
            allowed, rule = check.check(subject, view.resource, action)
            missing = subject.missing[seen:]
            if rule is not None and rule is not _NO_DOMAIN_OPINION:
                policies.append(rule.id)
                if allowed and rule.explain() not in reasons:
                    reasons.append(rule.explain())
            if allowed:
                continue
            if rule is not None:  # a deny rule matched
                reason = rule.explain()
                lacking = [name for rule_id, name in missing if rule_id == rule.id]
                if lacking:
                    reason += f" (applied because {subject.name} has no attribute {_names(lacking)} to check: fail closed)"
                return False, [reason], policies
            roles = ", ".join(sorted(subject.roles)) or "none"
            reason = f"{label}: no rule allows {subject.name} (roles: {roles}) to {action} {view.resource.id}"
            notes = [f"{rule_id} needs attribute '{name}', which {subject.name} lacks" for rule_id, name in dict.fromkeys(missing)]
            if notes:
                reason += "; " + "; ".join(notes)
            return False, [reason], policies
        return True, reasons, policies

    def _transformations(
        self, principal: Principal, subject: Subject, view: _ProductView, reasons: list[str], policies: list[str]
    ) -> Decision:
        chosen: dict[str, _Mask] = {}
        for mask in view.masks:
            if mask.condition.exempts(subject):
                continue
            policies.append(mask.policy)
            current = chosen.get(mask.column)
            if current is None or MASK_STRICTNESS[mask.kind] < MASK_STRICTNESS[current.kind]:
                chosen[mask.column] = mask
        row_filters: list[RowFilter] = []
        for row_filter in view.filters:
            if row_filter.condition.exempts(subject):
                continue
            bindings: dict[str, Any] = {}
            for name in row_filter.references:
                if name == "name":
                    bindings["user.name"] = principal.name
                elif name in principal.attributes:
                    bindings[f"user.{name}"] = principal.attributes[name]
                else:
                    return Decision(
                        False,
                        (
                            (
                                f"{row_filter.policy}: the row filter '{row_filter.sql}' needs attribute '{name}', "
                                f"which {principal.name} lacks (give the principal that attribute, or exempt it from the rule)"
                            ),
                        ),
                        policies=tuple(policies + [row_filter.policy]),
                    )
            policies.append(row_filter.policy)
            row_filters.append(RowFilter(row_filter.sql, row_filter.policy, bindings))
        min_group_size: int | None = None
        for policy, size, condition in view.aggregates:
            if condition.exempts(subject):
                continue
            policies.append(policy)
            min_group_size = size if min_group_size is None else max(min_group_size, size)
        masks = tuple(
            ColumnMask(m.column, m.kind, m.policy, m.expression) for m in sorted(chosen.values(), key=lambda m: m.order)
        )
        return Decision(
            True,
            tuple(reasons),
            masks=masks,
            row_filters=tuple(row_filters),
            min_group_size=min_group_size if min_group_size and min_group_size > 1 else None,
            policies=tuple(dict.fromkeys(policies)),
        )


# --- helpers ------------------------------------------------------------------------------------


def _exemption(rule_id: str, item: Mapping[str, Any]) -> Condition:
    return Condition(rule=rule_id, unless=_tests(item.get("unless")), unless_roles=frozenset(item.get("unless_roles") or ()))


def _tests(conditions: Mapping[str, Any] | None) -> tuple[AttributeTest, ...]:
    """``{attr: value}`` or ``{attr: [values]}`` from a descriptor, as attribute tests."""
    tests = []
    for name, value in (conditions or {}).items():
        values = value if isinstance(value, list) else [value]
        tests.append(AttributeTest(str(name), frozenset(normal(v) for v in values)))
    return tuple(tests)


def _describe_access(item: Mapping[str, Any]) -> str:
    who = f"roles {', '.join(item['allow_roles'])}" if item.get("allow_roles") else "any principal"
    need = item.get("require") or {}
    if need:
        who += " with " + ", ".join(f"{k}={normal(v)}" for k, v in need.items())
    return f"the product allows {who}"


def _attributes_key(attributes: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    # repr, not the value: True and 1 hash alike but do not match policies alike
    return tuple(sorted((str(k), repr(v)) for k, v in attributes.items()))


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in dict.fromkeys(names))


def _product_name(product: Any) -> str:
    try:
        return f"{product.product_id}@{product.version}"
    except Exception:
        return repr(product)
