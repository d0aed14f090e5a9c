"""``meshgate user add``: write a users file entry with a salted password hash."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape

from gateway.cli.common import attribute, stderr, stdout


def add_commands(commands: argparse._SubParsersAction) -> None:
    user = commands.add_parser("user", help="manage a users file").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user, or replace one, with a salted password hash")
    add.add_argument("name", help="the user name clients log in with")
    add.add_argument("--users", type=Path, required=True, help="the users file (created if missing)")
    add.add_argument("--role", action="append", required=True, help="a role (repeatable)")
    add.add_argument("--attr", action="append", default=[], type=attribute, metavar="KEY=VALUE",
                     help="an attribute policies see as {user.KEY} (repeatable; true/false and whole numbers are typed)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(handler=cmd_user_add)


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

