"""Refuse functions that reach outside the mesh: files, other databases, the server itself.

Queries are pushed down whole to sources, so a function one source's dialect offers (DuckDB's
``read_csv``, PostgreSQL's ``pg_read_file`` or ``dblink``, SQLite's ``load_extension``) would
otherwise run there with the gateway's credentials.  Table functions in FROM are refused
outright: every relation in a query must be a data product, a CTE, a subquery or VALUES.
"""

from __future__ import annotations

import re

from sqlglot import exp

from gateway.errors import InvalidQuery
from gateway.planner.context import PlanContext

_DENIED = re.compile(
    r"^(read_\w+|\w+_scan|glob|parquet_\w+|sniff_csv|pg_read_\w+|pg_ls_\w+|pg_stat_file|pg_file_\w+|lo_\w+"
    r"|dblink\w*|load_extension|readfile|writefile|edit|fts\d\w*|current_setting|set_config|pg_reload_conf"
    r"|pg_terminate_backend|pg_cancel_backend|pg_rotate_logfile|query_to_xml\w*|table_to_xml\w*|copy\w*"
    r"|install|load|attach|detach|getenv|duckdb_\w+|pragma_\w+|sqlite_\w+|system|shell)$"
)


def reject_unsafe_functions(expression: exp.Expression, ctx: PlanContext) -> exp.Expression:
    for table in expression.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise InvalidQuery(
                f"table functions are not allowed ('{table.this.sql('postgres')}'): "
                "query data products by name, domain.product"
            )
    for function in expression.find_all(exp.Func):
        name = function.name if isinstance(function, exp.Anonymous) else function.sql_name()
        if _DENIED.match(name.lower()):
            raise InvalidQuery(f"function {name.lower()}() is not allowed: it reaches outside the data mesh")
    return expression
