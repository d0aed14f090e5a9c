"""``meshgate policy check/test``: governance decisions and policy test cases, without a server."""

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
    offline_service,
    principal_from_flags,
    stderr,
    stdout,
    users_lookup,
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    policy = commands.add_parser("policy", help="check and test governance without a server").add_subparsers(dest="action", required=True)
    check = policy.add_parser("check", help="print each product's decision and the governed query, without running it (exit 0 allowed, 1 denied, 2 bad input)")
    add_principal_options(check)
    check.add_argument("--query", required=True, help="the statement (PostgreSQL dialect)")
    check.add_argument("--format", choices=("text", "json"), default="text")
    add_policy_options(check)
    cases = policy.add_parser("test", help="run YAML policy test cases against the registry's sources (exit 0 all passed, 1 a case failed, 2 bad input)")
    cases.add_argument("path", type=Path, help="a case file, or a folder searched for *.yaml case files")
    add_policy_options(cases)
    cases.add_argument("--audit-log", type=Path, default=None, help="audit log for the queries the cases run (default: audit.log beside the registry)")

    check.set_defaults(handler=cmd_policy_check)
    cases.set_defaults(handler=cmd_policy_test)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.users import UsersFileError

    try:
        principal = principal_from_flags(args)
    except (FlagError, UsersFileError) as err:
        stderr.print(f"[red]error:[/red] {escape(str(err))}", markup=True, highlight=False)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory(prefix="meshgate-policy-") as scratch:  # nothing runs, nothing to audit
        service = offline_service(args, Path(scratch) / "audit.log")
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
        stdout.print(f"{escape(p.product.product_id)}@{escape(p.product.version)}: {verdict}", highlight=False)
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
        lookup = users_lookup(args.users)
        cases = load_cases(args.path)
        principals = [principal_of(c.principal, lookup, c.where) for c in cases]
    except (CaseFileError, UsersFileError) as err:
        stderr.print("[red]error:[/red] invalid policy test cases:", markup=True)
        stderr.print(str(err), markup=False, highlight=False, soft_wrap=True)
        return 2
    service = offline_service(args, args.audit_log)
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
            escape(outcome.case.name),
            escape(outcome.principal), escape(expected), escape(outcome.got),
        )
    stdout.print(table)
    failed = [o for o in outcomes if not o.passed]
    for outcome in failed:
        stdout.print(f"[red]FAIL[/red] {escape(outcome.case.where)} {escape(outcome.case.name)}:")
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

