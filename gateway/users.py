"""The users file: who may connect, with which password, roles and attributes.

Format (DESIGN.md, "Principals and the default policy")::

    users:
      - name: alice
        password_hash: "scrypt$32768$8$1$<salt>$<key>"   # written by `meshgate user add`
        roles: [analyst]
        attributes: {region: DE, zone: EU, pii_training: true, team: growth}

Passwords are stored only as salted scrypt hashes (stdlib ``hashlib.scrypt``): slow and
memory-hard on purpose, so a stolen users file does not give its passwords away cheaply.  The
cost parameters are written into each hash, so they can be raised later without invalidating
existing users.

A running gateway re-reads the file when it changes (``UsersFile.get`` checks its modification
stamp), so adding a user, changing a password or a role needs no restart.  A file that became
invalid is not loaded: the last good users stay in force and the problem is logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import yaml

from policies import Principal

logger = logging.getLogger(__name__)

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
"""About 0.1 s and 32 MiB per hash on a current core: cheap for one login, costly for guessing."""

_SALT_BYTES = 16
_KEY_BYTES = 32
_MAX_COST = 2**20  # refuse absurd parameters in a hand-edited file rather than exhaust memory

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
"""No ':' (Basic auth splits on it) and nothing a log line or a policy would have to quote."""
ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
"""As policies write them: ``{user.region}``."""


class UsersFileError(ValueError):
    """The users file (or a ``user add`` argument) is invalid; the message says where and why."""


# --- password hashes --------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=128 * r * (n + p) + 2**20
    )


def hash_password(password: str) -> str:
    """A new salted hash of ``password``: ``scrypt$N$r$p$<salt base64>$<key base64>``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, key) of a ``scrypt$...`` hash; raises UsersFileError when malformed."""
    parts = encoded.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = (int(part) for part in parts[1:4])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:  # binascii.Error is a ValueError
        raise UsersFileError("not a scrypt$N$r$p$salt$key hash (write it with `meshgate user add`)") from None
    if not (1 < n <= _MAX_COST and n & (n - 1) == 0 and 0 < r <= 64 and 0 < p <= 64 and salt and key):
        raise UsersFileError(f"scrypt parameters out of range (N={n}, r={r}, p={p})")
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``, compared in constant time."""
    n, r, p, salt, key = _parse_hash(encoded)
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
"""Verified against when the user does not exist, so an unknown name costs what a wrong password
costs and response times do not tell which names exist."""


# --- users ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """One entry of the users file."""

    name: str
    password_hash: str
    roles: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def principal(self) -> Principal:
        """What policies see: the name, roles and attributes, nothing of the password."""
        return Principal(self.name, self.roles, MappingProxyType(dict(self.attributes)))


def parse_attribute(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line, typed as YAML would type it for policies:
    true/false are booleans, whole numbers are ints, anything else is a string (so a region
    ``NO`` stays the string 'NO', unlike YAML 1.1)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not ATTRIBUTE_NAME.match(key):
        raise UsersFileError(f"attribute '{text}': write key=value with a key matching [a-z][a-z0-9_]*")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", value):
        return key, int(value)
    return key, value


def load_users(path: Path) -> dict[str, User]:
    """Every user of the file at ``path`` by name; raises UsersFileError naming each problem."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsersFileError(f"{path}: cannot read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UsersFileError(f"{path}: not valid YAML: {error}") from None
    document = {"users": []} if document is None else document
    if not isinstance(document, dict) or set(document) != {"users"} or not isinstance(document["users"], list):
        raise UsersFileError(f"{path}: expected a mapping with one key, users: a list of users")
    users: dict[str, User] = {}
    problems: list[str] = []
    for index, entry in enumerate(document["users"]):
        where = f"users[{index}]"
        try:
            user = _user(entry, where)
        except UsersFileError as error:
            problems.append(str(error))
            continue
        if user.name in users:
            problems.append(f"{where}.name: '{user.name}' is listed twice")
        users[user.name] = user
    if problems:
        raise UsersFileError(f"{path}: " + "; ".join(problems))
    return users


def _user(entry: object, where: str) -> User:
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: expected a mapping with name, password_hash, roles, attributes")
    unknown = set(entry) - {"name", "password_hash", "roles", "attributes"}
    if unknown:
        raise UsersFileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name, password_hash = entry.get("name"), entry.get("password_hash")
    roles, attributes = entry.get("roles") or [], entry.get("attributes") or {}
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise UsersFileError(f"{where}.name: a user name of letters, digits and _ . @ - is required")
    if not isinstance(password_hash, str):
        raise UsersFileError(f"{where}.password_hash: required (write it with `meshgate user add`)")
    try:
        _parse_hash(password_hash)
    except UsersFileError as error:
        raise UsersFileError(f"{where}.password_hash: {error}") from None
    if not isinstance(roles, list) or not all(isinstance(role, str) and role for role in roles):
        raise UsersFileError(f"{where}.roles: expected a list of role names")
    if not isinstance(attributes, dict) or not all(isinstance(k, str) and ATTRIBUTE_NAME.match(k) for k in attributes):
        raise UsersFileError(f"{where}.attributes: expected a mapping with keys matching [a-z][a-z0-9_]*")
    return User(name, password_hash, frozenset(roles), MappingProxyType(dict(attributes)))


def add_user(
    path: Path, name: str, password: str, roles: Sequence[str], attributes: Mapping[str, Any]
) -> bool:
    """Add ``name`` to the users file (created if missing), or replace its entry; True when new.

    The file is rewritten atomically (a running gateway never reads half of it) and readable by
    its owner only.
    """
    if not USER_NAME.match(name):
        raise UsersFileError(f"user name '{name}': use letters, digits and _ . @ - (no ':')")
    if not password:
        raise UsersFileError("the password is empty")
    users = load_users(path) if path.exists() else {}
    created = name not in users
    users[name] = User(name, hash_password(password), frozenset(roles), MappingProxyType(dict(attributes)))
    write_users(path, users.values())
    return created


def write_users(path: Path, users: Iterable[User]) -> None:
    """Write ``users`` to ``path`` atomically, mode 0600."""
    document = {
        "users": [
            {
                "name": user.name,
                "password_hash": user.password_hash,
                "roles": sorted(user.roles),
                "attributes": dict(user.attributes),
            }
            for user in sorted(users, key=lambda u: u.name)
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:  # mkstemp creates it 0600
            yaml.safe_dump(document, stream, sort_keys=False, allow_unicode=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class UsersFile:
    """The users of a file, re-read whenever the file changes; safe to share between threads.

    The first load must succeed (a server should not start with a broken users file); later a
    broken or vanished file keeps the last good users, and the error is logged once per change.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self._users = load_users(path)

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def get(self, name: str) -> User | None:
        """The user called ``name`` as the file says now, or None."""
        self._reload_if_changed()
        return self._users.get(name)

    def __len__(self) -> int:
        self._reload_if_changed()
        return len(self._users)

    def _reload_if_changed(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._users = load_users(self.path)
            except UsersFileError as error:
                logger.error("users file not reloaded, keeping the previous users: %s", error)
                return
            logger.info("users file reloaded: %d users", len(self._users))
