"""The ``meshgate`` command: serve the mesh, run the demo, query, manage products, users and policies.

Each command group lives in its own module with an ``add_commands(subparsers)`` that adds its
parsers and sets each one's ``handler``; this module only assembles them and maps errors to exit
codes: 0 success, 1 a query or server failure, 2 bad input (usage, invalid descriptor, invalid
SQL, a refused publication, deprecation or retirement) with a message on stderr saying what was
wrong and where. ``meshgate sla check``: 0 every product meets its SLA, 1 one breaches it, 2 bad
input. ``meshgate policy check``: 0
allowed, 1 denied, 2 bad input; ``meshgate policy test``: 0 every case passed, 1 a case failed,
2 bad input.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from gateway import __version__
from gateway.cli import catalog, lineage, policy, product, query, serve, sla, top, user
from gateway.cli.common import load_descriptors, print_descriptor_errors, stderr
from gateway.errors import InvalidDescriptor, MeshError
from policies.loader import PolicyError

__all__ = ["build_parser", "load_descriptors", "main"]

COMMAND_GROUPS = (serve, query, top, product, catalog, lineage, policy, user, sla)
"""The modules whose ``add_commands`` make up the command line, in ``--help`` order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshgate", description="A federated Flight SQL gateway for a data mesh.")
    parser.add_argument("--version", action="version", version=f"meshgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InvalidDescriptor as err:
        print_descriptor_errors([err])
        return 2
    except PolicyError as err:
        stderr.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
    except MeshError as err:
        stderr.print(f"[red]error:[/red] {err.message}")
        return 2 if err.status in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION") else 1
    except KeyboardInterrupt:
        return 130
