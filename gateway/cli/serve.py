"""``meshgate serve`` and ``meshgate demo``: run the Flight SQL server and the REST API until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from pathlib import Path

from rich.markup import escape

from gateway import __version__
from gateway.cli.common import (
    DEFAULT_HTTP_PORT,
    DEFAULT_PORT,
    default_memory_limit,
    load_descriptors,
    meshgate_home,
    open_registry,
    parse_size,
    print_descriptor_errors,
    source_roots,
    stderr,
    stdout,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve registered data products over Arrow Flight SQL")
    _add_server_options(serve)
    serve.add_argument("--host", default=None,
                       help="address to bind (default 0.0.0.0; with --insecure-no-auth 127.0.0.1, so an open gateway is not on the network by accident)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Flight SQL port (default {DEFAULT_PORT})")
    serve.add_argument("--http-host", default=None, help="address the REST API binds (default: --host)")
    serve.add_argument("--products", type=Path, action="append", default=[], help="register descriptors from this file or folder first (repeatable)")
    serve.add_argument("--insecure-no-auth", action="store_true", help="serve without authentication: every caller is 'anonymous'")
    serve.add_argument("--users", type=Path, help="users file: turns authentication on (write it with `meshgate user add`); re-read when it changes")
    serve.add_argument("--token-ttl", type=float, default=3600.0, help="seconds a login's bearer token stays valid (default 3600)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate (chain) of the server: serve grpc+tls:// (needs --tls-key)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: mutual TLS, clients must present a certificate it signed")

    demo = commands.add_parser("demo", help="generate a sample mesh, register it and serve it on 127.0.0.1")
    _add_server_options(demo)
    demo.add_argument("--data-dir", type=Path, default=None, help="where the demo data goes (default $MESHGATE_HOME/demo)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to bind, Flight SQL and REST (default 127.0.0.1; 0.0.0.0 in a container)")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT)
    demo.add_argument("--scale", type=float, default=1.0, help="row-count multiplier (default 1.0: a few hundred thousand rows)")
    demo.add_argument("--postgres", default=os.environ.get("MESHGATE_DEMO_PG_URI"), help="PostgreSQL URI for the shipping domain (default $MESHGATE_DEMO_PG_URI; without it shipping is served from DuckDB)")
    demo.add_argument("--no-serve", action="store_true", help="generate and register only")

    serve.set_defaults(handler=cmd_serve)
    demo.set_defaults(handler=cmd_demo)


def _http_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 turns the REST API off)")
    return port


def _redis_uri(text: str) -> str:
    from gateway.redis_tier import check_uri

    try:
        return check_uri(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--cache {text}: ")) from None


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-port", type=_http_port, default=None,
                        help=f"REST API port (default {DEFAULT_HTTP_PORT}, skipped with a warning if taken; 0: no REST API)")
    parser.add_argument("--registry", type=Path, default=None, help="registry file (default $MESHGATE_HOME/registry.db)")
    parser.add_argument("--query-timeout", type=float, default=300.0, help="seconds before a query is cancelled (default 300)")
    parser.add_argument("--memory-limit", type=parse_size, default=default_memory_limit(), help="per-query memory limit (default: a quarter of RAM)")
    parser.add_argument("--max-concurrent-queries", type=int, default=8)
    parser.add_argument("--cache-bytes", type=parse_size, default=None,
                        help="result cache size, e.g. 2GiB (default: 1/16 of RAM; 0: no result cache)")
    parser.add_argument("--cache-max-entry-bytes", type=parse_size, default=64 * 1024**2,
                        help="results larger than this are not cached (default 64MiB)")
    parser.add_argument("--cache", type=_redis_uri, default=None, metavar="redis://HOST:PORT/DB",
                        help="a shared Redis cache tier behind each process's own, so several gateway replicas share "
                             "entries (a Redis outage only falls back to the in-process cache)")
    parser.add_argument("--max-queued-queries", type=int, default=64)
    parser.add_argument("--grace-period", type=float, default=30.0, help="seconds running queries get to finish on SIGTERM")
    parser.add_argument("--policies", type=Path, default=None, help="policy directory: global/*.yaml, domains/<domain>/*.yaml (default: the packaged policies)")
    parser.add_argument("--audit-log", type=Path, default=None, help="audit log file (default: audit.log beside the registry)")
    parser.add_argument("--no-sla-monitor", action="store_true", help="do not check products against their SLA in the background")
    parser.add_argument("--alert-webhook", default=None, metavar="URL", help="POST SLA alerts (JSON) to this URL")
    parser.add_argument("--sla-check-timeout", type=float, default=30.0, help="seconds one product's SLA check may take (default 30)")
    parser.add_argument("--sla-availability-window", type=_duration, default=24 * 3600.0,
                        help="the window product_availability_ratio is measured over (default 24h)")

    parser.add_argument("--source-root", type=Path, action="append", default=[], metavar="DIR",
                        help="file sources (sqlite, duckdb, parquet) must lie under one of these folders (repeatable; default: "
                             "$MESHGATE_SOURCE_ROOTS, else $MESHGATE_HOME and the registry's folder; plus the --products folders, "
                             "or the demo data). "
                             "The registry, audit log and users file are never readable as sources")


def _duration(text: str) -> float:
    from gateway.types import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not seconds or seconds <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive duration")
    return seconds


def register_paths(service, paths: list[Path]) -> list[tuple[str, str, str]]:  # noqa: ANN001
    """Publish the descriptors under ``paths`` as the local operator (every check, all or
    nothing); exit 2 listing every problem when refused."""
    from gateway.cli.product import LOCAL_OPERATOR, _print_checks
    from policies import Principal

    descriptors, errors = load_descriptors(paths)
    if errors:
        print_descriptor_errors(errors)
        raise SystemExit(2)
    report = service.publish(descriptors, Principal(LOCAL_OPERATOR, frozenset({"admin"})))
    if not report.ok:
        _print_checks(report)
        stderr.print(f"[red]refused:[/red] {len(report.failures)} problem(s); nothing was registered")
        raise SystemExit(2)
    return report.published


def _roots(args: argparse.Namespace, named: list[Path], forbidden: list[Path]):  # noqa: ANN202
    from gateway.source_roots import state_files

    registry = args.registry or meshgate_home() / "registry.db"
    audit = state_files(registry, args.audit_log) if args.audit_log else []
    return source_roots(args.source_root, named, registry, [*audit, *forbidden])


def _service(args: argparse.Namespace, registry, roots):  # noqa: ANN001, ANN202
    from gateway.service import GatewayService, Settings

    settings = Settings(
        query_timeout=args.query_timeout,
        memory_limit=args.memory_limit,
        max_concurrent_queries=args.max_concurrent_queries,
        max_queued_queries=args.max_queued_queries,
        cache_bytes=args.cache_bytes,
        cache_max_entry_bytes=args.cache_max_entry_bytes,
        cache_redis=args.cache,
    )
    from gateway.audit import AuditLog
    from policies.engine import PolicyEngine

    audit = AuditLog(args.audit_log) if args.audit_log else None
    service = GatewayService(registry, settings, PolicyEngine.load(args.policies), audit, source_roots=roots)
    shared = service.cache.shared if service.cache is not None else None
    if args.cache and shared is None:
        stderr.print("[yellow]warning:[/yellow] --cache is ignored with --cache-bytes 0 (no cache at all)")
    elif shared is not None:
        reachable = shared.ping()  # type: ignore[attr-defined]
        stderr.print(f"shared cache tier: {escape(shared.uri)}"  # type: ignore[attr-defined]
                     + ("" if reachable else " [yellow](not reachable now: serving from this process's cache until it answers)[/yellow]"))
    return service


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.users import UsersFileError

    if args.users is not None and args.insecure_no_auth:
        stderr.print("error: give either --users (authentication on) or --insecure-no-auth, not both")
        return 2
    if args.users is None and not args.insecure_no_auth:
        stderr.print(
            "error: no --users file given. Authentication is required: create users with "
            "`meshgate user add NAME --users FILE --role ROLE --password-stdin` and serve with --users FILE, "
            "or pass --insecure-no-auth (every caller is then 'anonymous' with role 'public')."
        )
        return 2
    try:
        tls = _tls(args)
        authenticator = _authenticator(args.users, args.token_ttl) if args.users is not None else None
        _monitor_options(args)
    except (UsersFileError, ValueError) as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return 2
    if args.host is None:
        args.host = "127.0.0.1" if authenticator is None else "0.0.0.0"
    if authenticator is None:
        stderr.print("[yellow]WARNING: authentication is OFF (--insecure-no-auth): every caller is 'anonymous' with role 'public'"
                     + ("; listening on 127.0.0.1 only (give --host to listen beyond)" if args.host == "127.0.0.1" else "")
                     + "[/yellow]", soft_wrap=True)
    else:
        stderr.print(
            f"authentication on: {len(authenticator.users)} users from {escape(str(args.users))} (re-read when it changes); "
            f"tokens valid for {args.token_ttl:g} s"
        )
        if tls is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            stderr.print("[yellow]WARNING: no --tls-cert: passwords and tokens cross the network in clear text[/yellow]")
    registry = open_registry(args.registry)
    service = _service(args, registry, _roots(args, args.products, [args.users] if args.users else []))
    if args.products:
        for product_id, version, state in register_paths(service, args.products):
            stderr.print(f"{state:>10}  {product_id} {version}")
    http = (args.http_host or args.host, args.http_port)
    return _serve(service, args.host, args.port, args.grace_period, authenticator=authenticator, tls=tls,
                  http=http, monitor=_monitor_options(args))


def _authenticator(users_file: Path, token_ttl: float):  # noqa: ANN202 - keeps --help fast
    from gateway.auth import Authenticator, TokenIssuer
    from gateway.users import UsersFile

    return Authenticator(UsersFile(users_file), TokenIssuer(ttl=token_ttl))


def _tls(args: argparse.Namespace):  # noqa: ANN202
    """The TLS files of ``serve``'s flags, checked to be readable; None without --tls-cert."""
    from gateway.flight.server import TlsFiles

    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def _monitor_options(args: argparse.Namespace) -> dict | None:
    """The SLA monitor's settings from the flags; None with --no-sla-monitor. ValueError for a bad --alert-webhook."""
    from gateway.alerts import check_webhook_url

    if args.no_sla_monitor:
        return None
    if args.alert_webhook:
        check_webhook_url(args.alert_webhook)
    return {"webhook": args.alert_webhook, "check_timeout": args.sla_check_timeout,
            "availability_window": args.sla_availability_window}


def _start_monitor(service, options: dict):  # noqa: ANN001, ANN202
    """The background SLA monitor over the service's registry and pooled connectors; its alerts
    and breaches are logged to stderr."""
    import logging

    from gateway.alerts import AlertSink
    from gateway.sla_monitor import SlaMonitor
    from gateway.usage import service_usage

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("gateway.alerts", "gateway.sla_monitor"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False
    monitor = SlaMonitor(service.registry, service.derived_sources.connector_for, AlertSink(options["webhook"]),
                         check_timeout=options["check_timeout"], availability_window=options["availability_window"],
                         usage=service_usage(service))
    service.sla_monitor = monitor
    monitor.start()
    return monitor


def _serve(service, host: str, port: int, grace_period: float, banner: str = "", authenticator=None, tls=None,  # noqa: ANN001
           http: tuple[str, int | None] | None = None, monitor: dict | None = None) -> int:
    import pyarrow as pa

    from gateway.flight.server import serve

    # Handlers first: a SIGTERM during start-up (the REST API takes a moment) must drain, not kill.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    taken = _bind_problem(host, port)
    if taken is None:
        try:
            server = serve(service, host, port, authenticator=authenticator, tls=tls)
        except pa.ArrowException as err:  # pyarrow says only "Server did not start properly"
            taken = _bind_problem(host, port) or str(err)
    if taken is not None:
        stderr.print(f"[red]error:[/red] cannot serve Flight SQL on {escape(host)}:{port}: {escape(taken)} "
                     "(choose another --port)", highlight=False)
        service.close()
        return 2
    scheme = "grpc+tls" if tls else "grpc"
    stderr.print(f"meshgate {__version__} serving Flight SQL on {scheme}://{host}:{server.port}")
    rest = _start_http(service, authenticator, *http) if http is not None else None
    if rest is False:
        server.shutdown()
        service.close()
        return 2
    if rest:
        stderr.print(f"REST API on {rest.url} (routes described at {rest.url}/api/docs and /api/openapi.json)")
    sla = _start_monitor(service, monitor) if monitor is not None else None
    if sla is not None:
        stderr.print(f"SLA monitor on: {len(sla.monitored())} products on their schedules"
                     + (f", alerts to {monitor['webhook']}" if monitor["webhook"] else ""))
    if banner:
        stdout.print(banner, soft_wrap=True, highlight=False)  # SQL must stay copy-pasteable
    stop.wait()
    stderr.print(f"shutting down: no new queries; running ones get up to {grace_period:g} s")
    started = time.monotonic()
    if not service.drain(grace_period):
        stderr.print("grace period over; exiting with queries still running")
    # Clients close their statements right after the last batch: give those calls a moment.
    time.sleep(max(0.0, min(1.0, grace_period - (time.monotonic() - started))))
    threading.Thread(target=server.shutdown, daemon=True).start()  # waits for in-flight calls
    if rest:
        rest.stop(timeout=5.0)
    if sla is not None:
        sla.stop(timeout=5.0)
    time.sleep(0.2)
    service.close()
    stderr.print("stopped")
    return 0


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (e.g. "Address already in use"), None if it can.

    Checked before the Flight server starts: gRPC would log its own bind errors and pyarrow then
    raise a bare "Server did not start properly" with a traceback, which tells a user nothing.
    """
    if port == 0:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no obstacle
            probe.bind(address)
    except OSError as err:
        return err.strerror or str(err)
    return None


def _start_http(service, authenticator, host: str, port: int | None):  # noqa: ANN001, ANN202
    """The REST API server, None when turned off (port 0) or when the default port is taken
    (with a warning), False when an explicitly given port cannot be bound (after saying why).
    It shares the Flight server's authenticator, so Flight bearer tokens work on it too."""
    if port == 0:
        return None
    from gateway.rest import create_app, serve_http

    try:
        return serve_http(create_app(service, authenticator), host, DEFAULT_HTTP_PORT if port is None else port)
    except OSError as err:
        if port is None:
            stderr.print(f"[yellow]warning:[/yellow] REST API not started: {host}:{DEFAULT_HTTP_PORT} is not available "
                         f"({err.strerror or err}); give --http-port PORT, or --http-port 0 to turn it off")
            return None
        stderr.print(f"[red]error:[/red] cannot serve the REST API on {host}:{port}: {err.strerror or err} "
                     "(choose another --http-port, or 0 to turn it off)", highlight=False)
        return False


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo_data import generate_demo_mesh
    from gateway.demo_users import ensure_demo_users

    try:
        monitor = _monitor_options(args)
    except ValueError as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return 2
    data_dir = args.data_dir or meshgate_home() / "demo"
    mesh = generate_demo_mesh(data_dir, scale=args.scale, postgres_uri=args.postgres, progress=True)
    for note in mesh.notes:
        stderr.print(f"[yellow]note:[/yellow] {note}")
    args.registry = args.registry or data_dir / "registry.db"
    registry = open_registry(args.registry)
    accounts = ensure_demo_users(data_dir)
    service = _service(args, registry, _roots(args, [data_dir], [accounts.users_file, accounts.passwords_file]))
    register_paths(service, [mesh.products_dir])
    stderr.print(f"registered {len(registry.catalog().versions)} products from {mesh.products_dir}")
    stderr.print(f"demo users in {accounts.users_file}, their passwords in {accounts.passwords_file}")
    if args.no_serve:
        service.close()
        return 0
    authenticator = _authenticator(accounts.users_file, 3600.0)
    # a wildcard address is reached locally through the loopback
    address = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    banner = _demo_banner(address, args.port, mesh, accounts)
    return _serve(service, args.host, args.port, args.grace_period, banner, authenticator=authenticator,
                  http=(args.host, args.http_port), monitor=monitor)


def _demo_banner(address: str, port: int, mesh, accounts) -> str:  # noqa: ANN001
    from gateway.demo_users import DEMO_USERS

    examples = "\n\n".join(f"-- {title}\n{sql}" for title, sql in mesh.example_queries)
    derived = "".join(
        f"\n-- A derived product (a view over other products, governed for whoever queries it)\n"
        f"SELECT * FROM {product} LIMIT 10\n"
        f"-- its lineage: meshgate lineage {product} --registry {mesh.products_dir.parent / 'registry.db'} --output lineage.png\n"
        for product in mesh.derived_products
    )
    users = "\n".join(
        f"  {u.name:<6} password {accounts.passwords[u.name]}  role {', '.join(u.roles):<8} "
        f"{', '.join(f'{k}={str(v).lower() if isinstance(v, bool) else v}' for k, v in u.attributes.items())}  ({u.note})"
        for u in DEMO_USERS
    )
    alice = accounts.passwords["alice"]
    return f"""
[bold]The demo mesh is live[/bold] (domains: {', '.join(mesh.domains)}). Authentication is on; the demo users
(passwords kept in {accounts.passwords_file}):
{users}

Connect as alice:
  ADBC URI   grpc://{address}:{port}  with username alice, password {alice}
  JDBC URL   jdbc:arrow-flight-sql://{address}:{port}/?useEncryption=false&user=alice&password={alice}
  CLI        MESHGATE_PASSWORD={alice} meshgate query --server grpc://{address}:{port} --user alice "SHOW TABLES"
  Python     import adbc_driver_flightsql.dbapi as f
             cur = f.connect("grpc://{address}:{port}", autocommit=True,
                             db_kwargs={{"username": "alice", "password": "{alice}"}}).cursor()
             cur.execute("SELECT * FROM orders.orders LIMIT 5"); print(cur.fetch_arrow_table())

Example cross-domain queries:

{examples}
{derived}
Press Ctrl-C to stop."""

