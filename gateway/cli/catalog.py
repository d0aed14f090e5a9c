"""``meshgate catalog search``: find data products, offline, against the registry file and the
audit log beside it (usage), as a principal (only products it may read are shown)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from gateway.cli.common import (
    FlagError,
    add_policy_options,
    add_principal_options,
    meshgate_home,
    principal_from_flags,
    stderr,
    stdout,
)


def _limit(text: str) -> int:
    from gateway.catalog_search import MAX_LIMIT

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_LIMIT}, got '{text}'")
    return value


def add_commands(commands: argparse._SubParsersAction) -> None:
    catalog = commands.add_parser("catalog", help="find data products across domains").add_subparsers(dest="action", required=True)
    search = catalog.add_parser(
        "search", help="search products by name, description, columns, tags, owner and domain, ranked by relevance, usage and health",
        description="Without TERMS, lists every product by popularity and health. Only products the principal "
                    "(--user, default anonymous) may read are shown.",
    )
    search.add_argument("terms", nargs="*", metavar="TERMS", help="words to look for (e.g. customer revenue)")
    search.add_argument("--domain", action="append", default=[], help="only these domains (repeatable or comma-separated)")
    search.add_argument("--tag", action="append", default=[], help="only products with all these tags (repeatable or comma-separated)")
    search.add_argument("--owner", action="append", default=[], help="only products of this owner (its address, or the part before @)")
    search.add_argument("--limit", type=_limit, default=20, help="at most this many results (default 20)")
    search.add_argument("--format", choices=("table", "json"), default="table")
    add_policy_options(search)
    add_principal_options(search, user_default="anonymous")
    search.add_argument("--audit-log", type=Path, default=None,
                        help="the gateway's audit log, for usage (default: audit.log beside the registry)")
    search.set_defaults(handler=cmd_catalog_search)


def cmd_catalog_search(args: argparse.Namespace) -> int:
    from gateway.catalog_search import CatalogSearch, registry_health
    from gateway.registry import Registry
    from gateway.usage import usage_index
    from gateway.users import UsersFileError
    from policies.engine import PolicyEngine

    try:
        principal = principal_from_flags(args)
    except (FlagError, UsersFileError) as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return 2
    path = args.registry or meshgate_home() / "registry.db"
    if not path.is_file():
        stderr.print(f"[red]error:[/red] no registry at {escape(str(path))} (give --registry FILE, or register products first: "
                     "meshgate product register)", highlight=False)
        return 2
    registry = Registry(path)
    policies = PolicyEngine.load(args.policies)
    search = CatalogSearch(registry.catalog, usage_index(args.audit_log or path.parent / "audit.log"), registry_health(registry))
    results = search.search(
        " ".join(args.terms),
        domains=_listed(args.domain), tags=_listed(args.tag), owners=_listed(args.owner), limit=args.limit,
        may_read=lambda descriptor: policies.decide(principal, descriptor).allowed,
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(results.to_json(), indent=2, ensure_ascii=False) + "\n")
        return 0
    if not results.hits:
        stdout.print(f"no products match (searched as {escape(principal.name)})", highlight=False)
        return 0
    table = Table(box=None, pad_edge=False)
    table.add_column("product", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("quality", no_wrap=True)
    table.add_column("consumers", justify="right", no_wrap=True)
    table.add_column("about", overflow="fold", ratio=1)
    for hit in results.hits:
        quality = f"{hit.health.quality_score:.2f}" if hit.health.quality_score is not None else "-"
        if hit.health.sla_met is False:
            quality += " [red]SLA breached[/red]"
        about = [escape(hit.descriptor.description or "(no description)")]
        if hit.descriptor.tags:
            about.append(f"[dim]tags:[/dim] {escape(', '.join(hit.descriptor.tags))}")
        if hit.why:
            about.append(f"[dim]why:[/dim] {escape('; '.join(hit.why))}")
        table.add_row(escape(hit.product_id), escape(hit.descriptor.version), quality, str(hit.consumers), "\n".join(about))
    stdout.print(table)
    shown = len(results.hits)
    stdout.print(f"{shown} of {results.total} matching product{'s' if results.total != 1 else ''} "
                 f"(as {escape(principal.name)}, {results.search_time_ms:.1f} ms)", highlight=False)
    return 0


def _listed(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
