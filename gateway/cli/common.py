"""What every ``meshgate`` command shares: the consoles, state locations, descriptor loading."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from gateway.errors import InvalidDescriptor
from gateway.home import meshgate_home

stderr = Console(stderr=True)
stdout = Console()

DEFAULT_PORT = 32010
DEFAULT_HTTP_PORT = 8080


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


def attribute(text: str) -> tuple[str, object]:
    from gateway.users import UsersFileError, parse_attribute

    try:
        return parse_attribute(text)
    except UsersFileError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=Path, default=None, help="users file the principals are looked up in")
    parser.add_argument("--registry", type=Path, default=None, help="registry file (default $MESHGATE_HOME/registry.db)")
    parser.add_argument("--policies", type=Path, default=None, help="policy directory (default: the packaged policies)")


def add_principal_options(parser: argparse.ArgumentParser, user_default: str | None = None) -> None:
    """``--user`` (required unless given a default) and, without ``--users``, ``--role``/``--attr``."""
    if user_default is None:
        parser.add_argument("--user", required=True, help="the principal: a user of --users, or 'anonymous'")
    else:
        parser.add_argument("--user", default=user_default, help=f"the principal: a user of --users, or 'anonymous' (default: {user_default})")
    parser.add_argument("--role", action="append", default=[], help="without --users: a role of --user (repeatable)")
    parser.add_argument("--attr", action="append", default=[], type=attribute, metavar="KEY=VALUE",
                        help="without --users: an attribute of --user (repeatable)")


def open_registry(path: Path | None):  # noqa: ANN202 - avoids importing the registry for --help
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


def load_one(path: Path):  # noqa: ANN202
    descriptors, errors = load_descriptors([path])
    if errors:
        raise errors[0]
    if len(descriptors) != 1:
        raise InvalidDescriptor(str(path), [f"expected one descriptor file, found {len(descriptors)}"])
    return descriptors[0]


def load_target(target: str, registry: Path | None):  # noqa: ANN201
    """A descriptor file, or else a registered product (``domain.name`` or ``domain.name@MAJOR``):
    (the descriptor, whether it came from the registry)."""
    path = Path(target)
    if path.exists():
        return load_one(path), False
    domain, dot, name = target.partition(".")
    if not dot:
        raise InvalidDescriptor(target, ["no such file, and not a product name like domain.name"])
    return open_registry(registry).catalog(max_age=0).resolve(domain, name.strip('"')), True


def print_descriptor_errors(errors: list[InvalidDescriptor]) -> None:
    for err in errors:
        stderr.print(f"[red]invalid descriptor[/red] {err.source}:")
        for problem in err.problems:
            stderr.print(f"  - {problem}", markup=False)
    stderr.print(f"nothing was registered ({len(errors)} file(s) with errors)")


def offline_service(args: argparse.Namespace, audit_log: Path | None):  # noqa: ANN202
    """A GatewayService over the registry and policies of the flags, with no server; it audits
    to ``audit_log`` (default: audit.log beside the registry)."""
    from gateway.audit import AuditLog
    from gateway.service import GatewayService
    from policies.engine import PolicyEngine

    registry = open_registry(args.registry)
    policies = PolicyEngine.load(args.policies)
    return GatewayService(registry, policies=policies, audit=AuditLog(audit_log or registry.path.parent / "audit.log"))


def users_lookup(users_file: Path | None):  # noqa: ANN202
    """name -> Principal | None from the users file; None without one. Raises UsersFileError."""
    if users_file is None:
        return None
    from gateway.users import UsersFile

    users = UsersFile(users_file)
    return lambda name: (user.principal() if (user := users.get(name)) is not None else None)



class FlagError(ValueError):
    """Flags that name nothing or contradict each other; the command exits 2 with this message."""


def principal_from_flags(args: argparse.Namespace):  # noqa: ANN201 - avoids importing policies for --help
    """The principal ``--user`` names: a user of ``--users``, one described by ``--role``/``--attr``,
    or ``anonymous``. Raises FlagError (and UsersFileError for a bad users file)."""
    from policies import ANONYMOUS, Principal

    lookup = users_lookup(args.users)
    if lookup is not None:
        if args.role or args.attr:
            raise FlagError("--role/--attr describe a principal without --users; with --users the file says")
        principal = lookup(args.user)
        if principal is None:
            raise FlagError(f"no user '{args.user}' in {args.users}")
        return principal
    if args.role or args.attr:
        return Principal(args.user, frozenset(args.role), dict(args.attr))
    if args.user == ANONYMOUS.name:
        return ANONYMOUS
    raise FlagError(f"who is '{args.user}'? give --users FILE, or describe the principal with --role/--attr")


def source_roots(given: list[Path], named: list[Path], registry: Path, forbidden: list[Path]):  # noqa: ANN201
    """The source roots of a command: ``--source-root`` folders (default: $MESHGATE_SOURCE_ROOTS,
    os.pathsep-separated, else $MESHGATE_HOME and the registry's folder) plus the folders of the
    descriptors or data the operator ``named``; the registry, its audit log and the ``forbidden``
    files (the users file) are never sources."""
    from gateway.source_roots import SourceRoots, roots_of_paths, state_files

    if not given:
        env = os.environ.get("MESHGATE_SOURCE_ROOTS", "")
        given = [Path(p) for p in env.split(os.pathsep) if p] or [meshgate_home(), registry.parent]
    return SourceRoots.of([*given, *roots_of_paths(named)], [*state_files(registry), *forbidden])
