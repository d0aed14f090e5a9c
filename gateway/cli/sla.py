"""``meshgate sla ...``: check products against their SLA now, or show what the monitor recorded.

``sla check [PRODUCT]`` measures each product (or one) at its source as the background monitor
does, records the checks in the registry, raises the alerts a change of state calls for (log
line, and the webhook with ``--alert-webhook``) and prints a table. Exit 0 when every product
meets its SLA, 1 when one breaches it, 2 for bad input (an unknown product).
``sla status [PRODUCT]`` prints the recorded checks without contacting any source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from gateway.cli.common import open_registry, stderr, stdout


def add_commands(commands: argparse._SubParsersAction) -> None:
    sla = commands.add_parser("sla", help="SLA monitoring: check products now, show recorded checks").add_subparsers(
        dest="action", required=True)
    check = sla.add_parser("check", help="measure freshness, availability, completeness and quality now (exit 1 on a breach)")
    check.add_argument("product", nargs="?", help="one product (domain.name); default: every product read from a source")
    check.add_argument("--registry", type=Path, default=None, help="registry file (default $MESHGATE_HOME/registry.db)")
    check.add_argument("--timeout", type=float, default=30.0, help="seconds one product's check may take (default 30)")
    check.add_argument("--alert-webhook", default=None, metavar="URL", help="POST alerts (JSON) to this URL")
    check.add_argument("--format", choices=("table", "json"), default="table")
    check.add_argument("--source-root", type=Path, action="append", default=[], metavar="DIR",
                       help="file sources must lie under one of these folders, as for `meshgate serve` (repeatable; "
                            "default: $MESHGATE_SOURCE_ROOTS, else $MESHGATE_HOME and the registry's folder)")
    status = sla.add_parser("status", help="the recorded checks (no source is contacted)")
    status.add_argument("product", nargs="?", help="one product (domain.name) with its history; default: every product's latest")
    status.add_argument("--registry", type=Path, default=None)
    status.add_argument("--history", type=int, default=10, help="checks listed for one product (default 10)")
    status.add_argument("--format", choices=("table", "json"), default="table")
    check.set_defaults(handler=cmd_check)
    status.set_defaults(handler=cmd_status)


def cmd_check(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn

    from gateway.alerts import AlertSink
    from gateway.cli.common import source_roots
    from gateway.derived_source import DerivedSources
    from gateway.sla_monitor import SlaMonitor
    from gateway.sources import SourceManager

    registry = open_registry(args.registry)
    try:
        alerts = AlertSink(args.alert_webhook)
    except ValueError as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
        return 2
    sources = SourceManager(source_roots(args.source_root, [], registry.path, []))
    checking = DerivedSources(registry.catalog, sources, timeout=args.timeout)  # derived products' rows
    monitor = SlaMonitor(registry, checking.connector_for, alerts, check_timeout=args.timeout)
    wanted = [_monitored(monitor, args.product)] if args.product else None
    total = len(wanted) if wanted else len(monitor.monitored())
    try:
        with Progress(TextColumn("checking SLAs"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      console=stderr, transient=True, disable=args.format == "json") as progress:
            task = progress.add_task("check", total=total)
            statuses = monitor.check_now(wanted, progress=lambda _status: progress.advance(task))
    finally:
        monitor.stop(timeout=args.timeout)
        checking.close()
        sources.close()
    _print(statuses, args.format)
    return 1 if any(s.breaches for s in statuses) else 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.errors import NotFound
    from gateway.sla_monitor import store_for

    registry = open_registry(args.registry)
    store = store_for(registry)
    if args.product:
        domain, _, name = args.product.partition(".")
        registry.catalog().resolve(domain, name)  # NotFound (exit 2) for an unknown product
        statuses = store.history(args.product, max(1, args.history))
        if not statuses:
            raise NotFound(f"{args.product} has not been checked yet (run `meshgate sla check {args.product}`)")
    else:
        statuses = sorted(store.latest_all().values(), key=lambda s: s.product_id)
    _print(statuses, args.format, times=True, history_of=args.product)
    return 0


def _monitored(monitor: Any, product: str):  # noqa: ANN202
    """What the monitor records ``product`` (``domain.name`` or ``domain.name@MAJOR``) under; NotFound otherwise."""
    from gateway.errors import NotFound

    domain, dot, name = product.partition(".")
    if not dot:
        raise NotFound(f"'{product}' is not a product id: write domain.product")
    descriptor = monitor.registry.catalog().resolve(domain, name.strip('"'))
    return next(key for key, d in monitor.monitored().items()
                if d.product_id == descriptor.product_id and d.major == descriptor.major)


def _print(statuses: list, fmt: str, times: bool = False, history_of: str | None = None) -> None:  # noqa: ANN001
    from gateway.sla_monitor import format_seconds

    if fmt == "json":
        stdout.print_json(json.dumps([s.to_json() for s in statuses]))
        return
    table = Table(show_lines=False)
    for column in ("product", "version", *(("checked at",) if times else ()), "freshness", "availability",
                   "completeness", "quality", "status"):
        table.add_column(column)
    for s in statuses:
        t = s.targets
        freshness = "unknown" if s.data_age_seconds is None else format_seconds(s.data_age_seconds)
        if s.data_age_seconds is not None and not s.freshness_basis.startswith("max("):
            freshness += f" ({s.freshness_basis})"
        if t.freshness is not None:
            freshness += f" (SLA {format_seconds(t.freshness)})"
        availability = "-" if s.availability is None else f"{s.availability:.2f}%"
        if t.availability is not None:
            availability += f" (SLA {t.availability:g}%)"
        completeness = "-" if s.completeness is None else f"{s.completeness:.2f}%"
        if t.completeness is not None:
            completeness += f" (SLA {t.completeness:g}%)"
        checked = [q for q in s.quality if not q.get("skipped")]
        passed = sum(1 for q in checked if q["passed"])
        quality = "-" if s.quality_score is None else f"{s.quality_score:.2f} ({passed}/{len(checked)} rules)"
        if t.quality_threshold is not None and s.quality_score is not None:
            quality += f" (SLA {t.quality_threshold:g})"
        if not s.available:
            verdict = f"[red]UNAVAILABLE[/red] {escape(s.error or '')}"
        elif s.breaches:
            verdict = "[red]BREACH[/red] " + "; ".join(f"{c}: {escape(m)}" for c, m in s.breaches.items())
        else:
            verdict = "[green]ok[/green]"
        if s.problems:
            verdict += " [yellow](" + escape("; ".join(s.problems)) + ")[/yellow]"
        checked = (s.to_json()["checked_at"],) if times else ()
        table.add_row(s.product_id, s.version, *checked, freshness, availability, completeness, quality, verdict)
    stdout.print(table)
    breaching = sum(1 for s in statuses if s.breaches)
    if history_of:  # one product's checks, newest first
        stdout.print(f"{len(statuses)} check(s) of {history_of}, {breaching} breaching its SLA")
        return
    stdout.print(f"{len(statuses)} product(s) checked, {breaching} breaching their SLA" if statuses else "no products checked")
