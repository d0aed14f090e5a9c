"""Schema evolution rules (gateway/compatibility.py): each change kind under each mode."""

from __future__ import annotations

import copy

import pytest

from gateway.compatibility import check, check_against, problems, widens
from gateway.descriptor import validate

BASE = {
    "apiVersion": "datamesh.io/v1",
    "kind": "DataProduct",
    "metadata": {"name": "c360", "domain": "customers", "owner": "t@example.com", "version": "1.0.0", "tags": ["pii"]},
    "spec": {
        "source": {"connector": "sqlite", "uri": "c.sqlite", "table": "c"},
        "schema": [
            {"name": "id", "type": "int64", "required": True, "primary_key": True},
            {"name": "email", "type": "string", "pii": True, "classification": "restricted"},
            {"name": "country", "type": "string", "enum": ["DE", "FR", "US"]},
            {"name": "small", "type": "int32"},
            {"name": "ltv", "type": "decimal(12,2)"},
            {"name": "updated_at", "type": "timestamptz"},
        ],
        "policies": {"masks": [{"column": "email", "mask": "email"}],
                     "row_filters": [{"filter": "country = {user.region}"}]},
    },
}


def make(version: str = "1.1.0", mode: str | None = None, edit=None):  # noqa: ANN001, ANN201
    doc = copy.deepcopy(BASE)
    doc["metadata"]["version"] = version
    if mode:
        doc["spec"]["compatibility"] = mode
    if edit:
        edit(doc)
    return validate(doc)


def col(doc: dict, name: str) -> dict:
    return next(c for c in doc["spec"]["schema"] if c["name"] == name)


def drop(name: str):  # noqa: ANN201
    return lambda d: d["spec"]["schema"].remove(col(d, name))


def set_(name: str, **values):  # noqa: ANN003, ANN201
    return lambda d: col(d, name).update(values)


def unset(name: str, key: str):  # noqa: ANN201
    return lambda d: col(d, name).pop(key)


def add(column: dict):  # noqa: ANN201
    return lambda d: d["spec"]["schema"].append(column)


def rename(old: str, new: str):  # noqa: ANN201
    return lambda d: col(d, old).update(name=new)


def breaking(edit, mode: str) -> list[str]:  # noqa: ANN001
    return [f"{c.path}: {c.description}" for c in check(make("1.0.0"), make("1.1.0", edit=edit), mode) if c.breaking]


# (edit, breaks under backward, breaks under forward)
CASES = {
    "drop nullable column": (drop("small"), True, False),
    "drop required column": (drop("id"), True, True),
    "rename column": (rename("small", "tiny"), True, True),
    "add nullable column": (add({"name": "note", "type": "string"}), False, True),
    "add required column": (add({"name": "note", "type": "string", "required": True}), True, True),
    "widen int32 to int64": (set_("small", type="int64"), False, True),
    "narrow int64 to int32": (set_("id", type="int32"), True, False),
    "widen decimal": (set_("ltv", type="decimal(14,3)"), False, True),
    "decimal scale down": (set_("ltv", type="decimal(12,1)"), True, True),
    "decimal precision down": (set_("ltv", type="decimal(10,2)"), True, False),
    "timestamptz to timestamp": (set_("updated_at", type="timestamp"), True, False),
    "int32 to string": (set_("small", type="string"), True, True),
    "make required": (set_("small", required=True), True, False),
    "make nullable": (set_("id", required=False, primary_key=False), False, True),
    "remove enum value": (set_("country", enum=["DE", "FR"]), True, False),
    "add enum value": (set_("country", enum=["DE", "FR", "US", "JP"]), False, True),
    "drop enum restriction": (unset("country", "enum"), False, True),
    "add enum restriction": (set_("small", enum=[1, 2]), True, False),
    "description only": (set_("small", description="now documented"), False, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schema_rules_in_each_mode(name: str) -> None:
    edit, backward, forward = CASES[name]
    assert bool(breaking(edit, "backward")) == backward, breaking(edit, "backward")
    assert bool(breaking(edit, "forward")) == forward, breaking(edit, "forward")
    assert bool(breaking(edit, "full")) == (backward or forward)
    assert bool(breaking(edit, "backward_transitive")) == backward
    assert breaking(edit, "none") == []


GOVERNANCE = {
    "remove pii tag": (unset("email", "pii"), "spec.schema.email.pii"),
    "remove product pii tag": (lambda d: d["metadata"].update(tags=[]), "metadata.tags"),
    "remove mask": (lambda d: d["spec"]["policies"].pop("masks"), "spec.policies.masks.email"),
    "remove row filter": (lambda d: d["spec"]["policies"].pop("row_filters"), "spec.policies.row_filters"),
    "lower classification": (set_("email", classification="internal"), "spec.schema.email.classification"),
}


@pytest.mark.parametrize("name", list(GOVERNANCE))
def test_weakening_governance_is_breaking_in_every_mode_but_none(name: str) -> None:
    edit, path = GOVERNANCE[name]
    for mode in ("backward", "forward", "full", "full_transitive"):
        changes = [c for c in check(make("1.0.0"), make("1.1.0", edit=edit), mode) if c.breaking]
        assert [c.path for c in changes] == [path] and changes[0].governance, (mode, changes)
    assert not [c for c in check(make("1.0.0"), make("1.1.0", edit=edit), "none") if c.breaking]


def test_adding_governance_is_not_breaking() -> None:
    edit = set_("small", pii=True, classification="restricted")
    assert breaking(edit, "full") == []


def test_rename_is_named_as_a_likely_rename() -> None:
    changes = check(make("1.0.0"), make("1.1.0", edit=rename("small", "tiny")), "backward")
    assert any("renamed to tiny?" in c.description and c.breaking for c in changes)


def test_breaking_change_needs_a_new_major() -> None:
    previous = make("1.0.0")
    same_major = make("1.1.0", edit=drop("small"))
    next_major = make("2.0.0", edit=drop("small"))
    assert problems(same_major, check_against(same_major, [previous])) == [
        "spec.schema.small: column dropped (breaking against 1.0.0; publish it as 2.0.0 or keep the change compatible)"
    ]
    assert problems(next_major, check_against(next_major, [previous])) == []


def test_transitive_checks_every_earlier_version() -> None:
    v1 = make("1.0.0")
    v2 = make("1.1.0", edit=set_("small", type="int64"))  # widening: fine backward
    v3 = make("1.2.0", mode="forward", edit=set_("small", type="int64"))  # identical to v2
    assert check_against(v3, [v1, v2]) == []  # only the newest earlier version (v2) counts
    v3t = make("1.2.0", mode="forward_transitive", edit=set_("small", type="int64"))
    found = check_against(v3t, [v1, v2])
    assert [(c.against, c.breaking) for c in found] == [("1.0.0", True)]  # int32 -> int64 breaks forward against 1.0.0
    assert problems(v3t, found)


def test_versions_after_the_new_one_are_not_checked() -> None:
    v2 = make("2.0.0", edit=drop("small"))
    backport = make("1.0.1")
    assert check_against(backport, [make("1.0.0"), v2]) == []


@pytest.mark.parametrize(
    ("old", "new", "wider"),
    [
        ("int32", "int64", True), ("int64", "int32", False), ("float", "double", True), ("int32", "double", True),
        ("int64", "double", False), ("int32", "decimal(10,0)", True), ("int32", "decimal(10,1)", False),
        ("int64", "decimal(19,0)", True), ("decimal(12,2)", "decimal(13,3)", True),
        ("decimal(12,2)", "decimal(12,3)", False), ("date", "timestamp", True), ("timestamptz", "timestamp", False),
        ("timestamp", "timestamptz", True), ("string", "int64", False),
    ],
)
def test_widening(old: str, new: str, wider: bool) -> None:
    assert widens(old, new) is wider


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown compatibility mode"):
        check(make("1.0.0"), make("1.1.0"), "sideways")
