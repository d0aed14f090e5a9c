"""Quality gates: a product's rules run at the source, pushed down as SQL.

Two kinds of rules run:

- the descriptor's ``spec.quality`` rules: PostgreSQL-dialect predicates every row must satisfy,
  ``error`` or ``warning`` severity as declared;
- the *contract's* constraints, turned into rules of ``error`` severity (``contract_rules``):
  ``required`` and ``primary_key`` become ``IS NOT NULL``, ``enum`` an ``IN`` list, ``min`` and
  ``max`` comparisons, ``pattern`` a regular-expression match, and ``primary_key`` and
  ``unique`` a check that no key value repeats. A contract is a promise to consumers, so a
  source that breaks it blocks publication like any failing error rule.

A predicate rule counts the rows that fail it (``SELECT count(*) FROM relation WHERE NOT
(rule)``); a uniqueness rule counts the rows whose key occurs more than once. Both are
transpiled by sqlglot into the source's dialect through ``connector.render`` so no rows travel.
A NULL predicate result counts as passing, as in a SQL CHECK constraint. A rule the source
cannot evaluate (a pattern on SQLite, which has no REGEXP function by default) is *skipped*:
it is reported as a warning naming the reason and never blocks, because failing to check is
not evidence that the data is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import sqlglot
from sqlglot import exp

from connectors.base import Connector
from gateway.descriptor import Column, Descriptor
from gateway.errors import MeshError


@dataclass(frozen=True)
class Rule:
    """One check a gate runs. ``rule`` is a PostgreSQL predicate every row must satisfy, unless
    ``unique`` names columns whose value combination must not repeat (then ``rule`` says so in
    words). ``path`` is where the rule was declared, for error messages; ``needs`` names a
    source capability the check depends on (``regex``), empty when every SQL source has it."""

    name: str
    rule: str
    severity: str  # error | warning
    path: str
    unique: tuple[str, ...] = ()
    needs: str = ""


@dataclass(frozen=True)
class RuleResult:
    name: str
    rule: str
    severity: str  # error | warning
    failing_rows: int | None  # None: the rule could not run (see ``error``) or was skipped
    total_rows: int | None = None
    error: str = ""
    path: str = ""  # where the rule was declared (spec.quality[1], spec.schema[2].enum)
    skipped: str = ""  # why the source cannot check this rule; a skipped rule never blocks

    @property
    def passed(self) -> bool:
        return self.failing_rows == 0 and not self.error and not self.skipped

    @property
    def blocks(self) -> bool:
        """Does this result stop publication? An error rule that fails or cannot run (a skipped
        rule does not: the source cannot express it, which says nothing about the data)."""
        return self.severity == "error" and not self.passed and not self.skipped

    def describe(self) -> str:
        if self.skipped:
            return f"{self.name} ({self.severity}): not checked: {self.skipped}"
        if self.error:
            return f"{self.name} ({self.severity}): could not run: {self.error}"
        if self.passed:
            return f"{self.name} ({self.severity}): passed"
        of = f" of {self.total_rows}" if self.total_rows is not None else ""
        return f"{self.name} ({self.severity}): {self.failing_rows}{of} row(s) fail `{self.rule}`"

    def to_json(self) -> dict[str, Any]:
        """What the registry stores per rule (``Registry.record_quality``)."""
        return {"name": self.name, "rule": self.rule, "severity": self.severity, "passed": self.passed,
                "failing_rows": self.failing_rows, "total_rows": self.total_rows, "error": self.error,
                "path": self.path, "skipped": self.skipped}


def score(results: Iterable[dict[str, Any]]) -> float:
    """The quality score of one run: the share of rules that passed, each rule counting the same
    whatever its severity (a failing warning lowers it as much as a failing error); a rule that
    could not run has not passed; a skipped rule (the source cannot express it) does not count.
    No rules: 1.0."""
    rows = [r for r in results if not r.get("skipped")]
    return sum(1 for r in rows if r.get("passed")) / len(rows) if rows else 1.0


def unreachable(descriptor: Descriptor, reason: str) -> list[RuleResult]:
    """Every rule of ``descriptor`` as not run because its source could not be reached: a gate
    that cannot run fails (an ``error`` rule then blocks publication: fail closed)."""
    return [RuleResult(r.name, r.rule, r.severity, None, None, reason, path=r.path) for r in rules(descriptor)]


def rules(descriptor: Descriptor) -> list[Rule]:
    """Every rule a gate runs for ``descriptor``: its declared quality rules, then the rules its
    contract's constraints imply."""
    declared = [
        Rule(r["name"], r["rule"], r.get("severity", "error"), f"spec.quality[{i}]")
        for i, r in enumerate(descriptor.raw.get("spec", {}).get("quality") or [])
    ]
    return declared + contract_rules(descriptor)


def contract_rules(descriptor: Descriptor) -> list[Rule]:
    """The contract's column constraints as ``error`` rules, named ``<column>.<constraint>`` and
    ``primary_key(<columns>)``: a declared rule's name has no dot or parenthesis, so the two
    never collide."""
    out: list[Rule] = []
    for i, column in enumerate(descriptor.columns):
        out.extend(_column_rules(column, f"spec.schema[{i}]"))
    key = tuple(c.name for c in descriptor.columns if c.primary_key)
    if key:
        first = next(i for i, c in enumerate(descriptor.columns) if c.primary_key)
        out.append(Rule(f"primary_key({','.join(key)})", f"no two rows share ({', '.join(key)})", "error",
                        f"spec.schema[{first}].primary_key", unique=key))
    return out


def _column_rules(column: Column, path: str) -> list[Rule]:
    name, ref = column.name, exp.column(column.name, quoted=True)
    out = []
    if column.required or column.primary_key:
        where = "required" if column.required else "primary_key"
        out.append(_predicate(f"{name}.required", exp.Is(this=ref.copy(), expression=exp.Null()).not_(), f"{path}.{where}"))
    if "enum" in column.spec:
        values = [_literal(v, column) for v in column.spec["enum"]]
        out.append(_predicate(f"{name}.enum", exp.In(this=ref.copy(), expressions=values), f"{path}.enum"))
    if "min" in column.spec:
        out.append(_predicate(f"{name}.min", exp.GTE(this=ref.copy(), expression=_literal(column.spec["min"], column)), f"{path}.min"))
    if "max" in column.spec:
        out.append(_predicate(f"{name}.max", exp.LTE(this=ref.copy(), expression=_literal(column.spec["max"], column)), f"{path}.max"))
    if "pattern" in column.spec:
        match = exp.RegexpLike(this=ref.copy(), expression=exp.Literal.string(column.spec["pattern"]))
        out.append(_predicate(f"{name}.pattern", match, f"{path}.pattern", needs="regex"))
    if column.spec.get("unique") and not column.primary_key:
        out.append(Rule(f"{name}.unique", f"no two rows share {name}", "error", f"{path}.unique", unique=(name,)))
    return out


def _predicate(name: str, condition: exp.Expression, path: str, needs: str = "") -> Rule:
    return Rule(name, condition.sql(dialect="postgres"), "error", path, needs=needs)


def _literal(value: Any, column: Column) -> exp.Expression:
    """A constraint value as a literal of the column's type: dates and timestamps as typed
    literals (``DATE '2024-01-01'``) so they compare as values, not as text."""
    family = column.type.family
    if family in ("date", "timestamp"):
        return exp.cast(exp.Literal.string(str(value)), column.type.sql)
    if isinstance(value, str):
        return exp.Literal.string(value)
    return exp.Literal.number(value)


def failing_rows_sql(descriptor: Descriptor, connector: Connector, rule: Rule) -> str:
    """The count query for one rule, in the source's dialect: rows failing a predicate, or rows
    whose key occurs more than once for a uniqueness rule."""
    relation = connector.relation(descriptor.source.table, descriptor.source.query)
    if rule.unique:
        key = [exp.column(c, quoted=True) for c in rule.unique]
        groups = (
            exp.select(exp.Count(this=exp.Star()).as_("n"))
            .from_(relation.copy())
            .where(exp.and_(*(exp.Is(this=k.copy(), expression=exp.Null()).not_() for k in key)))
            .group_by(*key)
            .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1)))
        )
        select = exp.select(exp.func("coalesce", exp.Sum(this=exp.column("n")), exp.Literal.number(0)).as_("failing")).from_(
            groups.subquery("_dup"))
        return connector.render(select)
    predicate = sqlglot.parse_one(rule.rule, read="postgres")
    select = (
        exp.select(exp.Count(this=exp.Star()).as_("failing"))
        .from_(relation.copy())
        .where(exp.Not(this=exp.Paren(this=predicate)))
    )
    return connector.render(select)


def _unsupported(rule: Rule, connector: Connector) -> str:
    """Why ``connector``'s source cannot check ``rule``, or '' when it can."""
    if rule.needs == "regex" and not connector.capabilities.regex:
        return (f"not checkable on {connector.kind}: it has no regular-expression match "
                f"(the pattern is still part of the contract; check it where the data is written)")
    return ""


def run_gates(descriptor: Descriptor, connector: Connector) -> list[RuleResult]:
    """Run every rule of ``descriptor`` (declared and contract) at its source; one result per rule."""
    all_rules = rules(descriptor)
    results = []
    total: int | None = None
    try:
        total = connector.row_count(descriptor.source.table, descriptor.source.query) if all_rules else None
    except MeshError:
        total = None
    for rule in all_rules:
        reason = _unsupported(rule, connector)
        if reason:
            results.append(RuleResult(rule.name, rule.rule, rule.severity, None, total, path=rule.path, skipped=reason))
            continue
        try:
            scan = connector.scan(failing_rows_sql(descriptor, connector, rule))
            try:
                failing = int(scan.reader.read_all().column(0)[0].as_py() or 0)
            finally:
                scan.close()
            results.append(RuleResult(rule.name, rule.rule, rule.severity, failing, total, path=rule.path))
        except (MeshError, sqlglot.errors.SqlglotError) as err:
            message = err.message if isinstance(err, MeshError) else str(err).splitlines()[0]
            results.append(RuleResult(rule.name, rule.rule, rule.severity, None, total, message, path=rule.path))
    return results
