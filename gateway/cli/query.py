"""``meshgate query``: run one statement against a gateway over ADBC and print the result."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rich.markup import escape
from rich.table import Table

from gateway.cli.common import DEFAULT_PORT, stderr, stdout


def add_commands(commands: argparse._SubParsersAction) -> None:
    query = commands.add_parser("query", help="run SQL against a gateway and print the result")
    query.add_argument("sql", help="the statement (PostgreSQL dialect)")
    query.add_argument("--server", default=f"grpc://127.0.0.1:{DEFAULT_PORT}", help="gateway URI (default grpc://127.0.0.1:32010)")
    query.add_argument("--format", choices=("table", "csv", "json", "arrow"), default="table")
    query.add_argument("--param", action="append", default=[], help="a parameter value for ? (repeatable; given as text)")
    query.add_argument("--user", help="log in as this user; the password is read from $MESHGATE_PASSWORD")

    query.set_defaults(handler=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    import warnings

    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_manager import Error as AdbcError

    # The gateway is read-only and has no transactions; the DB-API's autocommit warning is noise.
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")

    credentials = {}
    if args.user:
        if not os.environ.get("MESHGATE_PASSWORD"):
            stderr.print("[red]error:[/red] --user needs the password in the MESHGATE_PASSWORD environment variable")
            return 2
        credentials = {"username": args.user, "password": os.environ["MESHGATE_PASSWORD"]}
    started = time.perf_counter()
    try:
        with flightsql.connect(args.server, db_kwargs=credentials) as conn, conn.cursor() as cursor:
            cursor.execute(args.sql, args.param or None)
            table = cursor.fetch_arrow_table()
    except AdbcError as err:
        message = server_message(err)
        stderr.print(f"[red]error:[/red] {escape(message)}", markup=True)
        invalid = any(code in message for code in ("INVALID_ARGUMENT", "NOT_FOUND", "InvalidArgument", "NotFound"))
        return 2 if invalid else 1
    elapsed = time.perf_counter() - started
    _print_table(table, args.format)
    if args.format == "table":
        stderr.print(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}, {elapsed * 1000:.0f} ms)")
    return 0


def server_message(err: Exception) -> str:
    """The gateway's own message from an ADBC error, without what the transport wraps it in.

    pyarrow's Flight server appends ``". Detail: Python exception: <traceback>"`` to every
    message (gateway/flight/server.py, "Errors") and the driver prefixes ``[FlightSQL]``; a user
    needs neither, and the server's file paths are none of their business.
    """
    message = str(err).split(". Detail: ", 1)[0].splitlines()[0]
    return message.replace("[FlightSQL] ", "", 1)


def _print_table(table, fmt: str) -> None:  # noqa: ANN001
    import pyarrow as pa

    if fmt == "arrow":
        with pa.ipc.new_stream(sys.stdout.buffer, table.schema) as writer:
            writer.write_table(table)
        return
    if fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
        return
    rows = table.to_pylist()
    if fmt == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
        return
    view = Table(*table.column_names)
    for row in rows:
        view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
    stdout.print(view)

