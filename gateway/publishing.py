"""Publishing data products: the one use case ``meshgate product register`` and
``POST /api/v1/data-products`` share (through ``GatewayService.publish``).

A batch of descriptors is published entirely or not at all. Each version goes through, in order:

1. ``descriptor``: the document validates (when given as a parsed document, not a Descriptor).
2. ``permission``: the principal may manage the domain (role ``owner:<domain>`` or ``admin``).
3. ``version`` and ``compatibility``: versions are immutable, retired majors stay retired, and
   a breaking change within a major is refused (``gateway/compatibility.py``).
4. ``governance``: a change that weakens governance (removes a mask, a row filter or a ``pii``
   tag) needs ``admin``.
5. ``source_root``: a file source lies under the gateway's source roots (``gateway/source_roots.py``).
6. ``source_connectivity`` and ``schema_validation``: the source answers and its real relation
   has every contract column in a type the gateway can return as the contract's.
7. ``quality.<rule>``: each ``spec.quality`` rule and each contract constraint
   (``gateway/quality.py``) runs at the source; a failing ``error`` rule blocks, a failing
   ``warning`` is recorded. A rule that cannot run (the source is unreachable or refused) fails:
   the gate is fail-closed.

A derived product (``connector: mesh``) is checked by ``gateway/lineage.py`` instead of 5-6
(``derived_inputs``: its inputs exist and are not retired, its query returns its contract's
columns, it does not read itself); its quality gates (7) run over its rows through the gateway's
planner and engine, as the platform (``gateway/derived_source.py``: only counts leave the check),
against the registry plus the batch, so it may be published with its inputs. An input that
cannot be read fails every rule: the gate is fail-closed here too.

Every check of every version is reported, so one run lists every problem. A principal who may
not publish in the domain gets no source checks at all (the gateway does not probe hosts for
strangers). Publication itself is one registry transaction that also verifies nobody else
registered a version of the same products since the checks read the registry
(``gateway.errors.Conflict`` otherwise); the gates' results are then stored with their score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from gateway import compatibility
from gateway.descriptor import Descriptor, validate
from gateway.errors import InvalidDescriptor, MeshError
from gateway.quality import RuleResult, rules, run_gates, unreachable
from gateway.registry import Registry
from gateway.source_contract import contract_problems, extra_columns
from gateway.source_roots import FILE_CONNECTORS
from gateway.sources import ENV_REFERENCE, SourceManager
from connectors.base import Connector
from policies import Principal
from policies.engine import PolicyEngine

if TYPE_CHECKING:
    from gateway.derived_source import DerivedSources
    from gateway.engine import Engine

CHECK_STATUSES = ("passed", "failed", "warning", "skipped")


@dataclass(frozen=True)
class Check:
    """One check of one product version."""

    product_id: str
    version: str
    name: str  # descriptor | permission | version | compatibility | governance | source_root | source_connectivity | schema_validation | quality.<rule> | publish
    status: str  # passed | failed | warning | skipped
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"product_id": self.product_id, "version": self.version, "name": self.name,
                "status": self.status, "detail": self.detail}


@dataclass
class PublishReport:
    """What publishing found and did. ``ok``: nothing failed (and, unless a dry run, the batch
    is published). ``published``: (product_id, version, 'registered'|'unchanged')."""

    checks: list[Check] = field(default_factory=list)
    published: list[tuple[str, str, str]] = field(default_factory=list)
    dry_run: bool = False
    quality_scores: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def status(self) -> str:
        if not self.ok:
            return "refused"
        if self.dry_run:
            return "validated"
        return "published" if any(state == "registered" for *_, state in self.published) else "unchanged"

    def to_json(self) -> dict[str, Any]:
        """The REST answer: ``validation_checks`` sums each check kind up as in the seed design
        (the worst status among the versions), ``checks`` lists every one, ``problems`` the failures."""
        summary: dict[str, str] = {}
        worst = {s: i for i, s in enumerate(("skipped", "passed", "warning", "failed"))}
        for check in self.checks:
            kind = "quality_gates" if check.name.startswith("quality.") else check.name
            if kind not in summary or worst[check.status] > worst[summary[kind]]:
                summary[kind] = check.status
        return {
            "status": self.status,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "published": [{"product_id": p, "version": v, "state": s} for p, v, s in self.published],
            "validation_checks": summary,
            "checks": [c.to_json() for c in self.checks],
            "problems": [f"{c.product_id} {c.version}: {c.name}: {c.detail}" for c in self.failures],
            "quality_scores": [{"product_id": p, "version": v, "score": s} for (p, v), s in self.quality_scores.items()],
        }


Progress = Callable[[str], None]


def publish(
    descriptors: Sequence[Descriptor | Mapping[str, Any]],
    principal: Principal,
    *,
    registry: Registry,
    policies: PolicyEngine,
    sources: SourceManager,
    run_quality: bool = True,
    dry_run: bool = False,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> PublishReport:
    """Check every descriptor, then publish them all atomically if nothing failed.

    ``descriptors`` are validated Descriptors or parsed documents (a REST body); ``sources``
    reaches the sources under the gateway's roots; ``engine`` runs derived products' gates (the
    gateway's; without one, one is started when a derived product has rules). Raises
    ``Conflict`` when another publisher changed one of the products between the checks and the
    publication.
    """
    report = PublishReport(dry_run=dry_run)
    valid: list[Descriptor] = []
    for i, item in enumerate(descriptors):
        if isinstance(item, Descriptor):
            valid.append(item)
            continue
        try:
            valid.append(validate(item, f"descriptor {i + 1}"))
        except InvalidDescriptor as err:
            meta = item.get("metadata") if isinstance(item, Mapping) else None
            meta = meta if isinstance(meta, Mapping) else {}
            product_id = f"{meta.get('domain', '?')}.{meta.get('name', '?')}"
            for problem in err.problems:
                report.checks.append(Check(product_id, str(meta.get("version", "?")), "descriptor", "failed", problem))
    seen: set[tuple[str, str]] = set()
    for d in valid:
        if (d.product_id, d.version) in seen:
            report.checks.append(Check(d.product_id, d.version, "version", "failed", "given twice in one registration"))
        seen.add((d.product_id, d.version))

    expected: dict[str, set[str]] = {}
    gates: dict[tuple[str, str], list[RuleResult]] = {}
    derived = _derived_problems(registry, valid)
    ordered = sorted(valid, key=lambda d: (d.product_id, d.version_key))
    checking = _derived_sources(registry, valid, sources, engine)
    inputs = _inputs_of(registry, valid)
    try:
        for d in ordered:
            if progress:
                progress(f"{d.product_id} {d.version}")
            registered = registry.versions(d.product_id)
            expected.setdefault(d.product_id, {r.version for r in registered})
            batch = [e for e in ordered if e.product_id == d.product_id and e.version_key < d.version_key]
            results = _check_one(d, principal, registered, batch, policies, sources,
                                 checking.connector_for if checking else sources.connector_for, run_quality, report,
                                 derived.get(f"{d.product_id} {d.version}", []), inputs)
            if results is not None:
                gates[(d.product_id, d.version)] = results
    finally:
        if checking is not None:
            checking.close()

    if not report.ok or dry_run or not valid:
        return report
    report.published = registry.register(valid, expected=expected, published_by=principal.name)
    checked_at = time.time()
    for product_id, version, state in report.published:
        report.checks.append(Check(product_id, version, "publish", "passed", state))
        results = gates.get((product_id, version))
        if results:
            report.quality_scores[(product_id, version)] = registry.record_quality(product_id, version, results, checked_at)
    return report


def _check_one(
    d: Descriptor,
    principal: Principal,
    registered: list[Descriptor],
    earlier_in_batch: list[Descriptor],
    policies: PolicyEngine,
    sources: SourceManager,
    connector_for: Callable[[Descriptor], Connector],
    run_quality: bool,
    report: PublishReport,
    derived_problems: list[str],
    inputs: Callable[[Descriptor], list[Descriptor]],
) -> list[RuleResult] | None:
    """Append every check of one version to ``report``; returns the quality results when the
    gates ran (or could not), None when they were skipped."""

    def add(name: str, status: str, detail: str) -> None:
        report.checks.append(Check(d.product_id, d.version, name, status, detail))

    decision = policies.may_manage(principal, d.domain)
    permitted = decision.allowed
    if permitted:
        add("permission", "passed", f"{principal.name} may publish in domain {d.domain}")
    else:
        reasons = "; ".join(decision.reasons) or "no rule allows it"
        add("permission", "failed", f"{principal.name} may not publish in domain {d.domain}: needs role "
                                     f"owner:{d.domain} or admin ({reasons})")

    same = next((r for r in registered if r.version == d.version), None)
    if same is not None:
        if same.raw == d.raw:
            add("version", "passed", f"{d.version} is already registered with this content (unchanged)")
            return None
        add("version", "failed", f"{d.version} is already registered with different content; versions are immutable, "
                                 "bump the version")
        return None
    add("version", "passed", f"new version {d.version}" + (f" (registered: {', '.join(r.version for r in registered[:5])})" if registered else ""))

    changes = compatibility.check_against(d, [*registered, *earlier_in_batch])
    problems = compatibility.problems(d, changes)
    for problem in problems:
        add("compatibility", "failed", problem)
    if not problems:
        mode = compatibility.mode_of(d)
        breaking = [c for c in changes if c.breaking]
        against = sorted({c.against for c in changes})
        if breaking:
            detail = f"new major version: {len(breaking)} breaking change(s) against {', '.join(against)} allowed ({mode})"
        elif changes:
            detail = f"{len(changes)} compatible change(s) against {', '.join(against)} ({mode})"
        else:
            detail = "first version" if not registered and not earlier_in_batch else f"no changes ({mode})"
        add("compatibility", "passed", detail)

    weakening = [c for c in changes if c.governance]
    if weakening:
        what = "; ".join(f"{c.path}: {c.description}" for c in weakening)
        governance = policies.may_manage(principal, d.domain, weakens_governance=True)
        if governance.allowed:
            add("governance", "passed", f"weakens governance, allowed for {principal.name}: {what}")
        else:
            add("governance", "failed", f"weakens governance and needs role admin: {what}")

    quality = rules(d) if run_quality else []
    if not permitted:
        for name in ("source_root", "source_connectivity", "schema_validation"):
            add(name, "skipped", "not checked: the principal may not publish in this domain")
        for rule in quality:
            add(f"quality.{rule.name}", "skipped", "not run: the principal may not publish in this domain")
        return None

    if d.derived:
        derived_problems = [*derived_problems, *_entitlement_problems(d, principal, policies, inputs)]
        for problem in derived_problems:
            add("derived_inputs", "failed", problem)
        if derived_problems:
            return _gates_not_run(d, "its inputs could not be read (see derived_inputs)", add) if quality else None
        add("derived_inputs", "passed", "its inputs are registered and queryable, its query returns the contract's columns")
        return _gates(d, connector_for(d), run_quality, add)

    environment = _environment_problem(d, principal, policies, registered)
    if environment:
        add("source_environment", "failed", environment)
        add("source_connectivity", "skipped", "not opened: its uri reads the gateway's environment")
        return _gates_not_run(d, "its uri reads the gateway's environment", add) if quality else None

    if d.source.connector in FILE_CONNECTORS and sources.roots is not None:
        refused = sources.roots.problems(d)
        for problem in refused:
            add("source_root", "failed", problem)
        if refused:
            add("source_connectivity", "skipped", "not opened: the source is outside the source roots")
            return _gates_not_run(d, "the source is outside the source roots", add) if quality else None
        add("source_root", "passed", f"under the source roots ({sources.roots.describe()})")

    try:
        connector = sources.connector_for(d)
        actual = connector.schema(d.source.table, d.source.query)
    except MeshError as err:
        add("source_connectivity", "failed", f"spec.source: cannot read the source: {err.message}")
        add("schema_validation", "skipped", "the source could not be read")
        return _gates_not_run(d, f"source unreachable: {err.message}", add) if quality else None
    add("source_connectivity", "passed", f"reached {connector.display_name}")
    mismatches = contract_problems(d, actual, connector.kind)
    for problem in mismatches:
        add("schema_validation", "failed", problem)
    if not mismatches:
        extra = extra_columns(d, actual)
        add("schema_validation", "passed", "every contract column is in the source in a compatible type"
            + (f" (not in the contract: {', '.join(extra)})" if extra else ""))

    return _gates(d, connector, run_quality, add)


def _environment_problem(d: Descriptor, principal: Principal, policies: PolicyEngine, registered: list[Descriptor]) -> str:
    """Why ``d``'s uri may not reference the gateway's environment (``${VAR}``), or ''.

    The gateway substitutes any of its environment variables into a uri when it connects, so a
    new uri naming them could send the gateway's secrets to a host of the publisher's choosing
    or have them echoed in an error ("no file at /data/<secret>"). Only an admin may publish a
    uri that does; an owner may keep one a registered version of the product already uses."""
    names = ENV_REFERENCE.findall(d.source.uri or "")
    if not names or any(r.source.uri == d.source.uri for r in registered):
        return ""
    if policies.may_manage(principal, d.domain, weakens_governance=True).allowed:
        return ""
    return (f"spec.source.uri: references the gateway's environment ({', '.join('${' + n + '}' for n in names)}); "
            f"a new uri that does needs role admin (the gateway substitutes its own secrets there), or keep the "
            f"uri of a registered version of {d.product_id}")


def _gates(d: Descriptor, connector: Connector, run_quality: bool, add: Callable[[str, str, str], None]) -> list[RuleResult] | None:
    """Run the quality gates of ``d`` over ``connector`` (its source, or its rows through the
    gateway for a derived product); None when there are none to run."""
    if not run_quality:
        if rules(d):
            add("quality", "skipped", "quality gates skipped on request")
        return None
    if not rules(d):
        add("quality", "passed", "no quality rules")
        return None
    results = run_gates(d, connector)
    for result in results:
        _add_result(result, add)
    return results


def _derived_sources(registry: Registry, batch: list[Descriptor], sources: SourceManager,
                     engine: Engine | None) -> DerivedSources | None:
    """What reads the batch's derived products for their gates (over the registry plus the
    batch); None when it has none (publishing then never imports the planner)."""
    if not any(d.derived for d in batch):
        return None
    from gateway.derived_source import DerivedSources

    with_batch = registry.catalog(max_age=0).including(batch)
    return DerivedSources(lambda: with_batch, sources, engine)


def _inputs_of(registry: Registry, batch: list[Descriptor]) -> Callable[[Descriptor], list[Descriptor]]:
    """Every product a derived product reads, directly or through other derived products (over
    the registry plus the batch), each once; one that does not resolve is left out (the
    ``derived_inputs`` check reports it)."""
    from gateway.lineage import query_references

    catalog = registry.catalog(max_age=0).including(batch) if any(d.derived for d in batch) else None

    def inputs(descriptor: Descriptor) -> list[Descriptor]:
        found: dict[str, Descriptor] = {}
        pending = [descriptor]
        while pending and catalog is not None:
            for domain, name in query_references(pending.pop()):
                try:
                    d = catalog.resolve(domain, name)
                except MeshError:
                    continue
                if f"{d.product_id}@{d.version}" not in found and d.product_id != descriptor.product_id:
                    found[f"{d.product_id}@{d.version}"] = d
                    pending.append(d)
        return list(found.values())

    return inputs


def _entitlement_problems(d: Descriptor, principal: Principal, policies: PolicyEngine,
                          inputs: Callable[[Descriptor], list[Descriptor]]) -> list[str]:
    """Why ``principal`` may not build derived product ``d`` on its inputs: an input it may not
    read; or, when ``d`` has quality rules or contract constraints, an input it reads governed
    (masked, filtered or with a minimum group size). The gates run over the inputs' real rows as
    the platform (at publication and in the SLA monitor), and their counts and errors are shown
    to the publisher: a rule such as ``name <> 'Ann'`` or ``CAST(name AS integer) > 0`` would
    reveal what the publisher may only see masked. An admin may change any governance, so its
    checks reveal nothing it could not read anyway."""
    problems: list[str] = []
    checked = bool(rules(d))
    for source in inputs(d):
        if policies.may_manage(principal, source.domain, weakens_governance=True).allowed:
            continue
        decision = policies.decide(principal, source)
        if not decision.allowed:
            problems.append(f"spec.source.query: {principal.name} may not read {source.product_id}, so may not build "
                            "a product on it")
        elif checked and (decision.masks or decision.row_filters or decision.min_group_size):
            problems.append(
                f"spec.source.query: {principal.name} reads {source.product_id} masked, filtered or in minimum group "
                "sizes, but this product's quality rules and contract constraints are checked over its inputs' real "
                f"rows, which would reveal them to {principal.name}: publish it without quality rules and column "
                "constraints, or have an admin publish it")
    return problems


def _derived_problems(registry: Registry, batch: list[Descriptor]) -> dict[str, list[str]]:
    """``gateway.lineage.check_derived``'s problems by "product_id version" of the derived products in ``batch``."""
    if not any(d.derived for d in batch):
        return {}
    from gateway.lineage import check_derived

    try:
        check_derived(registry.catalog(max_age=0), batch)
    except InvalidDescriptor as err:
        labels = {f"{d.product_id} {d.version}" for d in batch if d.derived}
        if err.source in labels:
            return {err.source: list(err.problems)}
        found: dict[str, list[str]] = {}
        for problem in err.problems:
            label = next((x for x in labels if problem.startswith(x + ": ")), "")
            found.setdefault(label, []).append(problem.removeprefix(label + ": "))
        return found
    return {}


def _gates_not_run(d: Descriptor, reason: str, add: Callable[[str, str, str], None]) -> list[RuleResult]:
    results = unreachable(d, reason)
    for result in results:
        _add_result(result, add)
    return results


def _add_result(result: RuleResult, add: Callable[[str, str, str], None]) -> None:
    status = "passed" if result.passed else "skipped" if result.skipped else "failed" if result.blocks else "warning"
    add(f"quality.{result.name}", status, f"{result.path}: {result.describe()}" if result.path else result.describe())
