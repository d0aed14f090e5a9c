"""``meshgate product ...``: a data product from source table to published, deprecated and
retired versions. The checks and the lifecycle rules live in ``gateway/publishing.py`` and
``gateway/lifecycle.py`` (the REST API calls the same); this module parses, prints and exits.

Exit codes: 0 done; 2 bad input or refused (an invalid descriptor, a failed check, no
permission, a retirement before its notice period), every problem listed; 1 a failure (a
concurrent registration won, a source failed while checking on demand).
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.markup import escape
from rich.table import Table

from gateway.cli.common import (
    load_descriptors,
    load_one,
    load_target,
    meshgate_home,
    open_registry,
    print_descriptor_errors,
    source_roots,
    stderr,
    stdout,
)
from gateway.errors import InvalidRequest

LOCAL_OPERATOR = "local-operator"
_PRINCIPAL_HELP = (
    "Who acts: without --users, the local operator (whoever can write the registry file) acts "
    "as principal 'local-operator' with role admin. With --users FILE --user NAME (password in "
    "$MESHGATE_PASSWORD), the user's roles decide: publishing, deprecating and retiring need "
    "owner:<domain> or admin; weakening governance and --force need admin."
)
_ROOTS_HELP = (
    "file sources (sqlite, duckdb, parquet) must lie under one of these folders (repeatable; "
    "default: $MESHGATE_SOURCE_ROOTS, else $MESHGATE_HOME and the registry's folder) besides the "
    "folders of the descriptor files named"
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    product = commands.add_parser(
        "product", help="create, check, publish, deprecate and retire data products",
        description="Data products from source table to retired version. " + _PRINCIPAL_HELP,
    ).add_subparsers(dest="action", required=True)

    init = product.add_parser("init", help="scaffold a descriptor from a real source table (columns, types, NOT NULL)")
    init.add_argument("--connector", required=True, help="sqlite, duckdb, parquet, postgres or flightsql")
    init.add_argument("--uri", required=True, help="the source: a file path (relative to the current folder) or a URI")
    init.add_argument("--table", help="the table to describe (schema.table where the source has schemas)")
    init.add_argument("--query", help="or a query in the source's dialect")
    init.add_argument("--domain", required=True)
    init.add_argument("--name", required=True)
    init.add_argument("--owner", default=None, help="owner contact (default: a placeholder to replace)")
    init.add_argument("--version", default="1.0.0")
    init.add_argument("-o", "--output", type=Path, help="write the descriptor here (default: print it)")
    init.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    _add_roots(init)

    validate = product.add_parser("validate", help="check a descriptor: contract, policies, the source and its real schema (exit 2 on any problem)")
    validate.add_argument("file", type=Path, help="a descriptor file")
    _add_context(validate)

    register = product.add_parser(
        "register", help="check and publish descriptors atomically: source, schema, compatibility, quality gates, permission")
    register.add_argument("paths", type=Path, nargs="+", help="descriptor files or folders")
    register.add_argument("--skip-quality", action="store_true", help="do not run the quality gates at the source")
    register.add_argument("--dry-run", action="store_true", help="run every check, publish nothing")
    _add_context(register)

    diff = product.add_parser("diff", help="changes against the newest registered version, breaking ones marked")
    diff.add_argument("file", type=Path, help="a descriptor file")
    diff.add_argument("--registry", type=Path, default=None)
    diff.add_argument("--audit-log", type=Path, default=None,
                      help="where a breaking change's recent consumers are read (default: audit.log beside the registry)")
    diff.add_argument("--days", type=int, default=30, help="how far back consumers count as recent (default 30)")
    diff.add_argument("--exit-code", action="store_true",
                      help="exit 1 when register would refuse the change (a breaking change within the same major), for CI")

    for verb, status, text in (("deprecate", "deprecated", "mark a product, major or version deprecated (still queryable, flagged)"),
                               ("retire", "retired", "retire a deprecated product, major or version after its notice period (no longer queryable)")):
        parser = product.add_parser(verb, help=text, description=text + ". " + _PRINCIPAL_HELP)
        parser.add_argument("target", help="domain.name (every version), domain.name@MAJOR or domain.name@VERSION")
        parser.add_argument("--reason", default="", help="why, shown to consumers")
        if verb == "deprecate":
            parser.add_argument("--replaced-by", default="", help="what consumers should use instead, e.g. sales.orders@2")
        else:
            parser.add_argument("--force", action="store_true", help="retire before the notice period (or without deprecation); needs admin")
        _add_principal(parser)
        parser.set_defaults(handler=cmd_set_status, status=status)

    listing = product.add_parser("list", help="registered products, their versions and lifecycle status")
    listing.add_argument("--registry", type=Path, default=None)
    listing.add_argument("--all", action="store_true", help="include retired products")

    versions = product.add_parser("versions", help="every version of a product: status, when, by whom, quality")
    versions.add_argument("product", help="domain.name")
    versions.add_argument("--registry", type=Path, default=None)

    quality = product.add_parser("check", help="run a product's quality rules at its source and store the results (exit 1 if an error rule fails)")
    quality.add_argument("target", help="a descriptor file, or a registered product (domain.name or domain.name@MAJOR)")
    quality.add_argument("--registry", type=Path, default=None)
    export = product.add_parser("export", help="write a product's contract as an ODCS document (open data contract standard)")
    export.add_argument("target", help="a descriptor file, or a registered product (domain.name or domain.name@MAJOR)")
    export.add_argument("--format", choices=("odcs",), default="odcs", help="document format (default: odcs)")
    export.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: standard output)")
    export.add_argument("--registry", type=Path, default=None)
    _add_roots(quality)

    init.set_defaults(handler=cmd_init)
    validate.set_defaults(handler=cmd_validate)
    register.set_defaults(handler=cmd_register)
    diff.set_defaults(handler=cmd_diff)
    listing.set_defaults(handler=cmd_list)
    versions.set_defaults(handler=cmd_versions)
    quality.set_defaults(handler=cmd_check)
    export.set_defaults(handler=cmd_export)


def _add_roots(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-root", type=Path, action="append", default=[], metavar="DIR", help=_ROOTS_HELP)


def _add_principal(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, default=None, help="registry file (default $MESHGATE_HOME/registry.db)")
    parser.add_argument("--users", type=Path, default=None, help="users file: act as --user instead of the local operator")
    parser.add_argument("--user", default=None, help="the user to act as (password in $MESHGATE_PASSWORD)")
    parser.add_argument("--policies", type=Path, default=None, help="policy directory (default: the packaged policies)")


def _add_context(parser: argparse.ArgumentParser) -> None:
    _add_principal(parser)
    _add_roots(parser)


# --- the principal, the roots, the service ------------------------------------------------------


def principal(args: argparse.Namespace):  # noqa: ANN201
    """The local operator (admin) without --users; else the authenticated --user."""
    from gateway.users import UsersFile, UsersFileError, verify_password
    from policies import Principal

    users_file, name = getattr(args, "users", None), getattr(args, "user", None)
    if users_file is None and name is None:
        return Principal(LOCAL_OPERATOR, frozenset({"admin"}))
    if users_file is None or name is None:
        raise InvalidRequest("--user and --users go together (the user is looked up in the users file)")
    password = os.environ.get("MESHGATE_PASSWORD")
    if not password:
        raise InvalidRequest("--user needs the password in the MESHGATE_PASSWORD environment variable")
    try:
        user = UsersFile(users_file).get(name)
    except UsersFileError as err:
        raise InvalidRequest(str(err)) from err
    if user is None or not verify_password(password, user.password_hash):
        raise InvalidRequest(f"authentication failed for user '{name}' (users file {users_file})")
    return user.principal()


def _roots(args: argparse.Namespace, named: list[Path]):  # noqa: ANN202
    """This command's source roots; the registry, its audit log and --users are never sources."""
    registry = getattr(args, "registry", None) or meshgate_home() / "registry.db"
    users = [args.users] if getattr(args, "users", None) else []
    return source_roots(getattr(args, "source_root", []), named, registry, users)


@contextmanager
def _publishing(args: argparse.Namespace, named: list[Path]) -> Iterator[tuple[Any, Any, Any]]:
    """(registry, policies, sources) for publishing and lifecycle changes: what they need of a
    gateway, without its query engine (importing DataFusion would add ~0.4 s to every register,
    and the time from ``product register`` to the first query is a measured target)."""
    from gateway.sources import SourceManager
    from policies.engine import PolicyEngine

    sources = SourceManager(_roots(args, named))
    try:
        yield open_registry(args.registry), PolicyEngine.load(getattr(args, "policies", None)), sources
    finally:
        sources.close()


# --- verbs ----------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    import yaml

    from gateway.descriptor import validate
    from gateway.scaffold import PLACEHOLDER_OWNER, descriptor_uri, scaffold
    from gateway.sources import SourceManager

    if args.output is not None and args.output.exists() and not args.force:
        raise InvalidRequest(f"{args.output} exists; give --force to overwrite it")
    out_dir = (args.output.parent if args.output else Path.cwd()).resolve()
    uri = descriptor_uri(args.uri, args.connector, out_dir)
    source = {"connector": args.connector, "uri": uri, **({"table": args.table} if args.table else {}),
              **({"query": args.query} if args.query else {})}
    probe = {"apiVersion": "datamesh.io/v1", "kind": "DataProduct",
             "metadata": {"name": args.name, "domain": args.domain, "owner": "x", "version": args.version},
             "spec": {"source": source, "schema": [{"name": "probe", "type": "string"}]}}
    d = validate(probe, "command line", out_dir)
    sources = SourceManager(_roots(args, [out_dir]))
    try:
        connector = sources.connector_for(d)
        doc = scaffold(connector, uri=uri, table=args.table, query=args.query, domain=args.domain, name=args.name,
                       owner=args.owner or PLACEHOLDER_OWNER, version=args.version)
    finally:
        sources.close()
    validate(doc, "the scaffold", out_dir)  # it must validate as written
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        required = sum(1 for c in doc["spec"]["schema"] if c.get("required"))
        stdout.print(f"wrote {args.output}: {args.domain}.{args.name} {args.version}, {len(doc['spec']['schema'])} column(s) "
                     f"({required} required) from {escape(connector.display_name)}; replace the TODO placeholders"
                     f"{'' if args.owner else f' and the owner {PLACEHOLDER_OWNER}'}, then "
                     f"`meshgate product validate {args.output}`", highlight=False)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """The descriptor, then everything publishing checks except the quality gates, published nothing."""
    d = load_one(args.file)
    stdout.print(f"descriptor ok: {d.product_id} {d.version}", highlight=False)
    from gateway.publishing import publish

    with _publishing(args, [args.file]) as (registry, policies, sources):
        report = publish([d], principal(args), registry=registry, policies=policies, sources=sources,
                         run_quality=False, dry_run=True)
    _print_checks(report)
    if not report.ok:
        stderr.print(f"[red]invalid[/red] {escape(str(args.file))}: {len(report.failures)} problem(s)", highlight=False)
        return 2
    stdout.print(f"valid: {d.product_id} {d.version} (source ok, contract matches)", highlight=False)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Every check of every descriptor printed; exit 2 with nothing published if any failed."""
    from rich.progress import Progress

    descriptors, errors = load_descriptors(args.paths)
    if errors:
        print_descriptor_errors(errors)
        return 2
    from gateway.publishing import publish

    with _publishing(args, list(args.paths)) as (registry, policies, sources):
        who = principal(args)
        with Progress(console=stderr, transient=True) as bar:
            task = bar.add_task("checking", total=len(descriptors))

            def step(label: str) -> None:
                bar.update(task, description=f"checking {label}", advance=1)

            report = publish(descriptors, who, registry=registry, policies=policies, sources=sources,
                             run_quality=not args.skip_quality, dry_run=args.dry_run, progress=step)
    _print_checks(report)
    if not report.ok:
        stderr.print(f"[red]refused:[/red] {len(report.failures)} problem(s); nothing was registered", highlight=False)
        return 2
    if args.dry_run:
        stdout.print(f"dry run: every check passed for {len(descriptors)} descriptor(s); nothing was registered", highlight=False)
        return 0
    for (product_id, version), score in report.quality_scores.items():
        stdout.print(f"   quality  {product_id} {version}: score {score:.2f}", highlight=False)
    for product_id, version, state in report.published:
        stdout.print(f"{state:>10}  {product_id} {version}", highlight=False)
    return 0



def _print_checks(report) -> None:  # noqa: ANN001
    """Passed and skipped checks to stdout, warnings and failures to stderr, each on one line."""
    for c in report.checks:
        if c.name == "publish":
            continue
        line = f"{c.product_id} {c.version}  {c.name}: {c.detail}"
        if c.status == "failed":
            stderr.print(f"  [red]FAIL[/red]  {escape(line)}", highlight=False, soft_wrap=True)
        elif c.status == "warning":
            stderr.print(f"  [yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
        elif c.name == "compatibility" and c.detail.startswith("new major"):
            stdout.print(f"  new major  {escape(line)}", highlight=False, soft_wrap=True)
        else:
            mark = "ok  " if c.status == "passed" else "skip"
            stdout.print(f"  {mark}  {escape(line)}", highlight=False, soft_wrap=True)


def cmd_diff(args: argparse.Namespace) -> int:
    from gateway import compatibility

    new = load_one(args.file)
    records = open_registry(args.registry).records(new.product_id)
    if not records:
        stdout.print(f"{new.product_id} is not registered yet: {new.version} would be its first version", highlight=False)
        return 0
    previous = records[0].descriptor
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
    if any(c.governance for c in changes):
        stdout.print("weakens governance: publishing this needs role admin", highlight=False)
    if breaking:  # who it would hit: downstream products and their recent consumers
        from gateway.cli.lineage import print_impact

        print_impact(args.registry, f"{previous.product_id}@{previous.major}", args.audit_log, args.days)
    return 1 if args.exit_code and breaking and new.major == previous.major else 0


def cmd_set_status(args: argparse.Namespace) -> int:
    product_id, version = _target(args.target)
    from gateway.lifecycle import set_status

    with _publishing(args, []) as (registry, policies, _sources):
        change = set_status(registry, policies, product_id, version, args.status, principal(args), reason=args.reason,
                            replaced_by=getattr(args, "replaced_by", ""), force=getattr(args, "force", False))
    stdout.print(change.describe(), highlight=False, markup=False)
    if change.status == "retired" and change.changed:
        stdout.print(f"queries of {product_id} at {', '.join(change.changed)} now get NOT_FOUND saying it was retired", highlight=False)
    return 0


def _target(text: str) -> tuple[str, str]:
    """``domain.name[@MAJOR|@VERSION]`` -> (product_id, version_or_major); quotes tolerated."""
    product_id, _, version = text.replace('"', "").partition("@")
    if product_id.count(".") != 1:
        raise InvalidRequest(f"'{text}' is not a product: write domain.name, domain.name@MAJOR or domain.name@VERSION")
    return product_id, version


def cmd_list(args: argparse.Namespace) -> int:
    registry = open_registry(args.registry)
    table = Table("product", "versions", "status", "source", "description")
    for product_id in registry.product_ids():
        records = registry.records(product_id)
        live = [r for r in records if r.status != "retired"]
        if not live and not args.all:
            continue
        shown = records if args.all else live
        versions = ", ".join(r.version + ("" if r.status == "active" else f" ({r.status})") for r in shown)
        newest = (live or records)[0]
        status = "retired" if not live else "active" if any(r.status == "active" for r in live) else "deprecated"
        notes = "; ".join(dict.fromkeys(r.note() for r in shown if r.status == "deprecated"))
        description = newest.descriptor.description + (f" [{notes}]" if notes else "")
        table.add_row(product_id, versions, status, newest.descriptor.source.connector, description)
    stdout.print(table)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    registry = open_registry(args.registry)
    product_id = args.product.replace('"', "").partition("@")[0]
    records = registry.records(product_id)
    if not records:
        from gateway.errors import NotFound

        raise NotFound(f"no data product '{product_id}' is registered")
    latest = registry.latest_quality(product_id)
    table = Table("version", "status", "registered", "by", "note", "quality")
    for r in records:
        when = datetime.fromtimestamp(r.registered_at, timezone.utc).strftime("%Y-%m-%d %H:%M")
        score = f"{latest[0]:.2f}" if latest and latest[1] == r.version else ""
        table.add_row(r.version, r.status, when, r.published_by or "", r.note(), score)
    stdout.print(table)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """A stored product's rules run at its source; a derived product's over its rows through the
    gateway's planner and engine (``gateway/derived_source.py``), its inputs' sources under the roots."""
    from gateway.quality import rules, run_gates
    from gateway.sources import SourceManager

    d, from_registry = load_target(args.target, args.registry)
    registry = open_registry(args.registry)
    target = Path(args.target)
    # results are stored for a registered version: named as such, or a file identical to one
    registered = from_registry or any(r.version == d.version and r.raw == d.raw for r in registry.versions(d.product_id))
    label = f"{d.product_id} {d.version}"
    if not rules(d):
        stdout.print(f"{label}: no quality rules", highlight=False)
        return 0
    named = [target] if not from_registry else [d.base_dir] if d.base_dir else []
    sources = SourceManager(_roots(args, named))
    try:
        if d.derived:
            from gateway.derived_source import DerivedSources

            catalog = registry.catalog(max_age=0).including([d])
            checking = DerivedSources(lambda: catalog, sources)
            try:
                results = run_gates(d, checking.connector_for(d))
            finally:
                checking.close()
        else:
            results = run_gates(d, sources.connector_for(d))
    finally:
        sources.close()
    for result in results:
        style = "green" if result.passed else "red" if result.blocks else "yellow"
        word = "pass" if result.passed else "skip" if result.skipped else "FAIL" if result.blocks else "warn"
        stdout.print(f"  [{style}]{word}[/{style}]  {escape(result.describe())}", highlight=False)
    failed = [r for r in results if r.blocks]
    stdout.print(f"{label}: {len(results) - len(failed)} of {len(results)} rule(s) without a blocking failure", highlight=False)
    if registered:
        score = registry.record_quality(d.product_id, d.version, results)
        stdout.print(f"{label}: quality score {score:.2f} stored", highlight=False)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """An ODCS document from a descriptor file (status ``draft``) or a registered version
    (``active``); gateway/odcs.py says what maps. Credentials never leave: the servers entry
    has host, port, database or path only."""
    from gateway import odcs

    d, registered = load_target(args.target, args.registry)
    document = odcs.export(d, status="active" if registered else "draft")
    if args.output is None:
        stdout.file.write(document)  # as is: no console wrapping or markup in a YAML document
        return 0
    try:
        args.output.write_text(document, encoding="utf-8")
    except OSError as err:
        stderr.print(f"[red]cannot write[/red] {escape(str(args.output))}: {escape(err.strerror or str(err))}")
        return 2
    stderr.print(f"wrote {escape(str(args.output))}: {d.product_id} {d.version} as ODCS {odcs.api_version()} "
                 f"({len(d.columns)} properties)", highlight=False)
    return 0
