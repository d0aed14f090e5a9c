"""Policy unit tests written as YAML cases, run by ``meshgate policy test DIR``.

A case file (``*.yaml`` / ``*.yml``, found recursively under DIR, or one file)::

    principal: alice                  # optional default for the cases below
    cases:
      - name: alice sees only her region's customers, names redacted
        principal: {name: alice, roles: [analyst], attributes: {region: DE}}  # or a user name
        query: SELECT DISTINCT country, name FROM customers.customers
        expect:
          decision: allow             # allow | deny
          rows: [{country: DE, name: "[REDACTED]"}]  # mappings (or lists, in column order)
          ordered: false              # default: rows compare as a multiset
          row_count: 1
          contains_policy: global/governance.yaml#own-region   # or a list of ids

Every expectation given must hold. ``decision`` and ``contains_policy`` are checked against the
governance decisions without running the query; ``rows`` and ``row_count`` run it in-process
through the service, against the registry's real sources, as the case's principal. A principal
named by a string comes from the users file; ``anonymous`` is the unauthenticated principal.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gateway.errors import MeshError
from policies import ANONYMOUS, Principal

EXPECTATIONS = ("decision", "rows", "ordered", "row_count", "contains_policy")


class CaseFileError(ValueError):
    """A case file that cannot be run as written; the message names the file and the case."""


@dataclass(frozen=True)
class Case:
    file: Path
    index: int
    name: str
    principal: Any  # a user name or an inline {name, roles, attributes}
    query: str
    expect: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}: cases[{self.index}]"


@dataclass
class Outcome:
    case: Case
    principal: str
    passed: bool
    got: str  # what happened, in a few words
    problems: list[str] = field(default_factory=list)


def find_case_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CaseFileError(f"{path}: no such file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
    if not files:
        raise CaseFileError(f"{path}: no *.yaml case files")
    return files


def load_cases(path: Path) -> list[Case]:
    """Every case under ``path``; raises CaseFileError listing every problem found."""
    cases: list[Case] = []
    problems: list[str] = []
    for file in find_case_files(path):
        try:
            document = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            problems.append(f"{file}: cannot read: {err}")
            continue
        if not isinstance(document, dict) or not isinstance(document.get("cases"), list):
            problems.append(f"{file}: expected a mapping with cases: a list of cases")
            continue
        unknown = set(document) - {"cases", "principal", "description"}
        if unknown:
            problems.append(f"{file}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        default = document.get("principal")
        for index, item in enumerate(document["cases"]):
            where = f"{file}: cases[{index}]"
            if not isinstance(item, dict):
                problems.append(f"{where}: expected a mapping with name, principal, query, expect")
                continue
            extra = set(item) - {"name", "principal", "query", "expect", "expected"}
            if extra:
                problems.append(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}")
            query = item.get("query")
            if not isinstance(query, str) or not query.strip():
                problems.append(f"{where}.query: a SQL statement is required")
            principal = item.get("principal", default)
            if principal is None:
                problems.append(f"{where}.principal: required (a user name or {{name, roles, attributes}})")
            expect = item.get("expect", item.get("expected"))
            if not isinstance(expect, dict) or not expect:
                problems.append(f"{where}.expect: required, with decision, rows, row_count and/or contains_policy")
                continue
            bad = set(expect) - set(EXPECTATIONS)
            if bad:
                problems.append(f"{where}.expect: unknown key(s) {', '.join(sorted(map(str, bad)))} (known: {', '.join(EXPECTATIONS)})")
            if "decision" in expect and expect["decision"] not in ("allow", "deny"):
                problems.append(f"{where}.expect.decision: allow or deny, not {expect['decision']!r}")
            if "rows" in expect and not isinstance(expect["rows"], list):
                problems.append(f"{where}.expect.rows: a list of rows (mappings or lists)")
            if "row_count" in expect and (not isinstance(expect["row_count"], int) or isinstance(expect["row_count"], bool)):
                problems.append(f"{where}.expect.row_count: a whole number")
            policies = expect.get("contains_policy")
            if policies is not None and not (isinstance(policies, str) or (isinstance(policies, list) and all(isinstance(p, str) for p in policies))):
                problems.append(f"{where}.expect.contains_policy: a policy id or a list of them")
            if not set(expect) & {"decision", "rows", "row_count", "contains_policy"}:
                problems.append(f"{where}.expect: give decision, rows, row_count and/or contains_policy")
            name = str(item.get("name") or f"case {index + 1}")
            cases.append(Case(file, index, name, principal, str(query or ""), dict(expect)))
    if problems:
        raise CaseFileError("\n".join(problems))
    return cases


def principal_of(value: Any, users: Callable[[str], Principal | None] | None, where: str) -> Principal:
    """A case's principal: an inline mapping, or a name looked up with ``users``."""
    if isinstance(value, str):
        found = users(value) if users is not None else None
        if found is not None:
            return found
        if value == ANONYMOUS.name:
            return ANONYMOUS
        hint = "in the users file" if users is not None else "(no --users file given: describe it inline as {name, roles, attributes})"
        raise CaseFileError(f"{where}.principal: no user '{value}' {hint}")
    if isinstance(value, dict):
        unknown = set(value) - {"name", "roles", "attributes"}
        name, roles, attributes = value.get("name"), value.get("roles") or [], value.get("attributes") or {}
        if unknown or not isinstance(name, str) or not isinstance(roles, list) or not isinstance(attributes, dict):
            raise CaseFileError(f"{where}.principal: expected {{name, roles: [...], attributes: {{...}}}}")
        return Principal(name, frozenset(map(str, roles)), dict(attributes))
    raise CaseFileError(f"{where}.principal: a user name or {{name, roles, attributes}}")


def run_case(service: Any, case: Case, principal: Principal) -> Outcome:
    """Check one case against ``service`` (a ``GatewayService``)."""
    expect = case.expect
    problems: list[str] = []
    try:
        rewrite = service.rewrite(case.query, principal)
    except MeshError as err:
        return Outcome(case, principal.name, False, "error", [f"the query failed: {err.message}"])
    decision = "allow" if rewrite.allowed else "deny"
    got = decision
    if "decision" in expect and expect["decision"] != decision:
        reasons = "; ".join(r for p in rewrite.products for r in p.decision.reasons)
        problems.append(f"decision {decision}, expected {expect['decision']}" + (f" ({reasons})" if reasons else ""))
    wanted = expect.get("contains_policy")
    if wanted is not None:
        applied = {policy for p in rewrite.products for policy in p.decision.policies}
        for policy in [wanted] if isinstance(wanted, str) else wanted:
            if policy not in applied:
                problems.append(f"policy {policy} did not take part (applied: {', '.join(sorted(applied)) or 'none'})")
    if ("rows" in expect or "row_count" in expect) and rewrite.allowed:
        try:
            table = service.execute(case.query, principal).read_all()
        except MeshError as err:
            return Outcome(case, principal.name, False, "error", problems + [f"the query failed: {err.message}"])
        got += f", {table.num_rows} row{'s' if table.num_rows != 1 else ''}"
        if "row_count" in expect and expect["row_count"] != table.num_rows:
            problems.append(f"{table.num_rows} rows, expected {expect['row_count']}")
        if "rows" in expect:
            difference = compare_rows(expect["rows"], table, bool(expect.get("ordered", False)))
            if difference:
                problems.append(difference)
    elif "rows" in expect or "row_count" in expect:
        problems.append("rows were expected but the query is denied")
    return Outcome(case, principal.name, not problems, got, problems)


def compare_rows(expected: list[Any], table: Any, ordered: bool) -> str | None:
    """None when ``table`` (pyarrow) holds ``expected``; else the first difference, in words."""
    names = table.column_names
    actual = [tuple(row[i] for i in range(len(names))) for row in zip(*(c.to_pylist() for c in table.columns))] if names else []
    rows: list[tuple[Any, ...]] = []
    for i, row in enumerate(expected):
        if isinstance(row, dict):
            missing = [k for k in row if k not in names]
            if missing:
                return f"expected row {i} names column(s) {', '.join(missing)}; the result has {', '.join(names)}"
            rows.append(tuple(row.get(name, _ANY) for name in names))
        elif isinstance(row, list):
            if len(row) != len(names):
                return f"expected row {i} has {len(row)} values; the result has {len(names)} columns ({', '.join(names)})"
            rows.append(tuple(row))
        else:
            return f"expected row {i}: a mapping or a list, not {row!r}"
    if len(rows) != len(actual):
        return f"{len(actual)} rows, expected {len(rows)}" + (f"; first: {_show(names, actual[0])}" if actual else "")
    if not ordered:
        remaining = list(actual)
        for row in rows:
            match = next((j for j, candidate in enumerate(remaining) if _row_equal(row, candidate)), None)
            if match is None:
                return f"no result row matches expected {_show(names, row)}; got {', '.join(_show(names, r) for r in actual[:5])}"
            remaining.pop(match)
        return None
    for i, (row, candidate) in enumerate(zip(rows, actual)):
        if not _row_equal(row, candidate):
            return f"row {i}: got {_show(names, candidate)}, expected {_show(names, row)}"
    return None


class _Any:
    def __repr__(self) -> str:
        return "<any>"


_ANY = _Any()
"""A column a mapping row does not mention: any value matches."""


def _row_equal(expected: tuple[Any, ...], actual: tuple[Any, ...]) -> bool:
    return all(e is _ANY or _value_equal(e, a) for e, a in zip(expected, actual))


def _value_equal(expected: Any, actual: Any) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual if isinstance(expected, bool) and isinstance(actual, bool) else False
    if isinstance(expected, (int, float, decimal.Decimal)) and isinstance(actual, (int, float, decimal.Decimal)):
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, (dt.date, dt.datetime)) or isinstance(actual, (dt.date, dt.datetime)):
        return _iso(expected) == _iso(actual)
    return expected == actual or str(expected) == str(actual)


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _show(names: list[str], row: tuple[Any, ...]) -> str:
    return "{" + ", ".join(f"{n}: {v!r}" for n, v in zip(names, row) if v is not _ANY) + "}"
