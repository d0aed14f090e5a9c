"""The identity a query runs under.

Policies see a principal's roles and attributes (``{user.region}`` and the like); the gateway
passes the same object from the protocol layer down to the planner so that no layer has to
re-authenticate or guess who is asking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name, its roles and the attributes policies may read."""

    name: str
    roles: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


ANONYMOUS = Principal("anonymous", frozenset({"public"}))
"""Every caller of a server started with ``--insecure-no-auth``; policies still apply to it."""
