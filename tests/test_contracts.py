"""Contract constraints: validated against their column's type, then run as ``error`` quality
gates at real SQLite, DuckDB and PostgreSQL sources."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import duckdb
import psycopg2
import pytest

from gateway.descriptor import load_file, validate
from gateway.errors import InvalidDescriptor
from gateway.quality import rules, run_gates
from gateway.sources import SourceManager

COLUMNS = [
    {"name": "id", "type": "int64", "primary_key": True},
    {"name": "email", "type": "string", "pattern": "^[^@]+@[^@]+$", "unique": True},
    {"name": "country", "type": "string", "required": True, "enum": ["DE", "FR"]},
    {"name": "amount", "type": "double", "min": 0, "max": 100},
    {"name": "ordered_on", "type": "date", "min": "2024-01-01"},
]
# Row 2 breaks every constraint once: a repeated id, a bad email (twice, so not unique), an
# unknown country, a negative amount, an early date. Row 3 is NULL everywhere (only the
# required and key rules see it).
ROWS = [
    (1, "ann@example.com", "DE", 10.0, "2024-01-05"),
    (1, "bad", "XX", -1.0, "2023-12-31"),
    (None, "bad", None, None, None),
]


def descriptor_doc(connector: str, uri: str, columns: list[dict] | None = None) -> dict:
    return {
        "apiVersion": "datamesh.io/v1",
        "kind": "DataProduct",
        "metadata": {"name": "orders", "domain": "sales", "owner": "sales@example.com", "version": "1.0.0"},
        "spec": {"source": {"connector": connector, "uri": uri, "table": "orders"},
                 "schema": copy.deepcopy(columns or COLUMNS)},
    }


def problems_of(columns: list[dict]) -> list[str]:
    with pytest.raises(InvalidDescriptor) as err:
        validate(descriptor_doc("sqlite", "x.sqlite", columns))
    return err.value.problems


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        ({"name": "flag", "type": "boolean", "enum": ["yes"]},
         "spec.schema[0].enum: not supported on a boolean column (only on string and numeric columns)"),
        ({"name": "code", "type": "string", "min": 1},
         "spec.schema[0].min: not supported on a string column (only on numbers, dates and timestamps; use pattern or enum for strings)"),
        ({"name": "code", "type": "string", "pattern": "([a-z"},
         "spec.schema[0].pattern: not a valid regular expression: unterminated character set at position 1"),
        ({"name": "n", "type": "int64", "min": 10, "max": 5},
         "spec.schema[0]: min (10) is greater than max (5); no value can pass"),
        ({"name": "d", "type": "date", "min": "2024-02-01", "max": "2024-01-31"},
         "spec.schema[0]: min ('2024-02-01') is greater than max ('2024-01-31'); no value can pass"),
        ({"name": "d", "type": "date", "max": "2024-13-01"},
         "spec.schema[0].max: '2024-13-01' is not a value of a date column (expected an ISO date like 2024-01-31)"),
        ({"name": "n", "type": "int32", "enum": [1, "two"]},
         "spec.schema[0].enum[1]: 'two' is not a value of an int32 column"),
        ({"name": "c", "type": "string", "enum": ["DE", "DE"]}, "spec.schema[0].enum[1]: duplicate value 'DE'"),
        ({"name": "c", "type": "string", "enum": []}, "spec.schema[0].enum: needs at least 1 item(s)"),
        ({"name": "n", "type": "int64", "pattern": "^1"}, "spec.schema[0].pattern: not supported on an int64 column (only on string columns)"),
        ({"name": "id", "type": "int64", "primary_key": True, "required": False},
         "spec.schema[0].required: a primary key column is always required; remove 'required: false'"),
        ({"name": "s", "type": "int64", "references": "segments.id"},
         "spec.schema[0].references: 'segments.id' is not a column of another product, domain.product.column"),
        ({"name": "e", "type": "string", "tags": ["PII"]},
         "spec.schema[0].tags: write 'pii: true' instead of a 'pii' tag (governance reads pii)"),
        ({"name": "e", "type": "string", "classification": "secret"},
         "spec.schema[0].classification: 'secret' is not one of public, internal, confidential, restricted"),
        ({"name": "b", "type": "binary", "max": 3},
         "spec.schema[0].max: not supported on a binary column (only on numbers, dates and timestamps; use pattern or enum for strings)"),
    ],
)
def test_malformed_constraints_are_refused_with_their_path(column: dict, problem: str) -> None:
    assert problem in problems_of([column])


def test_every_problem_is_listed_at_once() -> None:
    problems = problems_of([{"name": "flag", "type": "boolean", "enum": [True]}, {"name": "s", "type": "string", "max": 3}])
    assert "spec.schema[0].enum[0]: expected a scalar, got a boolean" in problems
    assert any(p.startswith("spec.schema[1].max: not supported") for p in problems)


def test_unquoted_yaml_dates_are_bounds_not_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(
        "apiVersion: datamesh.io/v1\nkind: DataProduct\n"
        "metadata: {name: o, domain: s, owner: o@example.com, version: 1.0.0}\n"
        "spec:\n  source: {connector: sqlite, uri: o.sqlite, table: o}\n"
        "  schema:\n    - {name: d, type: date, min: 2024-01-01, max: 2024-12-31}\n"
    )
    column = load_file(path).columns[0]
    assert (column.spec["min"], column.spec["max"]) == ("2024-01-01", "2024-12-31")


def test_contract_constraints_become_error_rules_named_by_column() -> None:
    d = validate(descriptor_doc("duckdb", "x.duckdb"))
    got = {(r.name, r.rule, r.severity, r.path) for r in rules(d)}
    assert got == {
        ("id.required", 'NOT "id" IS NULL', "error", "spec.schema[0].primary_key"),
        ("email.pattern", "\"email\" ~ '^[^@]+@[^@]+$'", "error", "spec.schema[1].pattern"),
        ("email.unique", "no two rows share email", "error", "spec.schema[1].unique"),
        ("country.required", 'NOT "country" IS NULL', "error", "spec.schema[2].required"),
        ("country.enum", "\"country\" IN ('DE', 'FR')", "error", "spec.schema[2].enum"),
        ("amount.min", '"amount" >= 0', "error", "spec.schema[3].min"),
        ("amount.max", '"amount" <= 100', "error", "spec.schema[3].max"),
        ("ordered_on.min", "\"ordered_on\" >= CAST('2024-01-01' AS DATE)", "error", "spec.schema[4].min"),
        ("primary_key(id)", "no two rows share (id)", "error", "spec.schema[0].primary_key"),
    }


def _gate_results(doc: dict, base_dir: Path) -> dict[str, tuple[int | None, bool, str]]:
    d = validate(doc, base_dir=base_dir)
    sources = SourceManager()
    try:
        results = run_gates(d, sources.connector_for(d))
    finally:
        sources.close()
    return {r.name: (r.failing_rows, r.blocks, r.skipped or r.error) for r in results}


EXPECTED = {
    "id.required": (1, True, ""),
    "email.unique": (2, True, ""),  # both 'bad' rows share a value
    "country.required": (1, True, ""),
    "country.enum": (1, True, ""),
    "amount.min": (1, True, ""),
    "amount.max": (0, False, ""),
    "ordered_on.min": (1, True, ""),
    "primary_key(id)": (2, True, ""),
}


def test_gates_run_at_sqlite_and_skip_the_pattern_with_a_reason(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "o.sqlite")
    conn.execute("CREATE TABLE orders (id INTEGER, email TEXT, country TEXT, amount REAL, ordered_on DATE)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ROWS)
    conn.commit()
    conn.close()
    got = _gate_results(descriptor_doc("sqlite", "o.sqlite"), tmp_path)
    assert got.pop("email.pattern") == (None, False, "not checkable on sqlite: it has no regular-expression match "
                                        "(the pattern is still part of the contract; check it where the data is written)")
    assert got == EXPECTED


def test_gates_run_at_duckdb_with_regexp_matches(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "o.duckdb"))
    conn.execute("CREATE TABLE orders (id BIGINT, email TEXT, country TEXT, amount DOUBLE, ordered_on DATE)")
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ROWS)
    conn.close()
    got = _gate_results(descriptor_doc("duckdb", "o.duckdb"), tmp_path)
    assert got.pop("email.pattern") == (2, True, "")
    assert got == EXPECTED


@pytest.mark.postgres
def test_gates_run_at_postgres_with_the_regex_operator(make_pg_database, tmp_path: Path) -> None:  # noqa: ANN001
    uri = make_pg_database("contracts")
    with psycopg2.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id bigint, email text, country text, amount double precision, ordered_on date)")
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s, %s, %s)", ROWS)
    conn.close()
    got = _gate_results(descriptor_doc("postgres", uri), tmp_path)
    assert got.pop("email.pattern") == (2, True, "")
    assert got == EXPECTED


def test_a_clean_source_passes_every_contract_rule(tmp_path: Path) -> None:
    conn = duckdb.connect(str(tmp_path / "o.duckdb"))
    conn.execute("CREATE TABLE orders (id BIGINT, email TEXT, country TEXT, amount DOUBLE, ordered_on DATE)")
    conn.execute("INSERT INTO orders VALUES (1, 'a@b.c', 'DE', 1, '2024-01-01'), (2, NULL, 'FR', NULL, NULL)")
    conn.close()
    got = _gate_results(descriptor_doc("duckdb", "o.duckdb"), tmp_path)
    assert all(failing == 0 and not blocks for failing, blocks, _ in got.values()), got


def test_product_check_reports_a_pattern_on_sqlite_as_skipped_not_failed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import yaml

    conn = sqlite3.connect(tmp_path / "o.sqlite")
    conn.execute("CREATE TABLE orders (id INTEGER, email TEXT)")
    conn.execute("INSERT INTO orders VALUES (1, 'not an email')")
    conn.commit()
    conn.close()
    doc = descriptor_doc("sqlite", "o.sqlite", [{"name": "id", "type": "int64"}, {"name": "email", "type": "string", "pattern": "@"}])
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "MESHGATE_HOME": str(tmp_path), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "product", "check", "o.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skip  email.pattern (error): not checked: not checkable on sqlite" in result.stdout
    assert "1 of 1 rule(s) without a blocking failure" in result.stdout
