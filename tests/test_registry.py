"""Descriptor validation and the registry: errors by path, atomic registration, versions kept."""

from __future__ import annotations

import copy
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from gateway.descriptor import validate
from gateway.errors import InvalidDescriptor, NotFound
from gateway.registry import Registry

GOOD = {
    "apiVersion": "datamesh.io/v1",
    "kind": "DataProduct",
    "metadata": {"name": "customer_360", "domain": "customers", "owner": "team@example.com", "version": "2.3.0",
                 "tags": ["customer", "pii"], "description": "360 view"},
    "spec": {
        "source": {"connector": "postgres", "uri": "postgresql://${PGUSER}@127.0.0.1:5432/customers", "table": "public.c360"},
        "schema": [
            {"name": "customer_id", "type": "string", "required": True, "primary_key": True},
            {"name": "email", "type": "string", "pii": True, "pattern": "^[^@]+@[^@]+$"},
            {"name": "ltv", "type": "decimal(12,2)", "min": 0},
            {"name": "updated_at", "type": "timestamptz", "required": True},
        ],
        "compatibility": "backward",
        "sla": {"freshness": "1h", "freshness_column": "updated_at"},
        "quality": [{"name": "no_null_id", "rule": "customer_id IS NOT NULL", "severity": "error"}],
        "policies": {"masks": [{"column": "email", "mask": "email", "unless": {"zone": "EU"}}]},
    },
}


def variant(**changes: object) -> dict:
    doc = copy.deepcopy(GOOD)
    for path, value in changes.items():
        node = doc
        *parents, last = path.split("__")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is ...:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def problems(doc: object) -> list[str]:
    with pytest.raises(InvalidDescriptor) as info:
        validate(doc, "test.yaml")
    return info.value.problems


def test_good_descriptor_validates() -> None:
    d = validate(GOOD)
    assert d.product_id == "customers.customer_360"
    assert d.major == 2
    assert [c.type.name for c in d.columns] == ["string", "string", "decimal(12,2)", "timestamptz"]


def test_every_error_is_listed_with_its_path() -> None:
    doc = variant(spec__schema__2__type="strng", metadata__version="two", spec__source__colour="red")
    doc["spec"]["schema"].append({"name": "Bad Name", "type": "int"})
    found = problems(doc)
    assert "spec.schema[2].type: unknown type 'strng'" in found[0] or any(
        p.startswith("spec.schema[2].type: unknown type 'strng'") for p in found
    )
    assert any(p.startswith("metadata.version:") for p in found)
    assert any(p.startswith("spec.source.colour: unknown key") for p in found)
    assert any(p.startswith("spec.schema[4].name:") for p in found)
    assert len(found) == 4


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"metadata__domain": "mesh"}, "metadata.domain: 'mesh' is reserved"),
        ({"spec__source__connector": "oracle"}, "spec.source.connector: 'oracle' is not one of"),
        ({"spec__source__table": ...}, "spec.source.table: required"),
        ({"spec__source__uri": "postgresql://bob:secret@host/db"}, "inline password"),
        ({"spec__sla__freshness_column": "nope"}, "spec.sla.freshness_column: no column 'nope'"),
        ({"spec__sla__freshness": "soon"}, "spec.sla.freshness: 'soon' is not a duration"),
        ({"spec__quality__0__rule": "customer_id = ("}, "spec.quality[0].rule: does not parse"),
        ({"spec__policies__masks__0__mask": "blur"}, "spec.policies.masks[0].mask: 'blur' is not one of"),
        ({"spec__schema": []}, "spec.schema: needs at least 1 item"),
        ({"kind": ...}, "kind: required"),
    ],
)
def test_specific_errors(changes: dict, expected: str) -> None:
    assert any(expected in p for p in problems(variant(**changes))), problems(variant(**changes))


def test_duplicate_column_and_non_mapping() -> None:
    doc = variant()
    doc["spec"]["schema"].append({"name": "email", "type": "string"})
    assert any("duplicate column 'email'" in p for p in problems(doc))
    assert problems(["not", "a", "mapping"]) == [": expected a mapping, got list"]


def _descriptor(version: str, name: str = "customer_360", **changes: object):
    return validate(variant(metadata__version=version, metadata__name=name, **changes))


def test_versions_are_kept_and_newest_resolves(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.register([_descriptor("1.0.0")])
    registry.register([_descriptor("1.10.0"), _descriptor("2.0.0")])
    catalog = registry.catalog(max_age=0)
    assert [d.version for d in catalog.versions["customers.customer_360"]] == ["2.0.0", "1.10.0", "1.0.0"]
    assert catalog.resolve("customers", "customer_360").version == "2.0.0"
    assert catalog.resolve("customers", "customer_360@1").version == "1.10.0"
    with pytest.raises(NotFound, match="no active major version 3"):
        catalog.resolve("customers", "customer_360@3")
    with pytest.raises(NotFound, match="did you mean customers.customer_360"):
        catalog.resolve("customers", "customer_36")


def test_registration_is_all_or_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.register([_descriptor("1.0.0")])
    changed = _descriptor("1.0.0", spec__source__table="public.other")
    with pytest.raises(InvalidDescriptor, match="already registered with different content"):
        registry.register([_descriptor("1.1.0", name="other"), changed])
    catalog = registry.catalog(max_age=0)
    assert list(catalog.versions) == ["customers.customer_360"]  # 'other' was rolled back
    assert registry.register([_descriptor("1.0.0")]) == [("customers.customer_360", "1.0.0", "unchanged")]


def test_running_reader_sees_changes_from_another_process_within_a_second(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    products = tmp_path / "products"
    products.mkdir()
    conn = sqlite3.connect(products / "c360.sqlite")  # publishing reads the real table: give it one
    conn.execute("CREATE TABLE c360 (customer_id TEXT NOT NULL, email TEXT, ltv REAL, updated_at TEXT NOT NULL)")
    conn.commit()
    conn.close()
    source = {"connector": "sqlite", "uri": "c360.sqlite", "table": "c360"}
    registry.register([validate(variant(metadata__version="1.0.0", spec__source=source), base_dir=products)])
    assert registry.catalog().resolve("customers", "customer_360").version == "1.0.0"
    (products / "p.yaml").write_text(yaml.safe_dump(variant(metadata__version="1.1.0", spec__source=source)))
    subprocess.run(
        [sys.executable, "-m", "gateway.cli", "product", "register", str(products), "--registry", str(tmp_path / "registry.db")],
        check=True, capture_output=True,
    )
    started = time.monotonic()
    while registry.catalog().resolve("customers", "customer_360").version != "1.1.0":
        assert time.monotonic() - started < 1.0, "registry change not seen within 1 s"
        time.sleep(0.05)


def test_cli_register_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(variant(spec__schema__2__type="strng", metadata__version="x")))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "product", "register", str(tmp_path), "--registry", str(tmp_path / "r.db")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "spec.schema[2].type: unknown type 'strng'" in result.stderr
    assert "metadata.version:" in result.stderr
    assert "nothing was registered" in result.stderr
    assert Registry(tmp_path / "r.db").catalog(max_age=0).versions == {}


def test_concurrent_catalog_reads_are_safe(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    registry.register([_descriptor("1.0.0")])
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(50):
                registry.catalog(max_age=0).resolve("customers", "customer_360")
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
