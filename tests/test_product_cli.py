"""`meshgate product register/diff/validate/check` against real SQLite and DuckDB sources."""

from __future__ import annotations

import copy
import io
import sqlite3
from pathlib import Path

import duckdb
import pytest
import yaml

from gateway import cli
from gateway.cli import common
from gateway.registry import Registry


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def meshgate(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Run the CLI in-process with wide, captured consoles."""

    def run(*args: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        for console, file in ((common.stdout, out), (common.stderr, err)):
            monkeypatch.setattr(console, "file", file)
            monkeypatch.setattr(console, "width", 400)
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:
            code = int(exit_.code)
        return Run(code, out.getvalue(), err.getvalue())

    return run


def sqlite_source(path: Path, rows: list[tuple]) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER, customer TEXT, amount REAL, ordered_on DATE)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    return path


ROWS = [(1, "ann", 10.0, "2024-01-01"), (2, "bob", 250.0, "2024-01-02"), (3, None, 5.0, "2024-01-03")]

DESCRIPTOR = {
    "apiVersion": "datamesh.io/v1",
    "kind": "DataProduct",
    "metadata": {"name": "orders", "domain": "sales", "owner": "sales@example.com", "version": "1.0.0", "tags": ["pii"]},
    "spec": {
        "source": {"connector": "sqlite", "uri": "orders.sqlite", "table": "orders"},
        "schema": [
            {"name": "id", "type": "int64", "required": True, "primary_key": True},
            {"name": "customer", "type": "string", "pii": True},
            {"name": "amount", "type": "double"},
            {"name": "ordered_on", "type": "date"},
        ],
        "quality": [
            {"name": "id_present", "rule": "id IS NOT NULL", "severity": "error"},
            {"name": "small_orders", "rule": "amount < 100", "severity": "warning"},
        ],
    },
}


def write(folder: Path, name: str, version: str = "1.0.0", edit=None) -> Path:  # noqa: ANN001
    doc = copy.deepcopy(DESCRIPTOR)
    doc["metadata"]["version"] = version
    if edit:
        edit(doc)
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def column(doc: dict, name: str) -> dict:
    return next(c for c in doc["spec"]["schema"] if c["name"] == name)


@pytest.fixture
def product(tmp_path: Path) -> Path:
    sqlite_source(tmp_path / "orders.sqlite", ROWS)
    return write(tmp_path, "v1.yaml")


def test_register_runs_gates_and_prints_warnings(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    result = meshgate("product", "register", str(product), "--registry", str(tmp_path / "r.db"))
    assert result.code == 0, result.err
    assert "registered  sales.orders 1.0.0" in result.out
    assert "small_orders (warning): 1 of 3 row(s) fail `amount < 100`" in result.err
    assert [d.version for d in Registry(tmp_path / "r.db").versions("sales.orders")] == ["1.0.0"]


def test_register_refuses_breaking_change_in_same_major_listing_every_problem(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    registry = str(tmp_path / "r.db")
    assert meshgate("product", "register", str(product), "--registry", registry).code == 0

    def breaking(doc: dict) -> None:
        column(doc, "id")["type"] = "int32"
        del column(doc, "customer")["pii"]
        doc["spec"]["schema"] = [c for c in doc["spec"]["schema"] if c["name"] != "ordered_on"]

    bad = write(tmp_path, "v1_1.yaml", "1.1.0", breaking)
    result = meshgate("product", "register", str(bad), "--registry", registry)
    assert result.code == 2
    for expected in ("spec.schema.id.type: type narrowed from int64 to int32", "spec.schema.customer.pii: pii tag removed",
                     "spec.schema.ordered_on: column dropped", "publish it as 2.0.0"):
        assert expected in result.err
    assert "nothing was registered" in result.err
    assert [d.version for d in Registry(tmp_path / "r.db").versions("sales.orders")] == ["1.0.0"]

    major = write(tmp_path, "v2.yaml", "2.0.0", breaking)
    result = meshgate("product", "register", str(major), "--registry", registry)
    assert result.code == 0, result.err
    assert "new major" in result.out and "registered  sales.orders 2.0.0" in result.out

    compatible = write(tmp_path, "v1_2.yaml", "1.2.0", lambda d: d["spec"]["schema"].append({"name": "note", "type": "string"}))
    result = meshgate("product", "register", str(compatible), "--registry", registry)
    assert result.code == 2 and "spec.schema[4]: column 'note' is missing from the source" in result.err  # contract vs real table
    conn = sqlite3.connect(tmp_path / "orders.sqlite")
    conn.execute("ALTER TABLE orders ADD COLUMN note TEXT")
    conn.commit()
    conn.close()
    assert meshgate("product", "register", str(compatible), "--registry", registry).code == 0
    assert [d.version for d in Registry(tmp_path / "r.db").versions("sales.orders")] == ["2.0.0", "1.2.0", "1.0.0"]


def test_register_mode_none_accepts_anything(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    registry = str(tmp_path / "r.db")
    assert meshgate("product", "register", str(product), "--registry", registry).code == 0

    def loose(doc: dict) -> None:
        doc["spec"]["compatibility"] = "none"
        column(doc, "id")["type"] = "int32"

    assert meshgate("product", "register", str(write(tmp_path, "n.yaml", "1.1.0", loose)), "--registry", registry).code == 0


def test_failing_error_rule_blocks_publication(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    def strict(doc: dict) -> None:
        doc["spec"]["quality"].append({"name": "customer_known", "rule": "customer IS NOT NULL", "severity": "error"})
        doc["spec"]["quality"].append({"name": "positive", "rule": "amount > 0 AND ordered_on >= '2024-01-02'", "severity": "error"})

    bad = write(tmp_path, "strict.yaml", edit=strict)
    result = meshgate("product", "register", str(bad), "--registry", str(tmp_path / "r.db"))
    assert result.code == 2
    assert "spec.quality[2]: customer_known (error): 1 of 3 row(s) fail `customer IS NOT NULL`" in result.err
    assert "spec.quality[3]: positive (error): 1 of 3 row(s) fail" in result.err
    assert Registry(tmp_path / "r.db").versions("sales.orders") == []
    assert meshgate("product", "register", str(bad), "--skip-quality", "--registry", str(tmp_path / "r.db")).code == 0


def test_check_runs_rules_on_demand_for_a_file_or_a_registered_product(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    registry = str(tmp_path / "r.db")
    result = meshgate("product", "check", str(product))
    assert result.code == 0
    assert "pass  id_present (error): passed" in result.out
    assert "warn  small_orders (warning): 1 of 3 row(s) fail" in result.out
    assert meshgate("product", "register", str(product), "--registry", registry).code == 0
    conn = sqlite3.connect(tmp_path / "orders.sqlite")
    conn.execute("INSERT INTO orders VALUES (NULL, 'eve', 1.0, '2024-02-01')")  # the data went bad later
    conn.commit()
    conn.close()
    result = meshgate("product", "check", "sales.orders", "--registry", registry)
    assert result.code == 1
    assert "FAIL  id_present (error): 1 of 4 row(s) fail `id IS NOT NULL`" in result.out
    assert meshgate("product", "check", "sales.nothing", "--registry", registry).code == 2


def test_diff_marks_breaking_changes(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    registry = str(tmp_path / "r.db")
    assert "would be its first version" in meshgate("product", "diff", str(product), "--registry", registry).out
    assert meshgate("product", "register", str(product), "--registry", registry).code == 0

    def change(doc: dict) -> None:
        column(doc, "amount")["type"] = "float"
        doc["spec"]["schema"].append({"name": "note", "type": "string"})

    result = meshgate("product", "diff", str(write(tmp_path, "d.yaml", "1.1.0", change)), "--registry", registry)
    assert result.code == 0
    assert "sales.orders 1.0.0 -> 1.1.0 (compatibility: backward)" in result.out
    assert "BREAKING spec.schema.amount.type: type narrowed from double to float" in result.out
    assert "spec.schema.note: nullable column added (string)" in result.out
    assert "BREAKING spec.schema.note" not in result.out
    assert "register would refuse this; publish it as 2.0.0" in result.out
    gate = meshgate("product", "diff", str(write(tmp_path, "d.yaml", "1.1.0", change)), "--registry", registry, "--exit-code")
    assert gate.code == 1  # for CI: the change would be refused
    compatible = write(tmp_path, "ok.yaml", "1.1.0", lambda doc: doc["spec"]["schema"].append({"name": "note", "type": "string"}))
    assert meshgate("product", "diff", str(compatible), "--registry", registry, "--exit-code").code == 0


def test_validate_compares_the_real_table_with_the_contract(meshgate, product: Path, tmp_path: Path) -> None:  # noqa: ANN001
    result = meshgate("product", "validate", str(product))
    assert result.code == 0, result.err
    assert "source ok" in result.out

    def wrong(doc: dict) -> None:
        column(doc, "customer")["type"] = "int64"
        doc["spec"]["schema"].append({"name": "region", "type": "string"})

    result = meshgate("product", "validate", str(write(tmp_path, "w.yaml", edit=wrong)))
    assert result.code == 2
    assert "spec.schema[1].type: the source's 'customer' is string, which cannot be returned as int64" in result.err
    assert "spec.schema[4]: column 'region' is missing from the source" in result.err

    missing = write(tmp_path, "m.yaml", edit=lambda d: d["spec"]["source"].update(table="no_such_table"))
    result = meshgate("product", "validate", str(missing))
    assert result.code == 2 and "spec.source: cannot read the source" in result.err


def test_duckdb_source_types_and_gates(meshgate, tmp_path: Path) -> None:  # noqa: ANN001
    conn = duckdb.connect(str(tmp_path / "m.duckdb"))
    conn.execute("CREATE TABLE metrics (id INTEGER, measured_at TIMESTAMPTZ, value DECIMAL(10,2))")
    conn.execute("INSERT INTO metrics VALUES (1, '2024-01-01 00:00:00+00', 1.50), (2, '2024-01-02 00:00:00+00', -2.00)")
    conn.close()

    def duck(doc: dict) -> None:
        doc["metadata"]["name"] = "metrics"
        doc["spec"]["source"] = {"connector": "duckdb", "uri": "m.duckdb", "table": "metrics"}
        doc["spec"]["schema"] = [{"name": "id", "type": "int32"}, {"name": "measured_at", "type": "timestamptz"},
                                 {"name": "value", "type": "decimal(10,2)"}]
        doc["spec"]["quality"] = [{"name": "non_negative", "rule": "value >= 0", "severity": "error"}]

    good = write(tmp_path, "duck.yaml", edit=duck)
    assert meshgate("product", "validate", str(good)).code == 0
    result = meshgate("product", "register", str(good), "--registry", str(tmp_path / "r.db"))
    assert result.code == 2 and "non_negative (error): 1 of 2 row(s) fail `value >= 0`" in result.err

    def wrong_date(doc: dict) -> None:
        duck(doc)
        doc["spec"]["schema"][0]["type"] = "date"

    result = meshgate("product", "validate", str(write(tmp_path, "duck2.yaml", edit=wrong_date)))
    assert result.code == 2 and "spec.schema[0].type: the source's 'id' is int32, which cannot be returned as date" in result.err


def test_demo_products_validate_and_pass_their_error_gates(meshgate, live_mesh) -> None:  # noqa: ANN001
    files = sorted(live_mesh.mesh.products_dir.rglob("*.yaml"))
    assert files
    for file in files:
        result = meshgate("product", "validate", str(file), "--source-root", str(live_mesh.mesh.products_dir.parent),
                          "--registry", str(live_mesh.registry.path))  # derived products' inputs are registered there
        assert result.code == 0, (file, result.err)
    for product_id in live_mesh.registry.catalog(max_age=0).versions:
        result = meshgate("product", "check", product_id, "--registry", str(live_mesh.registry.path),
                          "--source-root", str(live_mesh.mesh.products_dir.parent))
        assert result.code == 0, (product_id, result.out)
        assert "could not run" not in result.out
