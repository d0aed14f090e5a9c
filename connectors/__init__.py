"""Source connectors, found as plugins.

A source kind is a ``Connector`` subclass registered under the entry-point group
``meshgate.connectors`` (``kind = "module:Class"``), so a new source is a package that declares
one entry point; meshgate's own five are declared the same way in ``pyproject.toml``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from connectors.base import Connector, SourceConfig
from gateway.errors import Unsupported

ENTRY_POINT_GROUP = "meshgate.connectors"


@lru_cache(maxsize=1)
def _registered() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    """The source kinds installed plugins provide."""
    return sorted(_registered())


def connector_class(kind: str) -> type[Connector]:
    """The connector class registered for ``kind`` (imported on first use)."""
    entry = _registered().get(kind)
    if entry is None:
        known = ", ".join(known_kinds()) or "none: is meshgate installed (pip install -e .)?"
        raise Unsupported(
            f"unknown connector '{kind}' (no plugin in entry-point group {ENTRY_POINT_GROUP}); "
            f"known connectors: {known}"
        )
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise TypeError(f"entry point {entry.value} for connector '{kind}' is not a Connector subclass")
    return cls


def open_connector(config: SourceConfig) -> Connector:
    """A connector for one source; it connects lazily, on its first scan."""
    return connector_class(config.connector)(config)


__all__ = ["ENTRY_POINT_GROUP", "connector_class", "known_kinds", "open_connector"]
