"""``meshgate lineage PRODUCT``: what a product is built from and what is built from it.

Reads the registry (every product is shown: whoever can read the registry file sees all of
it); the REST API's ``GET /api/v1/lineage/{product}`` answers the same for a gateway's callers,
under their policies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gateway.cli.common import open_registry, stderr, stdout


def add_commands(commands: argparse._SubParsersAction) -> None:
    lineage = commands.add_parser(
        "lineage", help="draw a product's lineage (upstream and downstream products) in the terminal, or as PNG/SVG")
    lineage.add_argument("product", help="domain.name (newest active major) or domain.name@MAJOR")
    lineage.add_argument("--direction", choices=("up", "down", "both"), default="both",
                         help="upstream (built from), downstream (read by) or both (default)")
    lineage.add_argument("--depth", type=_depth, default=3, help="edges to follow, 1-50 (default 3)")
    lineage.add_argument("--output", type=Path, default=None, help="also write the graph to this .png or .svg file")
    lineage.add_argument("--json", action="store_true", help="print the graph as JSON (the REST API's shape) instead")
    lineage.add_argument("--registry", type=Path, default=None)
    lineage.set_defaults(handler=cmd_lineage)


def _depth(text: str) -> int:
    from gateway.lineage import MAX_DEPTH

    try:
        value = int(text)
        if 1 <= value <= MAX_DEPTH:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a whole number from 1 to {MAX_DEPTH}, got '{text}'")


def cmd_lineage(args: argparse.Namespace) -> int:
    from gateway.lineage import lineage
    from gateway.lineage_drawing import FORMATS, terminal_trees, write_picture

    if args.output is not None and args.output.suffix.lower() not in FORMATS:
        stderr.print(f"[red]error:[/red] --output {args.output}: write a .png or .svg file", highlight=False)
        return 2
    graph = lineage(open_registry(args.registry).catalog(max_age=0), args.product, args.direction, args.depth)
    if args.json:
        print(json.dumps(graph.as_json(), indent=2))
    else:
        for tree in terminal_trees(graph):
            stdout.print(tree)
        stdout.print(f"{len(graph.nodes)} product(s), {len(graph.edges)} edge(s)", highlight=False)
    if args.output is not None:
        write_picture(graph, args.output)
        stderr.print(f"wrote {args.output}", highlight=False)
    return 0


def print_impact(registry_path: Path | None, product: str, audit_log: Path | None, days: int) -> None:
    """What ``meshgate product diff`` shows for a breaking change: the products downstream of
    ``product`` and the principals that queried it or them recently (from the audit log)."""
    from gateway.lineage import impact

    registry = open_registry(registry_path)
    log = audit_log or registry.path.parent / "audit.log"
    found = impact(registry.catalog(max_age=0), product, log, days)
    names = ", ".join(n.id for n in found.downstream) or "none"
    stdout.print(f"impact: downstream products ({len(found.downstream)}): {names}", highlight=False)
    if not found.consumers:
        stdout.print(f"impact: no consumer in the last {days} days (audit log {log})", highlight=False)
        return
    stdout.print(f"impact: recent consumers ({len(found.consumers)}, last {days} days, audit log {log}):", highlight=False)
    for name, queries, last, via in found.consumers:
        stdout.print(f"  {name}: {queries} quer{'y' if queries == 1 else 'ies'}, last {last}, via {', '.join(via)}",
                     highlight=False)
