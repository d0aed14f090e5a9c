"""The ``meshgate`` command: serve the mesh, run the demo, query, register products, add users.

Exit codes: 0 success, 1 a query or server failure, 2 bad input (usage, invalid descriptor,
invalid SQL) with a message on stderr saying what was wrong and where. ``meshgate policy check``:
0 allowed, 1 denied, 2 bad input; ``meshgate policy test``: 0 every case passed, 1 a case failed,
2 bad input.
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
from typing import Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway import __version__
from gateway.errors import InvalidDescriptor, MeshError
from policies.loader import PolicyError

stderr = Console(stderr=True)
stdout = Console()

DEFAULT_PORT = 32010
DEFAULT_HTTP_PORT = 8080


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
    demo.add_argument("--port", type=int, default=DEFAULT_PORT)
    demo.add_argument("--scale", type=float, default=1.0, help="row-count multiplier (default 1.0: a few hundred thousand rows)")
    demo.add_argument("--postgres", default=os.environ.get("MESHGATE_DEMO_PG_URI"), help="PostgreSQL URI for the shipping domain (default $MESHGATE_DEMO_PG_URI; without it shipping is served from DuckDB)")
    demo.add_argument("--no-serve", action="store_true", help="generate and register only")

    query = commands.add_parser("query", help="run SQL against a gateway and print the result")
    query.add_argument("sql", help="the statement (PostgreSQL dialect)")
    query.add_argument("--server", default=f"grpc://127.0.0.1:{DEFAULT_PORT}", help="gateway URI (default grpc://127.0.0.1:32010)")
    query.add_argument("--format", choices=("table", "csv", "json", "arrow"), default="table")
    query.add_argument("--param", action="append", default=[], help="a parameter value for ? (repeatable; given as text)")
    query.add_argument("--user", help="log in as this user; the password is read from $MESHGATE_PASSWORD")

    product = commands.add_parser("product", help="manage data products").add_subparsers(dest="action", required=True)
    register = product.add_parser(
        "register", help="validate descriptors, check compatibility and quality gates, publish (all or nothing; exit 2 if refused)")
    register.add_argument("paths", type=Path, nargs="+", help="descriptor files or folders")
    register.add_argument("--registry", type=Path, default=None)
    register.add_argument("--skip-quality", action="store_true", help="do not run the quality gates at the source")
    listing = product.add_parser("list", help="list registered products and versions")
    listing.add_argument("--registry", type=Path, default=None)
    diff = product.add_parser("diff", help="changes against the newest registered version, breaking ones marked")
    diff.add_argument("file", type=Path, help="a descriptor file")
    diff.add_argument("--registry", type=Path, default=None)
    validate = product.add_parser("validate", help="validate a descriptor and compare the source's real table with its contract (exit 2 on any problem)")
    validate.add_argument("file", type=Path, help="a descriptor file")
    quality = product.add_parser("check", help="run a product's quality rules at its source (exit 1 if an error rule fails)")
    quality.add_argument("target", help="a descriptor file, or a registered product (domain.name or domain.name@MAJOR)")
    quality.add_argument("--registry", type=Path, default=None)

    policy = commands.add_parser("policy", help="check and test governance without a server").add_subparsers(dest="action", required=True)
    check = policy.add_parser("check", help="print each product's decision and the governed query, without running it (exit 0 allowed, 1 denied, 2 bad input)")
    check.add_argument("--user", required=True, help="the principal: a user of --users, or 'anonymous'")
    check.add_argument("--query", required=True, help="the statement (PostgreSQL dialect)")
    check.add_argument("--format", choices=("text", "json"), default="text")
    _add_policy_options(check)
    check.add_argument("--role", action="append", default=[], help="without --users: a role of --user (repeatable)")
    check.add_argument("--attr", action="append", default=[], type=_attribute, metavar="KEY=VALUE",
                       help="without --users: an attribute of --user (repeatable)")
    cases = policy.add_parser("test", help="run YAML policy test cases against the registry's sources (exit 0 all passed, 1 a case failed, 2 bad input)")
    cases.add_argument("path", type=Path, help="a case file, or a folder searched for *.yaml case files")
    _add_policy_options(cases)
    cases.add_argument("--audit-log", type=Path, default=None, help="audit log for the queries the cases run (default: audit.log beside the registry)")

    user = commands.add_parser("user", help="manage a users file").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user, or replace one, with a salted password hash")
    add.add_argument("name", help="the user name clients log in with")
    add.add_argument("--users", type=Path, required=True, help="the users file (created if missing)")
    add.add_argument("--role", action="append", required=True, help="a role (repeatable)")
    add.add_argument("--attr", action="append", default=[], type=_attribute, metavar="KEY=VALUE",
                     help="an attribute policies see as {user.KEY} (repeatable; true/false and whole numbers are typed)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    return parser


def _attribute(text: str) -> tuple[str, object]:
    from gateway.users import UsersFileError, parse_attribute

    try:
        return parse_attribute(text)
    except UsersFileError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=Path, default=None, help="users file the principals are looked up in")
    parser.add_argument("--registry", type=Path, default=None, help="registry file (default $MESHGATE_HOME/registry.db)")
    parser.add_argument("--policies", type=Path, default=None, help="policy directory (default: the packaged policies)")


def _http_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 turns the REST API off)")
    return port


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
    parser.add_argument("--max-queued-queries", type=int, default=64)
    parser.add_argument("--grace-period", type=float, default=30.0, help="seconds running queries get to finish on SIGTERM")
    parser.add_argument("--policies", type=Path, default=None, help="policy directory: global/*.yaml, domains/<domain>/*.yaml (default: the packaged policies)")
    parser.add_argument("--audit-log", type=Path, default=None, help="audit log file (default: audit.log beside the registry)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        handler = _COMMANDS.get((args.command, getattr(args, "action", None)))
        if handler is not None:
            return handler(args)
    except InvalidDescriptor as err:
        _print_descriptor_errors([err])
        return 2
    except PolicyError as err:
        stderr.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
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
    """Validate, then refuse (exit 2, every problem listed, nothing registered) a breaking change
    within a major version or a failing ``error`` quality rule; publish the rest atomically."""
    from gateway import compatibility

    registry = _registry(args.registry)
    descriptors, errors = load_descriptors(args.paths)
    if errors:
        _print_descriptor_errors(errors)
        return 2
    refused: list[InvalidDescriptor] = []
    sources = None
    try:
        for d in sorted(descriptors, key=lambda d: (d.product_id, d.version_key)):
            registered = registry.versions(d.product_id)
            if any(r.version == d.version for r in registered):
                continue  # the registry decides between 'unchanged' and 'immutable'
            earlier_in_batch = [e for e in descriptors if e.product_id == d.product_id and e is not d]
            changes = compatibility.check_against(d, [*registered, *earlier_in_batch])
            problems = compatibility.problems(d, changes)
            for change in changes:
                if change.breaking and int(change.against.split(".")[0]) != d.major:
                    stdout.print(f"      new major  {d.product_id} {d.version}: {change} (against {change.against})",
                                 markup=False, highlight=False)
            if not args.skip_quality and d.source.connector != "mesh" and quality_rules(d):
                if sources is None:
                    from gateway.sources import SourceManager

                    sources = SourceManager()
                problems.extend(_quality_problems(d, sources))
            if problems:
                refused.append(InvalidDescriptor(f"{d.product_id} {d.version}", problems))
    finally:
        if sources is not None:
            sources.close()
    if refused:
        _print_descriptor_errors(refused)
        return 2
    for product_id, version, state in registry.register(descriptors):
        stdout.print(f"{state:>10}  {product_id} {version}")
    return 0


def quality_rules(descriptor) -> list[dict]:  # noqa: ANN001
    from gateway.quality import rules

    return rules(descriptor)


def _quality_problems(descriptor, sources) -> list[str]:  # noqa: ANN001
    """Run the gates: print every result; failing ``error`` rules become problems. An unreachable
    source is a warning, not a refusal (the gates could not run; ``product check`` later)."""
    from gateway.quality import run_gates

    label = f"{descriptor.product_id} {descriptor.version}"
    try:
        connector = sources.connector_for(descriptor)
        results = run_gates(descriptor, connector)
    except MeshError as err:
        stderr.print(f"[yellow]warning:[/yellow] {escape(label)}: quality gates not run, source unavailable: {escape(err.message)}")
        return []
    problems = []
    for result in results:
        if result.blocks:
            problems.append(f"spec.quality.{result.name}: {result.describe()}")
        elif not result.passed:
            stderr.print(f"[yellow]warning:[/yellow] {escape(label)}: {escape(result.describe())}")
    return problems


def _load_one(path: Path):  # noqa: ANN202
    descriptors, errors = load_descriptors([path])
    if errors:
        raise errors[0]
    if len(descriptors) != 1:
        raise InvalidDescriptor(str(path), [f"expected one descriptor file, found {len(descriptors)}"])
    return descriptors[0]


def cmd_diff(args: argparse.Namespace) -> int:
    from gateway import compatibility

    new = _load_one(args.file)
    registered = _registry(args.registry).versions(new.product_id)
    if not registered:
        stdout.print(f"{new.product_id} is not registered yet: {new.version} would be its first version", highlight=False)
        return 0
    previous = registered[0]
    mode = compatibility.mode_of(new)
    changes = compatibility.check(previous, new, mode)
    stdout.print(f"{new.product_id} {previous.version} -> {new.version} (compatibility: {mode})", highlight=False)
    if not changes:
        stdout.print("  no changes", highlight=False)
    for change in changes:
        mark = "[red]BREAKING[/red]" if change.breaking else "        "
        stdout.print(f"  {mark} {escape(change.path)}: {escape(change.description)}", highlight=False)
    breaking = [c for c in changes if c.breaking]
    if breaking and new.major == previous.major:
        stdout.print(f"{len(breaking)} breaking change(s) within major {new.major}: register would refuse this; "
                     f"publish it as {new.major + 1}.0.0", highlight=False)
    elif breaking:
        stdout.print(f"{len(breaking)} breaking change(s): allowed, {new.version} is a new major version", highlight=False)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """The descriptor, then the source: can it be reached, does its relation have every contract
    column in a type the gateway can return as the contract's type?"""
    from gateway.sources import SourceManager

    d = _load_one(args.file)
    stdout.print(f"descriptor ok: {d.product_id} {d.version}", highlight=False)
    if d.source.connector == "mesh":
        stdout.print("source: a view over other products (mesh); not checked here", highlight=False)
        return 0
    sources = SourceManager()
    try:
        connector = sources.connector_for(d)
        actual = connector.schema(d.source.table, d.source.query)
    except MeshError as err:
        raise InvalidDescriptor(str(args.file), [f"spec.source: cannot read the source: {err.message}"]) from err
    finally:
        sources.close()
    problems = contract_problems(d, actual, connector.kind)
    if problems:
        raise InvalidDescriptor(str(args.file), problems)
    extra = sorted({f.name for f in actual} - {c.name for c in d.columns})
    stdout.print(f"source ok: {connector.display_name} has every contract column in a compatible type"
                 + (f" (not in the contract: {', '.join(extra)})" if extra else ""), highlight=False)
    return 0


def contract_problems(d, actual, connector_kind: str) -> list[str]:  # noqa: ANN001
    """Contract columns missing from the source's schema or in a type that cannot become the
    contract's, each with its path."""
    import pyarrow as pa

    fields = {f.name.lower(): f for f in actual}
    problems = []
    for i, column in enumerate(d.columns):
        field = fields.get(column.name.lower())
        if field is None:
            problems.append(f"spec.schema[{i}]: column '{column.name}' is missing from the source "
                            f"(it has: {', '.join(f.name for f in actual)})")
            continue
        if not _type_fits(column.type.name, field.type, connector_kind, pa):
            problems.append(f"spec.schema[{i}].type: the source's '{field.name}' is {field.type}, "
                            f"which cannot be returned as {column.type.name}")
    return problems


def _type_fits(contract: str, source, connector_kind: str, pa) -> bool:  # noqa: ANN001
    """Can a source value of Arrow type ``source`` be returned as contract type ``contract``?
    SQLite stores dates and timestamps as text and numerics as REAL, so text is accepted for
    temporal columns and a float for a decimal from SQLite."""
    t = pa.types
    if t.is_null(source) or contract == "string":
        return True
    textual = t.is_string(source) or t.is_large_string(source) or t.is_string_view(source)
    if contract == "boolean":
        return t.is_boolean(source) or (connector_kind == "sqlite" and t.is_integer(source))
    if contract in ("int32", "int64"):
        return t.is_integer(source)
    if contract in ("float", "double"):
        return t.is_integer(source) or t.is_floating(source) or t.is_decimal(source)
    if contract.startswith("decimal"):
        return t.is_integer(source) or t.is_decimal(source) or (connector_kind == "sqlite" and t.is_floating(source))
    if contract == "date":
        return t.is_date(source) or t.is_timestamp(source) or (connector_kind == "sqlite" and textual)
    if contract in ("timestamp", "timestamptz"):
        return t.is_timestamp(source) or t.is_date(source) or (connector_kind == "sqlite" and textual)
    if contract == "binary":
        return t.is_binary(source) or t.is_large_binary(source) or t.is_fixed_size_binary(source)
    return False


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.quality import rules, run_gates
    from gateway.sources import SourceManager

    target = Path(args.target)
    if target.exists():
        d = _load_one(target)
    else:
        domain, dot, name = args.target.partition(".")
        if not dot:
            raise InvalidDescriptor(args.target, ["not a file, and not a product name like domain.name"])
        d = _registry(args.registry).catalog(max_age=0).resolve(domain, name.strip('"'))
    label = f"{d.product_id} {d.version}"
    if not rules(d):
        stdout.print(f"{label}: no quality rules", highlight=False)
        return 0
    if d.source.connector == "mesh":
        stdout.print(f"{label}: quality rules of derived (mesh) products are not run here yet", highlight=False)
        return 0
    sources = SourceManager()
    try:
        results = run_gates(d, sources.connector_for(d))
    finally:
        sources.close()
    for result in results:
        style = "green" if result.passed else "red" if result.severity == "error" else "yellow"
        word = "pass" if result.passed else "FAIL" if result.severity == "error" else "warn"
        stdout.print(f"  [{style}]{word}[/{style}]  {escape(result.describe())}", highlight=False)
    failed = [r for r in results if r.blocks]
    stdout.print(f"{label}: {len(results) - len(failed)} of {len(results)} rule(s) without a blocking failure", highlight=False)
    return 1 if failed else 0


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
        cache_bytes=args.cache_bytes,
        cache_max_entry_bytes=args.cache_max_entry_bytes,
    )
    from gateway.audit import AuditLog
    from policies.engine import PolicyEngine

    audit = AuditLog(args.audit_log) if args.audit_log else None
    return GatewayService(registry, settings, PolicyEngine.load(args.policies), audit)


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
    except (UsersFileError, ValueError) as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return 2
    if authenticator is None:
        stderr.print("[yellow]WARNING: authentication is OFF (--insecure-no-auth): every caller is 'anonymous' with role 'public'[/yellow]")
    else:
        stderr.print(
            f"authentication on: {len(authenticator.users)} users from {escape(str(args.users))} (re-read when it changes); "
            f"tokens valid for {args.token_ttl:g} s"
        )
        if tls is None and args.host not in ("127.0.0.1", "localhost", "::1"):
            stderr.print("[yellow]WARNING: no --tls-cert: passwords and tokens cross the network in clear text[/yellow]")
    registry = _registry(args.registry)
    if args.products:
        for product_id, version, state in register_paths(registry, args.products):
            stderr.print(f"{state:>10}  {product_id} {version}")
    http = (args.http_host or args.host, args.http_port)
    return _serve(_service(args, registry), args.host, args.port, args.grace_period, authenticator=authenticator, tls=tls, http=http)


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


def _serve(service, host: str, port: int, grace_period: float, banner: str = "", authenticator=None, tls=None,  # noqa: ANN001
           http: tuple[str, int | None] | None = None) -> int:
    from gateway.flight.server import serve

    # Handlers first: a SIGTERM during start-up (the REST API takes a moment) must drain, not kill.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = serve(service, host, port, authenticator=authenticator, tls=tls)
    scheme = "grpc+tls" if tls else "grpc"
    stderr.print(f"meshgate {__version__} serving Flight SQL on {scheme}://{host}:{server.port}")
    rest = _start_http(service, authenticator, *http) if http is not None else None
    if rest is False:
        server.shutdown()
        service.close()
        return 2
    if rest:
        stderr.print(f"REST API on {rest.url} (POST /api/v1/policy/evaluate, GET /healthz)")
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
    time.sleep(0.2)
    service.close()
    stderr.print("stopped")
    return 0


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

    data_dir = args.data_dir or meshgate_home() / "demo"
    mesh = generate_demo_mesh(data_dir, scale=args.scale, postgres_uri=args.postgres, progress=True)
    for note in mesh.notes:
        stderr.print(f"[yellow]note:[/yellow] {note}")
    registry = _registry(args.registry or data_dir / "registry.db")
    register_paths(registry, [mesh.products_dir])
    stderr.print(f"registered {len(registry.catalog().versions)} products from {mesh.products_dir}")
    accounts = ensure_demo_users(data_dir)
    stderr.print(f"demo users in {accounts.users_file}, their passwords in {accounts.passwords_file}")
    if args.no_serve:
        return 0
    authenticator = _authenticator(accounts.users_file, 3600.0)
    banner = _demo_banner(args.port, mesh, accounts)
    return _serve(_service(args, registry), "127.0.0.1", args.port, args.grace_period, banner, authenticator=authenticator,
                  http=("127.0.0.1", args.http_port))


def _demo_banner(port: int, mesh, accounts) -> str:  # noqa: ANN001
    from gateway.demo_users import DEMO_USERS

    examples = "\n\n".join(f"-- {title}\n{sql}" for title, sql in mesh.example_queries)
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
  ADBC URI   grpc://127.0.0.1:{port}  with username alice, password {alice}
  JDBC URL   jdbc:arrow-flight-sql://127.0.0.1:{port}/?useEncryption=false&user=alice&password={alice}
  CLI        MESHGATE_PASSWORD={alice} meshgate query --server grpc://127.0.0.1:{port} --user alice "SHOW TABLES"
  pyarrow    import adbc_driver_flightsql.dbapi as f
             cur = f.connect("grpc://127.0.0.1:{port}", db_kwargs={{"username": "alice", "password": "{alice}"}}).cursor()
             cur.execute("SELECT * FROM orders.orders LIMIT 5"); print(cur.fetch_arrow_table())

Example cross-domain queries:

{examples}

Press Ctrl-C to stop."""


# --- policies --------------------------------------------------------------------------------


def _offline_service(args: argparse.Namespace, audit_log: Path | None):  # noqa: ANN202
    """A GatewayService over the registry and policies of the flags, with no server; it audits
    to ``audit_log`` (default: audit.log beside the registry)."""
    from gateway.audit import AuditLog
    from gateway.service import GatewayService
    from policies.engine import PolicyEngine

    registry = _registry(args.registry)
    policies = PolicyEngine.load(args.policies)
    return GatewayService(registry, policies=policies, audit=AuditLog(audit_log or registry.path.parent / "audit.log"))


def _users_lookup(users_file: Path | None):  # noqa: ANN202
    """name -> Principal | None from the users file; None without one. Raises UsersFileError."""
    if users_file is None:
        return None
    from gateway.users import UsersFile

    users = UsersFile(users_file)
    return lambda name: (user.principal() if (user := users.get(name)) is not None else None)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.users import UsersFileError
    from policies import ANONYMOUS, Principal

    try:
        lookup = _users_lookup(args.users)
    except UsersFileError as err:
        stderr.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
    if lookup is not None:
        if args.role or args.attr:
            stderr.print("[red]error:[/red] --role/--attr describe a principal without --users; with --users the file says")
            return 2
        principal = lookup(args.user)
        if principal is None:
            stderr.print(f"[red]error:[/red] no user '{args.user}' in {args.users}", highlight=False)
            return 2
    elif args.role or args.attr:
        principal = Principal(args.user, frozenset(args.role), dict(args.attr))
    elif args.user == ANONYMOUS.name:
        principal = ANONYMOUS
    else:
        stderr.print(f"[red]error:[/red] who is '{args.user}'? give --users FILE, or describe the principal with --role/--attr",
                     highlight=False)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory(prefix="meshgate-policy-") as scratch:  # nothing runs, nothing to audit
        service = _offline_service(args, Path(scratch) / "audit.log")
        try:
            rewrite = service.rewrite(args.query, principal)
        finally:
            service.close()
    if args.format == "json":
        document = {
            "decision": "allow" if rewrite.allowed else "deny",
            "principal": {"name": principal.name, "roles": sorted(principal.roles), "attributes": dict(principal.attributes)},
            "query": rewrite.sql,
            "products": [p.report() for p in rewrite.products],
            "governed_query": rewrite.governed_sql,
        }
        sys.stdout.write(json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n")
        return 0 if rewrite.allowed else 1
    roles = ", ".join(sorted(principal.roles)) or "none"
    attributes = ", ".join(f"{k}={v}" for k, v in principal.attributes.items()) or "none"
    stdout.print(f"principal {principal.name} (roles: {roles}; attributes: {attributes})", highlight=False, markup=False)
    if not rewrite.products:
        stdout.print("the query reads no data product", highlight=False)
    for p in rewrite.products:
        verdict = "[green]allow[/green]" if p.allowed else "[red]deny[/red]"
        stdout.print(f"{_escape(p.product.product_id)}@{_escape(p.product.version)}: {verdict}", highlight=False)
        lines = [f"  reason  {reason}" for reason in p.decision.reasons]
        lines += [f"  mask    {m.column}: {m.kind} ({m.policy})" for m, _ in p.masks]
        lines += [f"  filter  {sql} ({f.policy})" for f, sql in p.row_filters]
        if p.decision.min_group_size:
            lines.append(f"  groups  aggregates keep groups of at least {p.decision.min_group_size} rows")
        for line in lines:
            stdout.print(line, markup=False, highlight=False, soft_wrap=True)
    if rewrite.allowed:
        stdout.print("decision: [green]allow[/green]\ngoverned query:")
        stdout.print(rewrite.governed_sql, soft_wrap=True, highlight=False, markup=False)
        return 0
    denied = [p.product.product_id for p in rewrite.products if not p.allowed]
    stdout.print(f"decision: [red]deny[/red] ({', '.join(denied)}); the query would be refused with PERMISSION_DENIED",
                 highlight=False, soft_wrap=True)
    return 1


def cmd_policy_test(args: argparse.Namespace) -> int:
    from gateway.policy_cases import CaseFileError, load_cases, principal_of, run_case
    from gateway.users import UsersFileError

    try:
        lookup = _users_lookup(args.users)
        cases = load_cases(args.path)
        principals = [principal_of(c.principal, lookup, c.where) for c in cases]
    except (CaseFileError, UsersFileError) as err:
        stderr.print("[red]error:[/red] invalid policy test cases:", markup=True)
        stderr.print(str(err), markup=False, highlight=False, soft_wrap=True)
        return 2
    service = _offline_service(args, args.audit_log)
    try:
        outcomes = [run_case(service, case, principal) for case, principal in zip(cases, principals)]
    finally:
        service.close()
    table = Table("result", "case", "principal", "expected", "got")
    for column in table.columns:
        column.overflow = "fold"
    for outcome in outcomes:
        expected = _expected_summary(outcome.case.expect)
        table.add_row(
            "[green]PASS[/green]" if outcome.passed else "[red]FAIL[/red]",
            _escape(outcome.case.name),
            _escape(outcome.principal), _escape(expected), _escape(outcome.got),
        )
    stdout.print(table)
    failed = [o for o in outcomes if not o.passed]
    for outcome in failed:
        stdout.print(f"[red]FAIL[/red] {_escape(outcome.case.where)} {_escape(outcome.case.name)}:")
        for problem in outcome.problems:
            stdout.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
    stdout.print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed", highlight=False)
    return 1 if failed else 0


def _expected_summary(expect: dict) -> str:
    parts = []
    if "decision" in expect:
        parts.append(str(expect["decision"]))
    if "rows" in expect:
        parts.append(f"{len(expect['rows'])} row{'s' if len(expect['rows']) != 1 else ''}{' in order' if expect.get('ordered') else ''}")
    if "row_count" in expect:
        parts.append(f"{expect['row_count']} row{'s' if expect['row_count'] != 1 else ''}")
    policies = expect.get("contains_policy")
    if policies:
        parts += [f"policy {p}" for p in ([policies] if isinstance(policies, str) else policies)]
    return ", ".join(parts)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --- users -----------------------------------------------------------------------------------


def cmd_user_add(args: argparse.Namespace) -> int:
    from gateway.users import UsersFileError, add_user

    password = _read_password(args.password_stdin)
    if password is None:
        return 2
    try:
        created = add_user(args.users, args.name, password, args.role, dict(args.attr))
    except UsersFileError as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return 2
    stdout.print(f"{'added' if created else 'updated'} user {args.name} (roles: {', '.join(args.role)}) in {args.users}", highlight=False)
    return 0


def _read_password(from_stdin: bool) -> str | None:
    """The new password: the first line of stdin, or typed twice at a terminal; None (after
    saying why) when there is none."""
    import getpass

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            stderr.print("[red]error:[/red] the passwords differ")
            return None
    else:
        stderr.print("[red]error:[/red] give the password on stdin with --password-stdin")
        return None
    if not password:
        stderr.print("[red]error:[/red] the password is empty")
        return None
    return password


# --- querying --------------------------------------------------------------------------------


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



_COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("serve", None): cmd_serve,
    ("demo", None): cmd_demo,
    ("query", None): cmd_query,
    ("product", "register"): cmd_register,
    ("product", "list"): cmd_list,
    ("product", "diff"): cmd_diff,
    ("product", "validate"): cmd_validate,
    ("product", "check"): cmd_check,
    ("user", "add"): cmd_user_add,
    ("policy", "check"): cmd_policy_check,
    ("policy", "test"): cmd_policy_test,
}
"""Each (command, sub-command) and the function that carries it out."""

if __name__ == "__main__":
    sys.exit(main())
