"""The ``meshgate`` command: serve the mesh, run the demo, query, register products.

Exit codes: 0 success, 1 a query or server failure, 2 bad input (usage, invalid descriptor,
invalid SQL) with a message on stderr saying what was wrong and where.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from gateway import __version__
from gateway.errors import InvalidDescriptor, MeshError

stderr = Console(stderr=True)
stdout = Console()

DEFAULT_PORT = 32010


def meshgate_home() -> Path:
    return Path(os.environ.get("MESHGATE_HOME", Path.home() / ".meshgate"))


def default_memory_limit() -> int:
    """A quarter of physical memory: room for the sources' drivers and several queries."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError):
        return 2 * 1024**3


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (examples: 512M, 4G, 1073741824)") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="A federated Flight SQL gateway for a data mesh.")
    parser.add_argument("--version", action="version", version=f"meshgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve registered data products over Arrow Flight SQL")
    _add_server_options(serve)
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Flight SQL port (default {DEFAULT_PORT})")
    serve.add_argument("--products", type=Path, action="append", default=[], help="register descriptors from this file or folder first (repeatable)")
    serve.add_argument("--insecure-no-auth", action="store_true", help="serve without authentication: every caller is 'anonymous'")
    serve.add_argument("--users", type=Path, help="users file (authentication; not available yet)")

    demo = commands.add_parser("demo", help="generate a sample mesh, register it and serve it on 127.0.0.1")
    _add_server_options(demo)
    demo.add_argument("--data-dir", type=Path, default=None, help="where the demo data goes (default $MESHGATE_HOME/demo)")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT)
    demo.add_argument("--scale", type=float, default=1.0, help="row-count multiplier (default 1.0: a few hundred thousand rows)")
    demo.add_argument("--postgres", default=os.environ.get("MESHGATE_DEMO_PG_URI"), help="PostgreSQL URI for the shipping domain (default $MESHGATE_DEMO_PG_URI; without it shipping is served from DuckDB)")
    demo.add_argument("--no-serve", action="store_true", help="generate and register only")

    query = commands.add_parser("query", help="run SQL against a gateway and print the result")
    query.add_argument("sql", help="the statement (PostgreSQL dialect)")
    query.add_argument("--server", default=f"grpc://127.0.0.1:{DEFAULT_PORT}", help="gateway URI (default grpc://127.0.0.1:32010)")
    query.add_argument("--format", choices=("table", "csv", "json", "arrow"), default="table")
    query.add_argument("--param", action="append", default=[], help="a parameter value for ? (repeatable; given as text)")

    product = commands.add_parser("product", help="manage data products").add_subparsers(dest="action", required=True)
    register = product.add_parser("register", help="validate descriptors and publish them (all or nothing)")
    register.add_argument("paths", type=Path, nargs="+", help="descriptor files or folders")
    register.add_argument("--registry", type=Path, default=None)
    listing = product.add_parser("list", help="list registered products and versions")
    listing.add_argument("--registry", type=Path, default=None)
    return parser


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, default=None, help="registry file (default $MESHGATE_HOME/registry.db)")
    parser.add_argument("--query-timeout", type=float, default=300.0, help="seconds before a query is cancelled (default 300)")
    parser.add_argument("--memory-limit", type=parse_size, default=default_memory_limit(), help="per-query memory limit (default: a quarter of RAM)")
    parser.add_argument("--max-concurrent-queries", type=int, default=8)
    parser.add_argument("--max-queued-queries", type=int, default=64)
    parser.add_argument("--grace-period", type=float, default=30.0, help="seconds running queries get to finish on SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "query":
            return cmd_query(args)
        if args.command == "product" and args.action == "register":
            return cmd_register(args)
        if args.command == "product" and args.action == "list":
            return cmd_list(args)
    except InvalidDescriptor as err:
        _print_descriptor_errors([err])
        return 2
    except MeshError as err:
        stderr.print(f"[red]error:[/red] {err.message}")
        return 2 if err.status in ("INVALID_ARGUMENT", "NOT_FOUND") else 1
    except KeyboardInterrupt:
        return 130
    return 2


# --- product registration --------------------------------------------------------------------


def _registry(path: Path | None):  # noqa: ANN202 - avoids importing the registry for --help
    from gateway.registry import Registry

    return Registry(path or meshgate_home() / "registry.db")


def load_descriptors(paths: list[Path]):  # noqa: ANN201
    """Validate every file; raise one error per bad file only after reading them all."""
    from gateway.descriptor import find_descriptor_files, load_file

    files = find_descriptor_files(paths)
    missing = [p for p in paths if not p.exists()]
    errors: list[InvalidDescriptor] = [InvalidDescriptor(str(p), ["no such file or directory"]) for p in missing]
    descriptors = []
    for file in files:
        if not file.exists():
            continue
        try:
            descriptors.append(load_file(file))
        except InvalidDescriptor as err:
            errors.append(err)
    if not files and not missing:
        errors.append(InvalidDescriptor(", ".join(map(str, paths)), ["no *.yaml descriptor files found"]))
    return descriptors, errors


def register_paths(registry, paths: list[Path]) -> list[tuple[str, str, str]]:  # noqa: ANN001
    descriptors, errors = load_descriptors(paths)
    if errors:
        _print_descriptor_errors(errors)
        raise SystemExit(2)
    return registry.register(descriptors)


def cmd_register(args: argparse.Namespace) -> int:
    registry = _registry(args.registry)
    for product_id, version, state in register_paths(registry, args.paths):
        stdout.print(f"{state:>10}  {product_id} {version}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    catalog = _registry(args.registry).catalog()
    table = Table("product", "versions", "source", "description")
    for product_id, versions in sorted(catalog.versions.items()):
        newest = versions[0]
        table.add_row(product_id, ", ".join(v.version for v in versions), newest.source.connector, newest.description)
    stdout.print(table)
    return 0


def _print_descriptor_errors(errors: list[InvalidDescriptor]) -> None:
    for err in errors:
        stderr.print(f"[red]invalid descriptor[/red] {err.source}:")
        for problem in err.problems:
            stderr.print(f"  - {problem}", markup=False)
    stderr.print(f"nothing was registered ({len(errors)} file(s) with errors)")


# --- serving ---------------------------------------------------------------------------------


def _service(args: argparse.Namespace, registry):  # noqa: ANN001, ANN202
    from gateway.service import GatewayService, Settings

    settings = Settings(
        query_timeout=args.query_timeout,
        memory_limit=args.memory_limit,
        max_concurrent_queries=args.max_concurrent_queries,
        max_queued_queries=args.max_queued_queries,
    )
    return GatewayService(registry, settings)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.users is not None:
        stderr.print("error: --users is not supported yet; start with --insecure-no-auth")
        return 2
    if not args.insecure_no_auth:
        stderr.print(
            "error: no --users file given. Authentication is required unless you pass --insecure-no-auth "
            "(every caller is then 'anonymous' with role 'public')."
        )
        return 2
    stderr.print("[yellow]WARNING: authentication is OFF (--insecure-no-auth): every caller is 'anonymous' with role 'public'[/yellow]")
    registry = _registry(args.registry)
    if args.products:
        for product_id, version, state in register_paths(registry, args.products):
            stderr.print(f"{state:>10}  {product_id} {version}")
    return _serve(_service(args, registry), args.host, args.port, args.grace_period)


def _serve(service, host: str, port: int, grace_period: float, banner: str = "") -> int:  # noqa: ANN001
    from gateway.flight.server import MeshFlightServer

    server = MeshFlightServer(f"grpc://{host}:{port}", service)
    stderr.print(f"meshgate {__version__} serving Flight SQL on grpc://{host}:{server.port}")
    if banner:
        stdout.print(banner, soft_wrap=True, highlight=False)  # SQL must stay copy-pasteable
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    stderr.print(f"shutting down: no new queries; running ones get up to {grace_period:g} s")
    started = time.monotonic()
    if not service.drain(grace_period):
        stderr.print("grace period over; exiting with queries still running")
    # Clients close their statements right after the last batch: give those calls a moment.
    time.sleep(max(0.0, min(1.0, grace_period - (time.monotonic() - started))))
    threading.Thread(target=server.shutdown, daemon=True).start()  # waits for in-flight calls
    time.sleep(0.2)
    service.close()
    stderr.print("stopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo_data import generate_demo_mesh

    data_dir = args.data_dir or meshgate_home() / "demo"
    mesh = generate_demo_mesh(data_dir, scale=args.scale, postgres_uri=args.postgres, progress=True)
    for note in mesh.notes:
        stderr.print(f"[yellow]note:[/yellow] {note}")
    registry = _registry(args.registry or data_dir / "registry.db")
    register_paths(registry, [mesh.products_dir])
    stderr.print(f"registered {len(registry.catalog().versions)} products from {mesh.products_dir}")
    if args.no_serve:
        return 0
    return _serve(_service(args, registry), "127.0.0.1", args.port, args.grace_period, _demo_banner(args.port, mesh))


def _demo_banner(port: int, mesh) -> str:  # noqa: ANN001
    examples = "\n\n".join(f"-- {title}\n{sql}" for title, sql in mesh.example_queries)
    return f"""
[bold]The demo mesh is live[/bold] (domains: {', '.join(mesh.domains)}). Connect with:
  ADBC URI   grpc://127.0.0.1:{port}
  JDBC URL   jdbc:arrow-flight-sql://127.0.0.1:{port}/?useEncryption=false
  CLI        meshgate query --server grpc://127.0.0.1:{port} "SHOW TABLES"
  pyarrow    import adbc_driver_flightsql.dbapi as f
             cur = f.connect("grpc://127.0.0.1:{port}").cursor()
             cur.execute("SELECT * FROM orders.orders LIMIT 5"); print(cur.fetch_arrow_table())

Example cross-domain queries:

{examples}

Press Ctrl-C to stop."""


# --- querying --------------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    import warnings

    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_manager import Error as AdbcError

    # The gateway is read-only and has no transactions; the DB-API's autocommit warning is noise.
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")

    started = time.perf_counter()
    try:
        with flightsql.connect(args.server) as conn, conn.cursor() as cursor:
            cursor.execute(args.sql, args.param or None)
            table = cursor.fetch_arrow_table()
    except AdbcError as err:
        message = str(err).splitlines()[0]
        stderr.print(f"[red]error:[/red] {message}", markup=True)
        invalid = any(code in message for code in ("INVALID_ARGUMENT", "NOT_FOUND", "InvalidArgument", "NotFound"))
        return 2 if invalid else 1
    elapsed = time.perf_counter() - started
    _print_table(table, args.format)
    if args.format == "table":
        stderr.print(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''}, {elapsed * 1000:.0f} ms)")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
