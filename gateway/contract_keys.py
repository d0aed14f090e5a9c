"""Primary and foreign keys as the contracts declare them, for the metadata calls BI tools make.

A contract column with ``primary_key: true`` is part of its product's primary key (several such
columns form a composite key, in contract order); ``references: domain.product.column`` makes a
single-column foreign key to the newest version of that product.  A reference to a product or
column that is not registered is left out: a tool would fail to follow it.

Keys are listed for every name GetTables lists (the unpinned name and each pinned major), and
named as PostgreSQL names them (``<table>_pkey``, ``<table>_<column>_fkey``).  The gateway is
read-only, so no key has update or delete actions.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.descriptor import Descriptor
from gateway.names import CATALOG
from gateway.registry import Catalog
from gateway.system_tables import Visible, listed_relations


@dataclass(frozen=True)
class TableRef:
    catalog: str
    schema: str
    table: str


@dataclass(frozen=True)
class TableFilter:
    """Which tables a key request is about: None matches any catalog or schema, as the Flight
    SQL spec says of an omitted one (an empty string then matches nothing: every table is in
    catalog ``mesh`` and a domain)."""

    catalog: str | None
    schema: str | None
    table: str

    def matches(self, ref: TableRef) -> bool:
        return (
            self.table == ref.table
            and (self.catalog is None or self.catalog == ref.catalog)
            and (self.schema is None or self.schema == ref.schema)
        )


@dataclass(frozen=True)
class KeyColumn:
    """One column of a table's primary key."""

    table: TableRef
    column: str
    sequence: int  # 1-based position in the key
    name: str


@dataclass(frozen=True)
class ForeignKey:
    """A single-column foreign key: ``foreign.foreign_column`` references ``primary.primary_column``."""

    primary: TableRef
    primary_column: str
    primary_key_name: str | None  # the referenced table's key, when the column is all of it
    foreign: TableRef
    foreign_column: str
    name: str


def _pk_name(table: str) -> str:
    return f"{table}_pkey"


def _pk_columns(descriptor: Descriptor) -> list[str]:
    return [c.name for c in descriptor.columns if c.primary_key]


def _everything(descriptor: Descriptor) -> bool:
    return True


def primary_keys(catalog: Catalog, where: TableFilter, visible: Visible = _everything) -> list[KeyColumn]:
    """The key columns of the tables ``where`` selects among those ``visible`` (the products the
    asking principal may read, as GetTables lists them), ordered as GetPrimaryKeys wants."""
    keys = [
        KeyColumn(ref, column, position, _pk_name(name))
        for domain, name, descriptor in listed_relations(catalog, visible)
        if where.matches(ref := TableRef(CATALOG, domain, name))
        for position, column in enumerate(_pk_columns(descriptor), start=1)
    ]
    return sorted(keys, key=lambda k: (k.table.catalog, k.table.schema, k.table.table, k.name, k.sequence))


def foreign_keys(catalog: Catalog, primary: TableFilter | None = None, foreign: TableFilter | None = None,
                 visible: Visible = _everything) -> list[ForeignKey]:
    """Declared references whose referenced side matches ``primary`` and whose referencing side
    matches ``foreign`` (None: any), both sides ``visible`` (a reference to a product the
    principal may not read would reveal it), ordered by the referencing table (callers re-sort
    for imported keys)."""
    keys: list[ForeignKey] = []
    for domain, name, descriptor in listed_relations(catalog, visible):
        referencing = TableRef(CATALOG, domain, name)
        if foreign is not None and not foreign.matches(referencing):
            continue
        for column in descriptor.columns:
            target = _referenced(catalog, column.spec.get("references"), visible)
            if target is None or (primary is not None and not primary.matches(target[0])):
                continue
            referenced, referenced_column, target_pk = target
            keys.append(
                ForeignKey(
                    referenced,
                    referenced_column,
                    _pk_name(referenced.table) if target_pk == [referenced_column] else None,
                    referencing,
                    column.name,
                    f"{name}_{column.name}_fkey",
                )
            )
    return sorted(keys, key=lambda k: (k.foreign.catalog, k.foreign.schema, k.foreign.table, k.name))


def _referenced(catalog: Catalog, reference: object, visible: Visible) -> tuple[TableRef, str, list[str]] | None:
    """(table, column, that table's key columns) a ``references`` value names, if registered and visible."""
    if not isinstance(reference, str) or reference.count(".") != 2:
        return None
    domain, product, column = reference.split(".")
    versions = catalog.versions.get(f"{domain}.{product}")
    if not versions or column not in {c.name for c in versions[0].columns} or not visible(versions[0]):
        return None
    return TableRef(CATALOG, domain, product), column, _pk_columns(versions[0])
