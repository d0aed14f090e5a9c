"""The policy engine: both layers, deny wins, domains narrow only, masks, filters, reloads.

Every test runs the real engine (casbin included) over real policy files; the only mock injects
an exception to prove that a failing evaluation denies.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from gateway.descriptor import Descriptor, validate
from policies import ANONYMOUS, Principal
from policies.decision import MASK_STRICTNESS, Decision
from policies.engine import PolicyEngine
from policies.index import AccessEnforcers, RuleIndex
from policies.loader import PolicyError, load_policy_set

# --- helpers --------------------------------------------------------------------------------------


def principal(name: str, *roles: str, **attributes: Any) -> Principal:
    return Principal(name, frozenset(roles), MappingProxyType(dict(attributes)))


def product(
    domain: str = "sales",
    name: str = "orders",
    tags: tuple[str, ...] = (),
    columns: list[dict[str, Any]] | None = None,
    policies: dict[str, Any] | None = None,
    version: str = "1.0.0",
) -> Descriptor:
    spec: dict[str, Any] = {
        "source": {"connector": "duckdb", "uri": "data.duckdb", "table": name},
        "schema": columns
        or [
            {"name": "id", "type": "int64"},
            {"name": "email", "type": "string", "pii": True},
            {"name": "amount", "type": "double", "pii": True},
            {"name": "country", "type": "string"},
        ],
    }
    if policies is not None:
        spec["policies"] = policies
    return validate(
        {
            "apiVersion": "datamesh.io/v1",
            "kind": "DataProduct",
            "metadata": {"name": name, "domain": domain, "owner": f"{domain}@example.com", "version": version, "tags": list(tags)},
            "spec": spec,
        }
    )


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def masks_of(decision: Decision) -> dict[str, str]:
    return {m.column: m.kind for m in decision.masks}


@pytest.fixture(scope="module")
def shipped() -> PolicyEngine:
    return PolicyEngine.load()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A copy of the shipped global layer to extend per test."""
    root = tmp_path / "policies"
    for name in ("access.yaml", "privacy.yaml", "regions.yaml"):
        source = Path(__file__).resolve().parents[1] / "policies" / "global" / name
        write(root, f"global/{name}", source.read_text(encoding="utf-8"))
    return root


TRAINED = principal("tara", "analyst", pii_training=True, region="DE", zone="EU")
UNTRAINED = principal("uma", "analyst", region="DE")

# --- the shipped global layer ---------------------------------------------------------------------


def test_anyone_reads_a_product_without_pii_or_restricted_tags(shipped: PolicyEngine) -> None:
    decision = shipped.decide(ANONYMOUS, product(tags=("sales",)))
    assert decision.allowed
    assert decision.reasons == ("global/access.yaml#public-products: any principal may read products without a pii or restricted tag",)


def test_pii_columns_are_masked_redact_for_strings_null_otherwise(shipped: PolicyEngine) -> None:
    decision = shipped.decide(UNTRAINED, product(tags=("sales",)))
    assert decision.allowed
    assert masks_of(decision) == {"email": "redact", "amount": "null"}
    assert {m.policy for m in decision.masks} == {"global/privacy.yaml#pii-columns"}
    assert "global/privacy.yaml#pii-columns" in decision.policies


def test_pii_training_lifts_the_pii_mask_and_opens_pii_products(shipped: PolicyEngine) -> None:
    pii_product = product(tags=("pii",))
    allowed = shipped.decide(TRAINED, pii_product)
    assert allowed.allowed and allowed.masks == ()
    assert "global/access.yaml#pii-trained-readers" in allowed.policies
    denied = shipped.decide(UNTRAINED, pii_product)
    assert not denied.allowed
    assert "no rule allows uma" in denied.denied_by
    assert "global/access.yaml#pii-trained-readers needs attribute 'pii_training', which uma lacks" in denied.denied_by


def test_attribute_values_from_the_cli_match_typed_policy_values(shipped: PolicyEngine) -> None:
    as_text = principal("tess", "analyst", pii_training="true")  # `meshgate user add --attr pii_training=true`
    assert shipped.decide(as_text, product(tags=("pii",))).allowed
    assert not shipped.decide(principal("one", pii_training=1), product(tags=("pii",))).allowed


def test_restricted_products_are_closed_to_all_but_admin(shipped: PolicyEngine) -> None:
    restricted = product(tags=("restricted",))
    assert not shipped.decide(TRAINED, restricted).allowed
    admin = shipped.decide(principal("root", "admin"), restricted)
    assert admin.allowed
    assert admin.reasons[0].startswith("builtin#admin-reads-everything")


def test_admin_reads_everything_but_masks_still_apply(shipped: PolicyEngine) -> None:
    decision = shipped.decide(principal("root", "admin"), product(tags=("pii",)))
    assert decision.allowed
    assert masks_of(decision) == {"email": "redact", "amount": "null"}


def test_gdpr_products_are_not_readable_from_restricted_regions(shipped: PolicyEngine) -> None:
    gdpr = product(tags=("gdpr",))
    assert shipped.decide(principal("dieter", region="DE"), gdpr).allowed
    denied = shipped.decide(principal("chen", region="CN"), gdpr)
    assert not denied.allowed
    assert denied.reasons == ("global/regions.yaml#gdpr-restricted-regions: GDPR data cannot be read from a restricted region",)
    assert not shipped.decide(principal("root", "admin", region="RU"), gdpr).allowed, "deny wins over admin too"


def test_a_deny_rule_needing_a_missing_attribute_denies(shipped: PolicyEngine) -> None:
    denied = shipped.decide(ANONYMOUS, product(tags=("gdpr",)))
    assert not denied.allowed
    assert "anonymous has no attribute 'region' to check: fail closed" in denied.denied_by


def test_restricted_regions_are_a_configurable_list(policy_dir: Path) -> None:
    regions = policy_dir / "global" / "regions.yaml"
    regions.write_text(regions.read_text().replace("[CN, RU, KP, IR]", "[DE]"), encoding="utf-8")
    engine = PolicyEngine.load(policy_dir)
    gdpr = product(tags=("gdpr",))
    assert not engine.decide(principal("dieter", region="DE"), gdpr).allowed
    assert engine.decide(principal("chen", region="CN"), gdpr).allowed


# --- both layers must allow ---------------------------------------------------------------------------

GOVERNED = {
    "access": [{"allow_roles": ["analyst", "data_scientist"], "require": {"pii_training": True}}],
    "masks": [
        {"column": "email", "mask": "email", "unless": {"zone": "EU"}},
        {"column": "country", "mask": "first4", "unless_roles": ["compliance_officer"]},
    ],
    "row_filters": [{"filter": "country = {user.region}", "unless_roles": ["global_analyst"]}],
    "min_group_size": 5,
}


def test_the_product_layer_must_allow_too(shipped: PolicyEngine) -> None:
    governed = product(tags=("sales",), policies=GOVERNED)
    assert shipped.decide(TRAINED, governed).allowed
    viewer = shipped.decide(principal("vic", "viewer", pii_training=True, region="DE"), governed)
    assert not viewer.allowed, "the global layer allows, the product does not"
    assert viewer.denied_by.startswith("sales.orders@1.0.0 spec.policies.access: no rule allows vic")
    untrained = shipped.decide(UNTRAINED, governed)
    assert not untrained.allowed
    assert "sales.orders@1.0.0#access[0] needs attribute 'pii_training', which uma lacks" in untrained.denied_by


def test_the_global_layer_must_allow_whatever_the_product_says(shipped: PolicyEngine) -> None:
    open_but_restricted = product(tags=("restricted",), policies={"access": [{"allow_roles": ["analyst"]}]})
    denied = shipped.decide(TRAINED, open_but_restricted)
    assert not denied.allowed and denied.denied_by.startswith("global policies: no rule allows tara")


def test_product_masks_filters_and_group_size(shipped: PolicyEngine) -> None:
    governed = product(tags=("sales",), policies=GOVERNED)
    outside_eu = principal("otto", "analyst", pii_training=True, region="US")
    decision = shipped.decide(outside_eu, governed)
    assert masks_of(decision) == {"email": "email", "country": "first4"}
    assert [(f.sql, f.bindings) for f in decision.row_filters] == [("country = {user.region}", {"user.region": "US"})]
    assert decision.row_filters[0].policy == "sales.orders@1.0.0#row_filters[0]"
    assert decision.min_group_size == 5
    in_eu = shipped.decide(TRAINED, governed)
    assert masks_of(in_eu) == {"country": "first4"}, "unless: {zone: EU} exempts"
    assert in_eu.row_filters[0].bindings == {"user.region": "DE"}
    exempt = shipped.decide(principal("gil", "analyst", "global_analyst", "compliance_officer", pii_training=True, region="FR", zone="EU"), governed)
    assert exempt.masks == () and exempt.row_filters == (), "unless_roles exempts"


def test_a_row_filter_needing_a_missing_attribute_denies(shipped: PolicyEngine) -> None:
    governed = product(tags=("sales",), policies=GOVERNED)
    nowhere = principal("nora", "analyst", pii_training=True)
    decision = shipped.decide(nowhere, governed)
    assert not decision.allowed
    assert decision.denied_by == (
        "sales.orders@1.0.0#row_filters[0]: the row filter 'country = {user.region}' needs attribute 'region', "
        "which nora lacks (give the principal that attribute, or exempt it from the rule)"
    )


def test_a_product_filter_on_a_column_it_lacks_denies_every_read(shipped: PolicyEngine) -> None:
    broken = product(tags=("sales",), policies={"row_filters": [{"filter": "region = {user.region}"}]})
    decision = shipped.decide(TRAINED, broken)
    assert not decision.allowed
    assert "the product has no column 'region'" in decision.denied_by


def test_the_stricter_mask_wins(shipped: PolicyEngine) -> None:
    assert MASK_STRICTNESS["redact"] < MASK_STRICTNESS["email"] < MASK_STRICTNESS["custom"]
    looser = product(tags=("sales",), policies={"masks": [{"column": "email", "mask": "email"}, {"column": "amount", "mask": "hash"}]})
    decision = shipped.decide(UNTRAINED, looser)
    assert masks_of(decision) == {"email": "redact", "amount": "null"}, "the global pii mask is stricter"
    stricter = product(tags=("sales",), policies={"masks": [{"column": "email", "mask": "null"}]})
    decision = shipped.decide(UNTRAINED, stricter)
    assert masks_of(decision)["email"] == "null"
    assert next(m for m in decision.masks if m.column == "email").policy == "sales.orders@1.0.0#masks[0]"
    custom = product(tags=("sales",), policies={"masks": [{"column": "country", "mask": "custom", "expression": "left({column}, 1)"}]})
    decision = shipped.decide(UNTRAINED, custom)
    assert next(m for m in decision.masks if m.column == "country").expression == "left({column}, 1)"


# --- domain policies narrow, never widen ----------------------------------------------------------------


def test_a_domain_deny_wins_over_a_global_allow(policy_dir: Path) -> None:
    write(
        policy_dir,
        "domains/sales/access.yaml",
        """
        access:
          - id: no-interns
            effect: deny
            description: interns may not read sales data
            roles: [intern]
        """,
    )
    engine = PolicyEngine.load(policy_dir)
    decision = engine.decide(principal("ida", "intern"), product(tags=("sales",)))
    assert not decision.allowed
    assert decision.reasons == ("domains/sales/access.yaml#no-interns: interns may not read sales data",)
    assert engine.decide(principal("ida", "intern"), product(domain="finance", tags=("sales",))).allowed


def test_a_domain_cannot_widen_a_global_deny(policy_dir: Path) -> None:
    write(
        policy_dir,
        "domains/sales/access.yaml",
        """
        access:
          - {id: everyone, effect: allow, description: the domain tries to open everything}
          - {id: restricted-too, effect: allow, when: {tags_any: [restricted, pii]}, roles: ["*"]}
        """,
    )
    engine = PolicyEngine.load(policy_dir)
    assert not engine.decide(UNTRAINED, product(tags=("restricted",))).allowed
    assert not engine.decide(UNTRAINED, product(tags=("pii",))).allowed
    assert not engine.decide(principal("chen", region="CN"), product(tags=("gdpr",))).allowed


def test_domain_allow_rules_narrow_the_domains_products(policy_dir: Path) -> None:
    write(
        policy_dir,
        "domains/sales/access.yaml",
        """
        access:
          - {id: sales-team-only, effect: allow, roles: [sales], description: only the sales team}
        """,
    )
    engine = PolicyEngine.load(policy_dir)
    denied = engine.decide(UNTRAINED, product(tags=("sales",)))
    assert not denied.allowed and denied.denied_by.startswith("domain policies of 'sales': no rule allows uma")
    allowed = engine.decide(principal("sam", "sales"), product(tags=("sales",)))
    assert allowed.allowed and "domains/sales/access.yaml#sales-team-only: only the sales team" in allowed.reasons
    assert engine.decide(principal("root", "admin"), product(tags=("sales",))).allowed, "admin satisfies every layer"
    assert engine.decide(UNTRAINED, product(domain="finance")).allowed, "other domains are not affected"


def test_domain_masks_filters_and_group_sizes_add_to_the_global_ones(policy_dir: Path) -> None:
    write(
        policy_dir,
        "domains/sales/privacy.yaml",
        """
        masks:
          - {id: countries, columns: {names: [country]}, mask: last4, unless_roles: [sales]}
          - {id: emails, columns: {names: [email]}, mask: hash}
        row_filters:
          - {id: own-country, products: [orders], filter: "country = {user.region}", unless_roles: [sales]}
        aggregates:
          - {id: small-groups, min_group_size: 3}
          - {id: smaller-groups, min_group_size: 10, products: [sales.orders]}
        """,
    )
    engine = PolicyEngine.load(policy_dir)
    decision = engine.decide(TRAINED, product(tags=("sales",)))
    assert masks_of(decision) == {"country": "last4", "email": "hash"}
    assert decision.row_filters[0].policy == "domains/sales/privacy.yaml#own-country"
    assert decision.row_filters[0].bindings == {"user.region": "DE"}
    assert decision.min_group_size == 10, "the largest minimum wins"
    untrained = engine.decide(UNTRAINED, product(tags=("sales",)))
    assert masks_of(untrained)["email"] == "redact", "global redact is stricter than the domain's hash"
    other = engine.decide(TRAINED, product(name="refunds", tags=("sales",)))
    assert other.row_filters == () and other.min_group_size == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("access:\n  - {id: x, effect: allow, products: [finance.ledger]}\n", "governs only its own products"),
        ("roles:\n  - {role: public, inherits: [analyst]}\n", "role inheritance is declared in global files only"),
        ("lists:\n  restricted_regions: [XX]\n", "a domain cannot redefine it"),
    ],
)
def test_a_domain_file_that_would_widen_is_rejected(policy_dir: Path, text: str, message: str) -> None:
    write(policy_dir, "domains/sales/widen.yaml", text)
    with pytest.raises(PolicyError, match=message):
        load_policy_set(policy_dir)


# --- roles with domains ------------------------------------------------------------------------------


def test_roles_inherit_globally_or_in_one_domain(policy_dir: Path) -> None:
    write(
        policy_dir,
        "global/roles.yaml",
        """
        roles:
          - {role: data_scientist, inherits: [analyst]}
          - {role: steward, inherits: [owner], domain: sales}
        """,
    )
    write(policy_dir, "domains/sales/access.yaml", "access:\n  - {id: analysts, effect: allow, roles: [analyst]}\n")
    engine = PolicyEngine.load(policy_dir)
    assert engine.decide(principal("dan", "data_scientist"), product(tags=("sales",))).allowed
    assert engine.may_manage(principal("stu", "steward"), "sales").allowed
    assert not engine.may_manage(principal("stu", "steward"), "finance").allowed


def test_managing_a_domain_needs_its_owner_role_and_weakening_needs_admin(shipped: PolicyEngine) -> None:
    owner = principal("olga", "owner:sales")
    assert shipped.may_manage(owner, "sales").allowed
    assert shipped.may_manage(owner, "sales").reasons[0].startswith("builtin#owners-manage-their-domain")
    weaken = shipped.may_manage(owner, "sales", weakens_governance=True)
    assert not weaken.allowed and "weaken_governance" in weaken.denied_by
    assert not shipped.may_manage(owner, "finance").allowed
    assert not shipped.may_manage(UNTRAINED, "sales").allowed
    root = principal("root", "admin")
    assert shipped.may_manage(root, "sales").allowed and shipped.may_manage(root, "sales", weakens_governance=True).allowed


def test_a_domain_can_deny_management(policy_dir: Path) -> None:
    write(policy_dir, "domains/sales/freeze.yaml", "access:\n  - {id: freeze, effect: deny, actions: [manage], description: release freeze}\n")
    engine = PolicyEngine.load(policy_dir)
    frozen = engine.may_manage(principal("olga", "owner:sales"), "sales")
    assert not frozen.allowed and frozen.reasons == ("domains/sales/freeze.yaml#freeze: release freeze",)


# --- validation ------------------------------------------------------------------------------------


def test_errors_name_the_file_and_line(policy_dir: Path) -> None:
    bad = write(
        policy_dir,
        "global/bad.yaml",
        """
        access:
          - id: fine
            effect: allow
          - id: broken
            effect: alow
            roles: analyst
        masks:
          - {id: m, columns: {pii: true}, mask: blur}
        row_filters:
          - {id: f, filter: "country IN (SELECT country FROM other.product)"}
        """,
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_set(policy_dir)
    problems = caught.value.problems
    assert f"{bad}:5: access[1].effect: 'alow' is not one of allow, deny" in problems
    assert f"{bad}:6: access[1].roles: expected a list, like [analyst]" in problems
    assert any(p.startswith(f"{bad}:8: masks[0].mask: 'blur' is not one of") for p in problems)
    assert f"{bad}:10: row_filters[0].filter: must be a predicate on the product's columns (no sub-queries or tables)" in problems


def test_yaml_syntax_errors_and_stray_files_are_reported(policy_dir: Path) -> None:
    broken = write(policy_dir, "global/broken.yaml", "access:\n  - id: [unclosed\n")
    stray = write(policy_dir, "access.yaml", "access: []\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_set(policy_dir)
    text = str(caught.value)
    assert f"{broken}:3: not valid YAML" in text
    assert f"{stray}:1: policy files belong under global/ or domains/<domain>/" in text


# --- reloading and caching ----------------------------------------------------------------------------


def test_reload_on_change_and_the_decision_cache_follows(policy_dir: Path) -> None:
    engine = PolicyEngine.load(policy_dir)
    orders = product(tags=("sales",))
    first = engine.decide(UNTRAINED, orders)
    assert engine.decide(UNTRAINED, orders) is first, "a repeated decision comes from the cache"
    assert engine.reload_if_changed() is False, "nothing changed"
    path = write(policy_dir, "domains/sales/access.yaml", "access:\n  - {id: closed, effect: deny, description: closed}\n")
    assert engine.reload_if_changed() is True
    assert engine.generation == 2
    assert not engine.decide(UNTRAINED, orders).allowed, "the cached allow is gone"
    path.write_text("access:\n  - {id: closed, effect: deny, roles: [intern]}\n", encoding="utf-8")
    bump_mtime(path)
    assert engine.reload_if_changed() is True
    assert engine.decide(UNTRAINED, orders).allowed
    path.unlink()
    assert engine.reload_if_changed() is True, "a removed file is a change"


def test_a_bad_file_keeps_the_last_good_set_and_reports_file_and_line(policy_dir: Path) -> None:
    engine = PolicyEngine.load(policy_dir)
    restricted = product(tags=("restricted",))
    assert not engine.decide(UNTRAINED, restricted).allowed
    access = policy_dir / "global" / "access.yaml"
    good = access.read_text(encoding="utf-8")
    # an operator's typo that would open everything if half-loaded
    access.write_text(good + "  - {id: oops, effect: allow, when: {tags_any: [restricted]}, colour: red}\n", encoding="utf-8")
    bump_mtime(access)
    assert engine.reload_if_changed() is False
    assert engine.last_error is not None
    assert f"{access}:{len(good.splitlines()) + 1}: access[2].colour: unknown key" in engine.last_error
    assert not engine.decide(UNTRAINED, restricted).allowed, "the previous policies stay in force"
    assert engine.decide(UNTRAINED, product(tags=("sales",))).allowed
    assert engine.generation == 1
    assert engine.reload_if_changed() is False, "the same bad files are not re-parsed"
    access.write_text(good, encoding="utf-8")
    bump_mtime(access)
    assert engine.reload_if_changed() is True and engine.last_error is None


def test_the_cache_key_holds_roles_attributes_and_version(shipped: PolicyEngine) -> None:
    governed = product(tags=("sales",), policies=GOVERNED)
    de = shipped.decide(principal("kim", "analyst", pii_training=True, region="DE"), governed)
    fr = shipped.decide(principal("kim", "analyst", pii_training=True, region="FR"), governed)
    assert de.row_filters[0].bindings == {"user.region": "DE"} and fr.row_filters[0].bindings == {"user.region": "FR"}
    assert not shipped.decide(principal("kim", "viewer", pii_training=True, region="DE"), governed).allowed
    v2 = product(tags=("sales",), policies={**GOVERNED, "access": []}, version="2.0.0")
    assert shipped.decide(principal("kim", "viewer", pii_training=True, region="DE"), v2).allowed


# --- fail closed and speed structure -----------------------------------------------------------------


def test_an_exception_while_deciding_denies(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = PolicyEngine.load(policy_dir)
    from policies import index

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("matcher exploded")

    monkeypatch.setattr(index.AccessCheck, "check", explode)
    decision = engine.decide(TRAINED, product(tags=("sales",)))
    assert not decision.allowed
    assert decision.reasons == ("policy evaluation failed (RuntimeError: matcher exploded); the read is denied (fail closed)",)
    assert not engine.may_manage(principal("root", "admin"), "sales").allowed
    monkeypatch.undo()
    assert engine.decide(TRAINED, product(tags=("sales",))).allowed, "a failure is not cached"


def test_an_unknown_action_is_denied(shipped: PolicyEngine) -> None:
    decision = shipped.decide(TRAINED, product(), action="delete")
    assert not decision.allowed and "unknown action 'delete'" in decision.denied_by


def test_casbin_only_sees_the_rules_the_index_selects(policy_dir: Path) -> None:
    for n in range(40):
        write(
            policy_dir,
            f"domains/d{n}/access.yaml",
            "\n".join(["access:"] + [f"  - {{id: r{i}, effect: deny, roles: [role{i}], products: [p{i}]}}" for i in range(10)]) + "\n",
        )
    policies = load_policy_set(policy_dir)
    assert len(policies.access) == 403
    index = RuleIndex([r for r in policies.access if r.layer == "domain"])
    candidates = index.candidates("d7.p3", "d7", frozenset({"sales"}), "read")
    assert [r.id for r in candidates] == ["domains/d7/access.yaml#r3"]
    check = AccessEnforcers().check_for(candidates, "d7.p3", "d7", "read")
    assert len(check.enforcer.get_policy()) == 1
    engine = PolicyEngine.load(policy_dir)
    assert not engine.decide(principal("x", "role3"), product(domain="d7", name="p3")).allowed
    assert engine.decide(principal("x", "role3"), product(domain="d7", name="p4")).allowed


def test_a_different_definition_under_the_same_version_is_decided_afresh(shipped: PolicyEngine) -> None:
    assert shipped.decide(UNTRAINED, product(tags=("sales",))).allowed
    assert not shipped.decide(UNTRAINED, product(tags=("pii",))).allowed, "same id@version, new tags: no stale allow"


def test_many_threads_decide_while_the_policies_reload(policy_dir: Path) -> None:
    import threading

    engine = PolicyEngine.load(policy_dir)
    products = [product(domain=f"d{n % 5}", name=f"p{n}", tags=(("pii",) if n % 3 == 0 else ())) for n in range(30)]
    failures: list[str] = []

    def decide_many(worker: int) -> None:
        for i in range(300):
            who = principal(f"u{worker}", "analyst", pii_training=bool(i % 2), region="DE")
            item = products[i % len(products)]
            decision = engine.decide(who, item)
            expected = not ("pii" in item.tags and not i % 2)
            if decision.allowed != expected:
                failures.append(f"{who.name} {item.product_id}: {decision}")

    threads = [threading.Thread(target=decide_many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    extra = policy_dir / "global" / "extra.yaml"
    for n in range(5):
        extra.write_text(f"aggregates:\n  - {{id: a{n}, min_group_size: {n + 2}}}\n", encoding="utf-8")
        bump_mtime(extra)
        engine.reload_if_changed()
    for t in threads:
        t.join()
    assert failures == []
    assert engine.generation == 6
