"""Row-filter text: which ``{user.attr}`` values it needs, and whether it is a plain predicate.

A filter is policy text, so it is parsed, never executed here: it must be one predicate over the
product's own columns (no sub-queries, no other tables), and its ``{user.attr}`` references are
returned so the engine binds them to the principal's values (the planner substitutes them as
typed literals, never as SQL text).
"""

from __future__ import annotations

import re
from typing import Iterable

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

USER_REFERENCE = re.compile(r"\{user\.([A-Za-z_][A-Za-z0-9_]*)\}")
_BRACE = re.compile(r"[{}]")


class FilterError(ValueError):
    """A row filter that cannot be enforced as written."""


def filter_references(text: str, columns: Iterable[str] | None = None) -> tuple[str, ...]:
    """The attribute names ``text`` references (``{user.region}`` -> ``region``), in order.

    Raises ``FilterError`` when the filter does not parse as one predicate, reads anything but
    the product's columns (``columns``, when given), or has a brace that is not a reference.
    """
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"__user_{match.group(1)}"

    replaced = USER_REFERENCE.sub(placeholder, text)
    if _BRACE.search(replaced):
        raise FilterError("a '{' or '}' that is not a {user.attribute} reference")
    try:
        predicates = sqlglot.parse(replaced, read="postgres")
    except SqlglotError as err:
        raise FilterError(f"does not parse: {str(err).splitlines()[0]}") from err
    if len(predicates) != 1 or predicates[0] is None:
        raise FilterError("must be exactly one predicate")
    predicate = predicates[0]
    if isinstance(predicate, (exp.Select, exp.Union, exp.Command)) or predicate.find(
        exp.Select, exp.Subquery, exp.Table, exp.Star
    ):
        raise FilterError("must be a predicate on the product's columns (no sub-queries or tables)")
    known = None if columns is None else set(columns)
    for column in predicate.find_all(exp.Column):
        if column.name.startswith("__user_"):
            continue
        if column.table:
            raise FilterError(f"column '{column.sql()}' is qualified; name the product's column alone")
        name = column.name if column.this.args.get("quoted") else column.name.lower()
        if known is not None and name not in known:
            raise FilterError(f"the product has no column '{name}'")
    return tuple(names)
