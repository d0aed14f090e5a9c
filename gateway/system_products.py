"""System products: the ``mesh`` domain's tables (``mesh.catalog``, ``mesh.queries``, ...).

They are served from memory, not from a source, but are products like any other to a client:
listed in metadata, described by a contract (a descriptor built here, never registered), and
under policy: the global policy decides access as for any product, and a provider may narrow
its rows further for the asking principal (``mesh.queries`` shows a principal only its own
queries unless it has role ``admin``).

A provider is a function ``rows(scope) -> pyarrow.Table`` declared with ``@system_product``
in its own module; list that module in ``PROVIDERS`` so it is imported when first needed.
Rows are produced each time a query runs (a cached plan still sees new data); the table must
have the declared columns, in order, castable to the declared types.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from gateway.descriptor import Column, Descriptor, Source
from gateway.types import parse_type

SYSTEM_DOMAIN = "mesh"

PROVIDERS: tuple[str, ...] = ("gateway.query_history", "gateway.catalog_search")
"""Modules that declare system products (imported on first use)."""


@dataclass(frozen=True)
class SystemScope:
    """What a provider may look at: who asks, what they may see, and the gateway's state."""

    principal: Any  # policies.Principal
    service: Any  # gateway.service.GatewayService
    catalog: Any  # gateway.registry.Catalog at planning time
    visible: Callable[[Descriptor], bool]  # may the principal read this product?


@dataclass(frozen=True)
class SystemProduct:
    descriptor: Descriptor
    rows: Callable[[SystemScope], pa.Table]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type.arrow, nullable=not c.required) for c in self.descriptor.columns])


_PRODUCTS: dict[str, SystemProduct] = {}
_loaded = False


def system_product(
    name: str, description: str, columns: list[tuple[str, str, str]], tags: tuple[str, ...] = ("system",)
) -> Callable[[Callable[[SystemScope], pa.Table]], Callable[[SystemScope], pa.Table]]:
    """Declare ``mesh.<name>`` with ``columns`` as (name, contract type, description)."""

    def register(rows: Callable[[SystemScope], pa.Table]) -> Callable[[SystemScope], pa.Table]:
        contract = tuple(Column(n, parse_type(t), description=d) for n, t, d in columns)
        raw = {"metadata": {"name": name, "domain": SYSTEM_DOMAIN, "version": "1.0.0", "owner": "meshgate",
                            "description": description, "tags": list(tags)}}
        descriptor = Descriptor(SYSTEM_DOMAIN, name, "1.0.0", "meshgate", tuple(tags), description,
                                Source("system", "", None, None), contract, raw)
        _PRODUCTS[name] = SystemProduct(descriptor, rows)
        return rows

    return register


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in PROVIDERS:
            importlib.import_module(module)
        _loaded = True


def system_products() -> list[SystemProduct]:
    """Every declared system product, by name."""
    _load()
    return [_PRODUCTS[name] for name in sorted(_PRODUCTS)]


def find(name: str) -> SystemProduct | None:
    _load()
    return _PRODUCTS.get(name)
