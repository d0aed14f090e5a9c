"""Quality gates: a contract's ``spec.quality`` rules run at the source, pushed down as SQL.

Each rule is a PostgreSQL-dialect predicate every row must satisfy; the gate counts the rows
that do not (``SELECT count(*) FROM relation WHERE NOT (rule)``), transpiled by sqlglot into the
source's dialect through ``connector.render`` so no rows travel. A NULL rule result counts as
passing, as in a SQL CHECK constraint. ``error`` failures block publication; ``warning`` ones
are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from connectors.base import Connector
from gateway.descriptor import Descriptor
from gateway.errors import MeshError


@dataclass(frozen=True)
class RuleResult:
    name: str
    rule: str
    severity: str  # error | warning
    failing_rows: int | None  # None: the rule could not run (see ``error``)
    total_rows: int | None = None
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.failing_rows == 0 and not self.error

    @property
    def blocks(self) -> bool:
        """Does this result stop publication? An error rule that fails or cannot run."""
        return self.severity == "error" and not self.passed

    def describe(self) -> str:
        if self.error:
            return f"{self.name} ({self.severity}): could not run: {self.error}"
        if self.passed:
            return f"{self.name} ({self.severity}): passed"
        of = f" of {self.total_rows}" if self.total_rows is not None else ""
        return f"{self.name} ({self.severity}): {self.failing_rows}{of} row(s) fail `{self.rule}`"


def rules(descriptor: Descriptor) -> list[dict]:
    return list(descriptor.raw.get("spec", {}).get("quality") or [])


def failing_rows_sql(descriptor: Descriptor, connector: Connector, rule: str) -> str:
    """The count query for one rule, in the source's dialect."""
    predicate = sqlglot.parse_one(rule, read="postgres")
    relation = connector.relation(descriptor.source.table, descriptor.source.query)
    select = (
        exp.select(exp.Count(this=exp.Star()).as_("failing"))
        .from_(relation.copy())
        .where(exp.Not(this=exp.Paren(this=predicate)))
    )
    return connector.render(select)


def run_gates(descriptor: Descriptor, connector: Connector) -> list[RuleResult]:
    """Run every quality rule of ``descriptor`` at its source; one result per rule."""
    results = []
    total: int | None = None
    try:
        total = connector.row_count(descriptor.source.table, descriptor.source.query) if rules(descriptor) else None
    except MeshError:
        total = None
    for rule in rules(descriptor):
        name, text, severity = rule["name"], rule["rule"], rule.get("severity", "error")
        try:
            scan = connector.scan(failing_rows_sql(descriptor, connector, text))
            try:
                failing = int(scan.reader.read_all().column(0)[0].as_py() or 0)
            finally:
                scan.close()
            results.append(RuleResult(name, text, severity, failing, total))
        except (MeshError, sqlglot.errors.SqlglotError) as err:
            message = err.message if isinstance(err, MeshError) else str(err).splitlines()[0]
            results.append(RuleResult(name, text, severity, None, total, message))
    return results
