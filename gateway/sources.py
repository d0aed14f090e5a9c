"""Open and keep one connector per source, so connections are pooled across queries.

A product's ``uri`` may reference secrets as ``${ENV_VAR}``; they are substituted here, at
connect time, so they never land in the registry, in EXPLAIN or in error messages.

File sources are opened only when they lie under the manager's source roots
(``gateway/source_roots.py``); a product that does not is refused with PERMISSION_DENIED.
"""

from __future__ import annotations

import os
import re
import threading

from connectors import open_connector
from connectors.base import Connector, SourceConfig
from gateway.descriptor import Descriptor
from gateway.errors import SourceUnavailable
from gateway.source_roots import SourceRoots

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""``${VAR}`` in a uri: substituted from the gateway's environment when it connects."""


class SourceManager:
    """Connectors by source, created on first use and shared by every query."""

    def __init__(self, roots: SourceRoots | None = None) -> None:
        """``roots``: where file sources may live. None sets no fence: for tools reading sources
        their operator named; the gateway (``GatewayService``) and publishing always pass roots."""
        self.roots = roots
        self._connectors: dict[tuple[str, str, str], Connector] = {}
        self._lock = threading.Lock()

    def connector_for(self, descriptor: Descriptor) -> Connector:
        source = descriptor.source
        uri = _substitute_env(source.uri, descriptor.product_id)
        base_dir = str(descriptor.base_dir) if descriptor.base_dir else ""
        key = (source.connector, uri, base_dir)
        with self._lock:
            connector = self._connectors.get(key)
            if connector is None:
                allowed: tuple[str, ...] = ()
                if self.roots is not None:
                    self.roots.check(descriptor, uri)
                    allowed = tuple(str(r) for r in self.roots.roots)
                config = SourceConfig(source.connector, uri, descriptor.base_dir, allowed)
                connector = open_connector(config)
                self._connectors[key] = connector
            return connector

    def close(self) -> None:
        with self._lock:
            for connector in self._connectors.values():
                connector.close()
            self._connectors.clear()


def _substitute_env(uri: str, product_id: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise SourceUnavailable(f"source of {product_id}: environment variable {name} (used in its uri) is not set")
        return os.environ[name]

    return ENV_REFERENCE.sub(value, uri)
