"""The demo's users: three principals the shipped policies treat differently.

``meshgate demo`` serves with authentication on, like a real deployment, so the demo shows
governance at work: alice (trained for personal data) reads ``customers.customers`` unmasked,
bob (no ``pii_training``) is refused it, carol is an administrator.

Their passwords are drawn at random the first time and kept in ``demo-passwords.yaml`` in the demo
folder (mode 0600), so they stay the same across runs; the users file next to it holds only
salted hashes, like any users file.  Users added to that file by hand are kept.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from gateway.users import User, UsersFileError, hash_password, load_users, verify_password, write_users


@dataclass(frozen=True)
class DemoUser:
    name: str
    roles: tuple[str, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


DEMO_USERS = (
    DemoUser("alice", ("analyst",), {"region": "DE", "zone": "EU", "pii_training": True, "team": "growth"},
             "trained for personal data: reads pii products unmasked"),
    DemoUser("bob", ("analyst",), {"region": "US", "zone": "US", "team": "finance"},
             "no pii_training: pii products are refused, pii columns masked"),
    DemoUser("carol", ("admin",), {"region": "DE", "zone": "EU"}, "administrator: may read every product"),
)


@dataclass(frozen=True)
class DemoAccounts:
    users_file: Path
    passwords_file: Path
    passwords: dict[str, str]  # name -> password


def ensure_demo_users(data_dir: Path) -> DemoAccounts:
    """The demo users file and passwords under ``data_dir``, created or repaired as needed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    passwords_file, users_file = data_dir / "demo-passwords.yaml", data_dir / "users.yaml"
    passwords = _passwords(passwords_file)
    try:
        users = load_users(users_file) if users_file.exists() else {}
    except UsersFileError:
        users = {}  # a broken demo file is rewritten, not fatal
    changed = False
    for demo in DEMO_USERS:
        current = users.get(demo.name)
        if (
            current is None
            or current.roles != frozenset(demo.roles)
            or dict(current.attributes) != dict(demo.attributes)
            or not verify_password(passwords[demo.name], current.password_hash)
        ):
            users[demo.name] = User(demo.name, hash_password(passwords[demo.name]), frozenset(demo.roles), demo.attributes)
            changed = True
    if changed:
        write_users(users_file, users.values())
    return DemoAccounts(users_file, passwords_file, passwords)


def _passwords(path: Path) -> dict[str, str]:
    """The stored demo passwords, with any missing one drawn now (written back 0600)."""
    stored: dict[str, str] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            stored = {str(k): str(v) for k, v in loaded.items() if isinstance(v, str) and v}
    missing = [demo.name for demo in DEMO_USERS if demo.name not in stored]
    if missing:
        stored.update({name: secrets.token_urlsafe(12) for name in missing})
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            yaml.safe_dump(stored, stream, sort_keys=True)
    os.chmod(path, 0o600)  # also when it was created some other way
    return stored
