"""``meshgate policy check`` and ``meshgate policy test``, run as processes over the live demo mesh's
registry (its real sources) under ``tests/policies/governed``.

check: the decision per product and the governed query, without running it; exit 0 allowed,
1 denied, 2 bad input. test: the YAML cases in ``tests/data/policy_cases`` must all pass, a
wrong expectation fails the run (exit 1), a malformed case file is bad input (exit 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from gateway.users import add_user
from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres

MESHGATE = [sys.executable, "-m", "gateway.cli"]
POLICIES = Path(__file__).parent / "policies" / "governed"
CASES = Path(__file__).parent / "data" / "policy_cases"
ENV = {**os.environ, "COLUMNS": "200"}


def meshgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHGATE, *args], capture_output=True, text=True, timeout=120, env=ENV)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy-cli") / "users.yaml"
    add_user(path, "alice", "alice-pw", ["analyst"], {"region": "DE", "only_succeeded": True})
    add_user(path, "bob", "bob-pw", ["analyst"], {"region": "US", "only_succeeded": False})
    return path


def check(live_mesh: LiveMesh, users: Path, user: str, query: str, *extra: str) -> subprocess.CompletedProcess:
    return meshgate("policy", "check", "--user", user, "--query", query, "--users", str(users),
                    "--registry", str(live_mesh.registry.path), "--policies", str(POLICIES), *extra)


# --- policy check ---------------------------------------------------------------------------------


def test_check_prints_decisions_and_the_governed_query(live_mesh: LiveMesh, users: Path) -> None:
    result = check(live_mesh, users, "alice",
                   "SELECT c.country, count(*) FROM customers.customers c JOIN orders.orders o USING (customer_id) GROUP BY 1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "principal alice (roles: analyst; attributes: region=DE, only_succeeded=True)" in out
    assert "customers.customers@1.0.0: allow" in out and "orders.orders@1.0.0: allow" in out
    assert "mask    name: redact (global/governance.yaml#customer-names)" in out
    assert "filter  country = 'DE' (global/governance.yaml#own-region)" in out
    assert "at least 5 rows" in out
    governed = out.split("governed query:", 1)[1]
    assert "'[REDACTED]' AS \"name\"" in governed
    assert "\"customers\".\"country\" = 'DE'" in governed
    assert "HAVING\n  COUNT(*) >= 5" in governed
    assert "FROM \"customers\".\"customers\"" in governed and "__p" not in governed


def test_the_governed_query_runs_in_postgresql_and_returns_what_the_gateway_returns(live_mesh: LiveMesh, users: Path) -> None:
    """The printed SQL is real PostgreSQL: run on the oracle database (same data), it gives what
    the gateway gives alice, so it is the query that is actually enforced."""
    query = "SELECT name, email, country FROM customers.customers WHERE email LIKE '%.com' ORDER BY customer_id LIMIT 5"
    result = check(live_mesh, users, "bob", query, "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["decision"] == "allow" and document["principal"]["name"] == "bob"
    (product,) = document["products"]
    assert product["transformations"]["row_filters"][0]["bound_values"] == {"user.region": "US"}
    conn = psycopg2.connect(live_mesh.oracle_uri)
    try:
        with conn.cursor() as cur:
            cur.execute(document["governed_query"])
            rows = cur.fetchall()
    finally:
        conn.close()
    assert rows and all(name == "[REDACTED]" and email.startswith("***@") and country == "US" for name, email, country in rows)


def test_check_a_denied_query_exits_1_naming_the_policy(live_mesh: LiveMesh, users: Path) -> None:
    result = check(live_mesh, users, "alice", "SELECT * FROM orders.orders o WHERE EXISTS (SELECT 1 FROM shipping.carriers)")
    assert result.returncode == 1, result.stderr
    assert "shipping.carriers@1.0.0: deny" in result.stdout
    assert "global/governance.yaml#deny-carriers: carriers are confidential" in result.stdout
    assert "orders.orders@1.0.0: allow" in result.stdout
    assert "governed query" not in result.stdout and "PERMISSION_DENIED" in result.stdout
    document = json.loads(check(live_mesh, users, "alice", "SELECT * FROM shipping.carriers", "--format", "json").stdout)
    assert document["decision"] == "deny" and document["governed_query"] is None
    assert document["products"][0]["policies_applied"][0]["policy_id"] == "global/governance.yaml#deny-carriers"


def test_check_without_a_users_file(live_mesh: LiveMesh) -> None:
    base = ["policy", "check", "--registry", str(live_mesh.registry.path), "--policies", str(POLICIES)]
    inline = meshgate(*base, "--user", "eve", "--role", "analyst", "--attr", "region=FR", "--attr", "only_succeeded=true",
                      "--query", "SELECT DISTINCT succeeded FROM payments.payments")
    assert inline.returncode == 0, inline.stderr
    governed = inline.stdout.split("governed query:")[1]
    assert '"payments"."succeeded" = TRUE' in governed and 'MD5(CAST("payments"."method" AS TEXT)) AS "method"' in governed
    anonymous = meshgate(*base, "--user", "anonymous", "--query", "SELECT * FROM customers.customers")
    assert anonymous.returncode == 1  # anonymous has no region: the row filter denies (fail closed)
    assert "region" in anonymous.stdout
    unknown = meshgate(*base, "--user", "eve", "--query", "SELECT 1")
    assert unknown.returncode == 2 and "who is 'eve'" in unknown.stderr


@pytest.mark.parametrize(
    ("user", "query", "message"),
    [
        ("alice", "SELEC 1", "syntax error"),
        ("alice", "SELECT * FROM customers.custmers", "did you mean customers.customers"),
        ("alice", "DELETE FROM orders.orders", ""),
        ("mallory", "SELECT 1", "no user 'mallory'"),
    ],
)
def test_check_bad_input_exits_2(live_mesh: LiveMesh, users: Path, user: str, query: str, message: str) -> None:
    result = check(live_mesh, users, user, query)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr


def test_check_with_a_broken_policy_directory_exits_2(live_mesh: LiveMesh, users: Path, tmp_path: Path) -> None:
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "bad.yaml").write_text("access:\n  - {id: x, effect: maybe}\n")
    result = meshgate("policy", "check", "--user", "alice", "--query", "SELECT 1", "--users", str(users),
                      "--registry", str(live_mesh.registry.path), "--policies", str(tmp_path))
    assert result.returncode == 2 and "bad.yaml" in result.stderr


# --- policy test ----------------------------------------------------------------------------------


def test_the_example_cases_pass(live_mesh: LiveMesh, tmp_path: Path) -> None:
    result = meshgate("policy", "test", str(CASES), "--registry", str(live_mesh.registry.path), "--policies", str(POLICIES),
                      "--audit-log", str(tmp_path / "audit.log"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed, 0 failed" in result.stdout
    assert result.stdout.count("PASS") == 9 and "FAIL" not in result.stdout
    # the queries with expected rows really ran, as their principals, and were audited
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert {"alice", "bob"} <= {r["principal"]["name"] for r in records if r.get("type") == "query"}


def test_failing_cases_fail_the_run(live_mesh: LiveMesh, users: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        """
cases:
  - name: bob sees his region
    principal: bob
    query: SELECT DISTINCT country FROM customers.customers
    expect: {decision: allow, rows: [{country: US}]}
  - name: wrong region expected
    principal: alice
    query: SELECT DISTINCT country FROM customers.customers
    expect: {rows: [[US]]}
  - name: carriers allowed (wrong)
    principal: alice
    query: SELECT * FROM shipping.carriers
    expect: {decision: allow}
  - name: a policy that is not there
    principal: {name: zed, roles: [analyst], attributes: {region: DE}}
    query: SELECT count(*) FROM orders.orders
    expect: {contains_policy: global/governance.yaml#own-region}
  - name: an unknown product
    principal: anonymous
    query: SELECT * FROM nope.nope
    expect: {decision: deny}
"""
    )
    result = meshgate("policy", "test", str(cases), "--users", str(users), "--registry", str(live_mesh.registry.path),
                      "--policies", str(POLICIES), "--audit-log", str(tmp_path / "audit.log"))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "1 passed, 4 failed" in out
    assert "no result row matches expected {country: 'US'}; got {country: 'DE'}" in out
    assert "decision deny, expected allow (global/governance.yaml#deny-carriers: carriers are confidential)" in out
    assert "policy global/governance.yaml#own-region did not take part" in out
    assert "the query failed: unknown data product 'nope.nope'" in out
    assert f"FAIL {cases}: cases[1] wrong region expected" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cases:\n  - {name: a, principal: alice, expect: {decision: allow}}\n", "cases[0].query: a SQL statement is required"),
        ("cases:\n  - {name: a, principal: alice, query: SELECT 1, expect: {decision: maybe}}\n", "expect.decision: allow or deny"),
        ("cases:\n  - {name: a, principal: alice, query: SELECT 1, expect: {colour: red}}\n", "unknown key(s) colour"),
        ("cases:\n  - {name: a, query: SELECT 1, expect: {decision: allow}}\n", "cases[0].principal: required"),
        ("cases:\n  - {name: a, principal: nobody, query: SELECT 1, expect: {decision: allow}}\n", "no user 'nobody'"),
        ("just: text\n", "expected a mapping with cases"),
        ("cases: [\n", "cannot read"),
    ],
)
def test_malformed_case_files_exit_2(live_mesh: LiveMesh, users: Path, tmp_path: Path, text: str, message: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(text)
    result = meshgate("policy", "test", str(cases), "--users", str(users), "--registry", str(live_mesh.registry.path),
                      "--policies", str(POLICIES))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and str(cases) in result.stderr


def test_an_empty_folder_is_bad_input(tmp_path: Path) -> None:
    result = meshgate("policy", "test", str(tmp_path), "--registry", str(tmp_path / "r.db"))
    assert result.returncode == 2 and "no *.yaml case files" in result.stderr
