"""ODCS (Open Data Contract Standard) contracts: export validates against the package's model and
JSON schema, export -> contract_ref import gives back the same contract, hand-written ODCS files
import, and broken ones are refused naming the file and the path inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import jsonschema
import pytest
import yaml
from open_data_contract_standard.model import OpenDataContractStandard

from gateway import odcs
from gateway.registry import Registry
from gateway.descriptor import load_file, validate
from gateway.errors import InvalidDescriptor
from gateway.quality import rules, run_gates
from gateway.sources import SourceManager

WORKTREE = Path(__file__).resolve().parents[1]

DESCRIPTOR = {
    "apiVersion": "datamesh.io/v1",
    "kind": "DataProduct",
    "metadata": {"name": "orders", "domain": "sales", "owner": "sales@example.com", "version": "1.2.0",
                 "tags": ["pii", "sales"], "description": "Orders placed in the web shop."},
    "spec": {
        "source": {"connector": "postgres", "uri": "postgresql://app:${SHOP_PASSWORD}@db.example.com:5433/shop",
                   "table": "public.orders"},
        "schema": [
            {"name": "order_id", "type": "int64", "primary_key": True, "description": "Stable id"},
            {"name": "line", "type": "int32", "primary_key": True},
            {"name": "email", "type": "string", "pii": True, "classification": "restricted",
             "pattern": "^[^@]+@[^@]+$", "unique": True, "tags": ["contact"]},
            {"name": "country", "type": "string", "required": True, "enum": ["DE", "FR", "US"]},
            {"name": "amount", "type": "decimal(12,2)", "min": 0, "max": 10000},
            {"name": "quantity", "type": "int32", "enum": [1, 2, 3]},
            {"name": "weight", "type": "float"},
            {"name": "ordered_on", "type": "date", "min": "2020-01-01", "required": True},
            {"name": "updated_at", "type": "timestamptz", "required": True},
            {"name": "shipped_at", "type": "timestamp"},
            {"name": "paid", "type": "boolean"},
            {"name": "receipt", "type": "binary"},
            {"name": "segment_id", "type": "int64", "references": "marketing.segments.segment_id"},
        ],
        "compatibility": "full",
        "sla": {"freshness": "1h", "freshness_column": "updated_at", "availability": 99.9, "completeness": 99.5,
                "stale_while_revalidate": "5m", "monitor_every": "30s", "quality_threshold": 0.95},
        "quality": [
            {"name": "big_orders_rare", "rule": "amount < 5000", "severity": "warning", "description": "Check outliers"},
            {"name": "shipped_after_order", "rule": "shipped_at IS NULL OR shipped_at >= ordered_on"},
        ],
    },
}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "MESHGATE_HOME": str(cwd / "home")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def write_yaml(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def with_ref(ref: str, **spec: object) -> dict:
    """The descriptor's metadata and source with ``contract_ref`` instead of schema/quality/SLA."""
    doc = json.loads(json.dumps(DESCRIPTOR))
    for key in ("schema", "quality", "sla"):
        doc["spec"].pop(key)
    doc["spec"]["contract_ref"] = ref
    doc["spec"].update(spec)
    return doc


def test_export_validates_against_the_package_model_and_json_schema(tmp_path: Path) -> None:
    d = validate(json.loads(json.dumps(DESCRIPTOR)))
    text = odcs.export(d)
    document = yaml.safe_load(text)
    schema = json.loads(OpenDataContractStandard.json_schema())
    jsonschema.Draft201909Validator(schema).validate(document)
    model = OpenDataContractStandard.from_string(text)
    assert document["apiVersion"] == schema["properties"]["apiVersion"]["default"] == "v3.2.0"
    assert model.id == "sales.orders" and model.domain == "sales" and model.version == "1.2.0"
    assert model.status == "active" and model.tags == ["pii", "sales"]
    assert model.description.purpose == "Orders placed in the web shop."
    assert model.team.members[0].username == "sales@example.com" and model.team.members[0].role == "owner"
    # the source as a server, without the user or the password reference
    assert document["servers"] == [{"server": "source", "type": "postgres", "host": "db.example.com", "port": 5433,
                                    "database": "shop", "schema": "public"}]
    assert "SHOP_PASSWORD" not in text and "app" not in json.dumps(document["servers"])
    properties = {p.name: p for p in model.schema_[0].properties}
    assert properties["email"].tags == ["contact", "pii"] and properties["email"].classification == "restricted"
    assert properties["email"].logicalTypeOptions == {"pattern": "^[^@]+@[^@]+$"} and properties["email"].unique
    assert [v.value for v in properties["country"].enum] == ["DE", "FR", "US"] and properties["country"].required
    assert (properties["amount"].logicalType, properties["amount"].physicalType) == ("number", "numeric(12,2)")
    assert properties["amount"].logicalTypeOptions == {"minimum": 0, "maximum": 10000}
    assert (properties["line"].primaryKey, properties["line"].primaryKeyPosition) == (True, 2)
    assert properties["updated_at"].logicalTypeOptions == {"timezone": True}
    assert properties["segment_id"].relationships[0].to == "marketing.segments.segment_id"
    quality = model.schema_[0].quality
    assert [(q.name, q.type, q.query, q.mustBe, q.severity) for q in quality] == [
        ("big_orders_rare", "sql", "SELECT count(*) FROM ${object} WHERE NOT (amount < 5000)", 0, "warning"),
        ("shipped_after_order", "sql", "SELECT count(*) FROM ${object} WHERE NOT (shipped_at IS NULL OR shipped_at >= ordered_on)", 0, "error"),
    ]
    sla = {p.property: (p.value, p.unit, p.element) for p in model.slaProperties}
    assert sla["latency"] == (1, "h", "orders.updated_at") and sla["availability"] == (99.9, "percent", None)


def test_export_then_import_via_contract_ref_gives_the_same_contract(tmp_path: Path) -> None:
    source = write_yaml(tmp_path / "orders.yaml", DESCRIPTOR)
    exported = run_cli("product", "export", str(source), "--format", "odcs", "-o", "contracts/orders.odcs.yaml", cwd=tmp_path)
    assert exported.returncode == 2 and "cannot write contracts/orders.odcs.yaml: No such file or directory" in exported.stderr
    (tmp_path / "contracts").mkdir()
    exported = run_cli("product", "export", str(source), "--format", "odcs", "-o", "contracts/orders.odcs.yaml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "wrote contracts/orders.odcs.yaml: sales.orders 1.2.0 as ODCS v3.2.0 (13 properties)" in " ".join(exported.stderr.split())
    assert yaml.safe_load((tmp_path / "contracts/orders.odcs.yaml").read_text())["status"] == "draft"

    original = load_file(source)
    imported = load_file(write_yaml(tmp_path / "by_ref.yaml", with_ref("contracts/orders.odcs.yaml", compatibility="full")))
    assert imported.columns == original.columns  # names, types, required, keys, enum, min/max, pattern, pii...
    assert rules(imported) == rules(original)  # every gate: declared rules and the contract's, same severity
    assert imported.raw["spec"]["sla"] == original.raw["spec"]["sla"]
    assert "contract_ref" not in imported.raw["spec"]  # what the registry stores is self-contained

    # and from the registry: the registered version exports as active, and to standard output
    # (registered directly: publishing would refuse it, the example's database host does not exist)
    Registry(tmp_path / "home" / "registry.db").register([imported])
    again = run_cli("product", "export", "sales.orders", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    document = yaml.safe_load(again.stdout)
    assert document["status"] == "active"
    assert document["schema"] == yaml.safe_load((tmp_path / "contracts/orders.odcs.yaml").read_text())["schema"]


# In the style of the official ODCS examples (bitol-io/open-data-contract-standard, docs/examples).
HAND_WRITTEN = """
apiVersion: v3.1.0
kind: DataContract
id: 53581432-6c55-4ba2-a65f-72344a91553a
name: seller_payments_v1
version: 1.1.0
status: active
domain: seller
tenant: ClimateQuantumInc
description:
  purpose: Views built on top of the seller tables.
schema:
  - name: tbl
    physicalName: tbl_1
    physicalType: table
    businessName: Core Payment Metrics
    description: Provides core payment metrics
    tags: ['finance']
    dataGranularityDescription: Aggregation on columns txn_ref_dt, pmt_txn_id
    properties:
      - name: txn_ref_dt
        businessName: transaction reference date
        logicalType: date
        physicalType: date
        description: Reference date for transaction
        partitioned: true
        partitionKeyPosition: 1
        criticalDataElement: false
        examples: ["2022-10-03", "2020-01-28"]
        customProperties:
          - property: anonymizationStrategy
            value: none
      - name: rcvr_id
        primaryKey: true
        primaryKeyPosition: 1
        businessName: receiver id
        logicalType: string
        physicalType: varchar(18)
        required: true
        classification: restricted
        tags: ['uid', 'PII']
      - name: rcvr_cntry_code
        primaryKey: false
        businessName: receiver country code
        logicalType: string
        physicalType: varchar(2)
        classification: public
        quality:
          - metric: invalidValues
            arguments:
              validValues: ['DE', 'FR', 'US']
            mustBe: 0
            description: Known countries only
            dimension: conformity
          - type: text
            description: The ISO 3166 alpha-2 code of the receiver's country.
      - name: amount
        logicalType: number
        logicalTypeOptions:
          minimum: 0
          exclusiveMaximum: 1000000
        quality:
          - metric: nullValues
            mustBe: 0
            severity: warning
      - name: payments
        logicalType: integer
        logicalTypeOptions:
          format: i32
          maximum: 50
    quality:
      - type: sql
        name: no future transactions
        query: SELECT COUNT(*) FROM ${object} WHERE txn_ref_dt > DATE '2030-01-01'
        mustBe: 0
        severity: error
slaProperties:
  - property: latency
    value: 4
    unit: d
    element: tbl.txn_ref_dt
  - property: retention
    value: 3
    unit: y
"""


def test_a_hand_written_odcs_contract_becomes_the_contract_and_its_gates_run(tmp_path: Path) -> None:
    (tmp_path / "seller.odcs.yaml").write_text(HAND_WRITTEN)
    db = duckdb.connect(str(tmp_path / "s.duckdb"))
    db.execute("CREATE TABLE tbl_1 (txn_ref_dt DATE, rcvr_id VARCHAR, rcvr_cntry_code VARCHAR, amount DOUBLE, payments INTEGER)")
    db.execute("INSERT INTO tbl_1 VALUES ('2022-10-03', 'r1', 'DE', 10, 3), ('2031-01-01', 'r1', 'XX', NULL, 51), "
               "('2022-10-04', NULL, 'US', 2000000, 1)")
    db.close()
    doc = {"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
           "metadata": {"name": "payments", "domain": "seller", "owner": "seller@example.com", "version": "1.0.0"},
           "spec": {"source": {"connector": "duckdb", "uri": "s.duckdb", "table": "tbl_1"}, "contract_ref": "seller.odcs.yaml"}}
    d = load_file(write_yaml(tmp_path / "payments.yaml", doc))
    columns = {c.name: c for c in d.columns}
    assert [(c.name, c.type.name) for c in d.columns] == [
        ("txn_ref_dt", "date"), ("rcvr_id", "string"), ("rcvr_cntry_code", "string"), ("amount", "double"), ("payments", "int32")]
    assert columns["rcvr_id"].primary_key and columns["rcvr_id"].required
    assert columns["rcvr_id"].spec == {"classification": "restricted", "pii": True, "tags": ["uid"]}
    assert columns["amount"].spec == {"min": 0} and columns["payments"].spec == {"max": 50}
    assert d.raw["spec"]["quality"] == [
        {"name": "rcvr_cntry_code_valid", "rule": "\"rcvr_cntry_code\" IN ('DE', 'FR', 'US')", "severity": "error",
         "description": "Known countries only"},
        {"name": "amount_exclusive_maximum", "rule": '"amount" < 1000000', "severity": "error"},
        {"name": "amount_not_null", "rule": '"amount" IS NOT NULL', "severity": "warning"},
        {"name": "no_future_transactions", "rule": "NOT (txn_ref_dt > CAST('2030-01-01' AS DATE))", "severity": "error"},
    ]
    assert d.raw["spec"]["sla"] == {"freshness_column": "txn_ref_dt", "freshness": "4d"}

    sources = SourceManager()
    try:
        results = {r.name: r for r in run_gates(d, sources.connector_for(d))}
    finally:
        sources.close()
    failing = {name: r.failing_rows for name, r in results.items() if not r.passed}
    assert failing == {"amount_exclusive_maximum": 1, "rcvr_cntry_code_valid": 1, "amount_not_null": 1,
                       "no_future_transactions": 1, "rcvr_id.required": 1, "payments.max": 1, "primary_key(rcvr_id)": 2}
    assert not results["amount_not_null"].blocks and results["no_future_transactions"].blocks


def _refused(tmp_path: Path, contract: str | dict, ref: str = "c.odcs.yaml") -> list[str]:
    if contract is not None:
        (tmp_path / "c.odcs.yaml").write_text(contract if isinstance(contract, str) else yaml.safe_dump(contract))
    with pytest.raises(InvalidDescriptor) as err:
        load_file(write_yaml(tmp_path / "p.yaml", with_ref(ref)))
    return err.value.problems


def _contract(**properties_of: object) -> dict:
    contract = yaml.safe_load(HAND_WRITTEN)
    contract["schema"][0]["properties"][1].update(properties_of)
    return contract


@pytest.mark.parametrize(
    ("contract", "problem"),
    [
        ("kind: DataContract\napiVersion: v3.1.0\nid: x\nversion: [1",
         "spec.contract_ref: c.odcs.yaml: not valid YAML"),
        ({"kind": "Contract", "apiVersion": "v3.1.0", "id": "x", "version": "1.0.0"},
         "spec.contract_ref: c.odcs.yaml: kind: 'Contract' is not one of ['DataContract']"),
        ({"kind": "DataContract", "apiVersion": "v9", "id": "x", "version": "1.0.0"},
         "spec.contract_ref: c.odcs.yaml: apiVersion: 'v9' is not one of"),
        ({"kind": "DataContract", "apiVersion": "v3.1.0", "version": "1.0.0"},
         "spec.contract_ref: c.odcs.yaml: (document): 'id' is a required property"),
        (_contract(logicalType="strng"),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].logicalType: 'strng' is not one of"),
        (_contract(name="rcvrId"),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].name: 'rcvrId' is not a lower-case name"),
        (_contract(logicalTypeOptions={"pattern": "([a-"}),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].logicalTypeOptions.pattern: not a valid regular expression"),
        (_contract(physicalType="bigint", logicalType="string"),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].physicalType: 'bigint' is not a string (logicalType)"),
        (_contract(classification="secret"),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].classification: 'secret' is not one of public, internal"),
        (_contract(quality=[{"type": "custom", "engine": "soda", "implementation": "x"}]),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].quality[0]: custom (soda) checks cannot run"),
        (_contract(quality=[{"metric": "rowCount", "mustBeGreaterThan": 5}]),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1].quality[0]: only checks that must find 0 rows"),
        (_contract(logicalType="array", items={"logicalType": "string"}),
         "spec.contract_ref: c.odcs.yaml: schema[0].properties[1]: nested array properties are not supported"),
    ],
)
def test_invalid_contracts_are_refused_naming_the_file_and_the_path_inside(tmp_path: Path, contract, problem: str) -> None:  # noqa: ANN001
    problems = _refused(tmp_path, contract)
    assert any(p.startswith(problem) for p in problems), problems


def test_a_missing_contract_file_and_an_ambiguous_object_are_refused(tmp_path: Path) -> None:
    assert _refused(tmp_path, None, "nope.odcs.yaml") == ["spec.contract_ref: nope.odcs.yaml: cannot read the ODCS contract: No such file or directory"]
    two = yaml.safe_load(HAND_WRITTEN)
    two["schema"].append({**two["schema"][0], "name": "other"})
    assert _refused(tmp_path, two) == [
        "spec.contract_ref: c.odcs.yaml: schema: several schema objects; name one as c.odcs.yaml#<name> (it has: tbl, other)"]
    (tmp_path / "c.odcs.yaml").write_text(yaml.safe_dump(two))
    d = load_file(write_yaml(tmp_path / "p.yaml", with_ref("c.odcs.yaml#other")))
    assert d.columns[0].name == "txn_ref_dt"


def test_inline_schema_and_contract_ref_together_are_refused(tmp_path: Path) -> None:
    doc = with_ref("c.odcs.yaml")
    doc["spec"]["schema"] = DESCRIPTOR["spec"]["schema"]
    with pytest.raises(InvalidDescriptor) as err:
        validate(doc, base_dir=tmp_path)
    assert "spec: give either schema (inline) or contract_ref (an ODCS file), not both" in err.value.problems


@pytest.mark.parametrize("ref", ["c.odcs.yaml", "/etc/passwd"])
def test_a_contract_ref_without_a_descriptor_file_is_refused_before_reading_anything(ref: str) -> None:
    with pytest.raises(InvalidDescriptor) as err:
        validate(with_ref(ref))  # as a REST body is validated: no folder
    assert err.value.problems == [f"spec.contract_ref: {ref}: a contract_ref is resolved against the descriptor file's "
                                  "folder; register the descriptor file with the CLI, or give the schema inline"]
