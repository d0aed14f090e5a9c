"""``information_schema`` over the registry: what SHOW, DESCRIBE and SQL tools read; and the
one place a system relation (``information_schema.*`` or a ``mesh.*`` system product) is found.

Built from the catalog snapshot (never from the sources), so metadata answers even when a
source is down.  Every active major of a product is listed twice over: the unpinned name (the
newest major) and ``name@MAJOR``; system products (``gateway/system_products.py``) follow.
"""

from __future__ import annotations

from typing import Callable

import pyarrow as pa

from gateway.descriptor import Descriptor
from gateway.names import CATALOG, SYSTEM_SCHEMA
from gateway.planner.plan import LocalRows
from gateway.registry import Catalog
from gateway.system_products import SYSTEM_DOMAIN, SystemScope, find, system_products


Visible = Callable[[Descriptor], bool]
"""Whether the asking principal may read a product: metadata lists only those (policy-filtered)."""


def _everything(descriptor: Descriptor) -> bool:
    return True


def listed_relations(catalog: Catalog, visible: Visible = _everything) -> list[tuple[str, str, Descriptor]]:
    """(domain, table name, descriptor) for every name a client may query."""
    relations: list[tuple[str, str, Descriptor]] = []
    for product in catalog.products():
        if not visible(product):
            continue
        relations.append((product.domain, product.name, product))
        majors = catalog.majors(product.product_id)
        for major in majors:
            relations.append((major.domain, f"{major.name}@{major.major}", major))
    relations += [(SYSTEM_DOMAIN, p.descriptor.name, p.descriptor) for p in system_products() if visible(p.descriptor)]
    return relations


def system_relation(catalog: Catalog, schema: str, name: str, scope: SystemScope) -> tuple[Descriptor | None, LocalRows] | None:
    """``information_schema.<name>`` (no descriptor: not a product) or the system product
    ``mesh.<name>`` (its descriptor, for policy and metadata), with its rows; None if unknown."""
    if schema == SYSTEM_SCHEMA:
        table = system_table(catalog, name, scope.visible)
        return None if table is None else (None, LocalRows.of(table))
    product = find(name) if schema == SYSTEM_DOMAIN else None
    if product is None:
        return None
    return product.descriptor, LocalRows(product.schema, lambda: product.rows(scope))


def system_table(catalog: Catalog, name: str, visible: Visible = _everything) -> pa.Table | None:
    if name == "schemata":
        schemas = sorted({domain for domain, _, _ in listed_relations(catalog, visible)}) + [SYSTEM_SCHEMA]
        return pa.table({"catalog_name": [CATALOG] * len(schemas), "schema_name": schemas})
    relations = listed_relations(catalog, visible)
    if name == "tables":
        return pa.table(
            {
                "table_catalog": [CATALOG] * len(relations),
                "table_schema": [r[0] for r in relations],
                "table_name": [r[1] for r in relations],
                "table_type": ["VIEW" if r[2].source.connector == "mesh" else "BASE TABLE" for r in relations],
                "remarks": [r[2].description for r in relations],
            }
        )
    if name == "columns":
        rows = [
            (domain, table, i + 1, column)
            for domain, table, d in relations
            for i, column in enumerate(d.columns)
        ]
        return pa.table(
            {
                "table_catalog": pa.array([CATALOG] * len(rows), pa.string()),
                "table_schema": pa.array([r[0] for r in rows], pa.string()),
                "table_name": pa.array([r[1] for r in rows], pa.string()),
                "column_name": pa.array([r[3].name for r in rows], pa.string()),
                "ordinal_position": pa.array([r[2] for r in rows], pa.int32()),
                "data_type": pa.array([r[3].type.sql for r in rows], pa.string()),
                "is_nullable": pa.array(["NO" if r[3].required else "YES" for r in rows], pa.string()),
                "column_comment": pa.array([r[3].description for r in rows], pa.string()),
            }
        )
    return None
