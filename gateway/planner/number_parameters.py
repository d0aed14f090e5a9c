"""Number the statement's parameters (``?`` in order, or ``$n``) so values bind by position."""

from __future__ import annotations

from sqlglot import exp

from gateway.errors import InvalidQuery
from gateway.planner.context import PlanContext


def number_parameters(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    positional = 0
    numbered: set[int] = set()
    for node in list(expression.walk(bfs=False)):
        if isinstance(node, exp.Placeholder) and not node.this:
            node.replace(exp.Placeholder(this=str(positional)))
            positional += 1
        elif isinstance(node, exp.Parameter) and node.name.isdigit():
            index = int(node.name) - 1
            numbered.add(index)
            node.replace(exp.Placeholder(this=str(index)))
    if positional and numbered:
        raise InvalidQuery("mix of ? and $n parameters in one statement; use one style")
    count = positional or (max(numbered) + 1 if numbered else 0)
    ctx.parameter_types = [None] * count  # type: ignore[list-item]  # filled by type_parameters
    return expression
