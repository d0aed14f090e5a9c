"""State the planner's rules share while turning one statement into a ``Plan``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from connectors.base import Connector
from gateway.descriptor import Descriptor
from gateway.planner.plan import Binding, DerivedRead, DynamicFilter, Fragment, LocalRows
from gateway.registry import Catalog
from policies.decision import Decision


@dataclass
class PlanContext:
    """Inputs (catalog, how to get a connector) and what the rules have derived so far."""

    catalog: Catalog
    connector_for: Callable[[Descriptor], Connector]
    # (schema, name) -> the descriptor (None for information_schema) and rows of a system table
    # or system product (``information_schema.*``, ``mesh.*``), or None when there is none
    system_table: Callable[[str, str], tuple[Descriptor | None, LocalRows] | None]
    decide: Callable[[Descriptor], Decision]  # governance for the querying principal
    default_schema: str | None = None  # the domain unqualified product names resolve in
    bindings: dict[str, Binding] = field(default_factory=dict)
    fragments: list[Fragment] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    parameter_types: list[pa.DataType] = field(default_factory=list)
    dynamic_filters: list[DynamicFilter] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)  # product id -> what was decided
    derived: dict[str, DerivedRead] = field(default_factory=dict)  # product@version -> what it read

    def add_fragment(self, fragment_factory: Callable[[str], Fragment]) -> Fragment:
        """Create the next fragment with a fresh name (f0, f1, ...)."""
        fragment = fragment_factory(f"f{len(self.fragments)}")
        self.fragments.append(fragment)
        return fragment

    def binding_of(self, table_name: str) -> Binding | None:
        return self.bindings.get(table_name)
