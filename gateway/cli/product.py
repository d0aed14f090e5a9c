"""``meshgate product ...``: a data product from descriptor to published version."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from gateway.cli.common import (
    load_descriptors,
    load_one,
    load_target,
    open_registry,
    print_descriptor_errors,
    stderr,
    stdout,
)
from gateway.errors import InvalidDescriptor, MeshError


def add_commands(commands: argparse._SubParsersAction) -> None:
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
    export = product.add_parser("export", help="write a product's contract as an ODCS document (open data contract standard)")
    export.add_argument("target", help="a descriptor file, or a registered product (domain.name or domain.name@MAJOR)")
    export.add_argument("--format", choices=("odcs",), default="odcs", help="document format (default: odcs)")
    export.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: standard output)")
    export.add_argument("--registry", type=Path, default=None)

    register.set_defaults(handler=cmd_register)
    listing.set_defaults(handler=cmd_list)
    diff.set_defaults(handler=cmd_diff)
    validate.set_defaults(handler=cmd_validate)
    quality.set_defaults(handler=cmd_check)
    export.set_defaults(handler=cmd_export)


def cmd_register(args: argparse.Namespace) -> int:
    """Validate, then refuse (exit 2, every problem listed, nothing registered) a breaking change
    within a major version or a failing ``error`` quality rule; publish the rest atomically."""
    from gateway import compatibility

    registry = open_registry(args.registry)
    descriptors, errors = load_descriptors(args.paths)
    if errors:
        print_descriptor_errors(errors)
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
        print_descriptor_errors(refused)
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
            problems.append(f"{result.path}: {result.describe()}")
        elif not result.passed:
            stderr.print(f"[yellow]warning:[/yellow] {escape(label)}: {escape(result.describe())}")
    return problems


def cmd_diff(args: argparse.Namespace) -> int:
    from gateway import compatibility

    new = load_one(args.file)
    registered = open_registry(args.registry).versions(new.product_id)
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

    d = load_one(args.file)
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

    d, _ = load_target(args.target, args.registry)
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
        style = "green" if result.passed else "red" if result.blocks else "yellow"
        word = "pass" if result.passed else "skip" if result.skipped else "FAIL" if result.blocks else "warn"
        stdout.print(f"  [{style}]{word}[/{style}]  {escape(result.describe())}", highlight=False)
    failed = [r for r in results if r.blocks]
    stdout.print(f"{label}: {len(results) - len(failed)} of {len(results)} rule(s) without a blocking failure", highlight=False)
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    catalog = open_registry(args.registry).catalog()
    table = Table("product", "versions", "source", "description")
    for product_id, versions in sorted(catalog.versions.items()):
        newest = versions[0]
        table.add_row(product_id, ", ".join(v.version for v in versions), newest.source.connector, newest.description)
    stdout.print(table)
    return 0



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
