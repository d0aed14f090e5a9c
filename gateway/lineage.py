"""Lineage: which data products are built from which.

Edges come from two places: a product's ``spec.input_ports`` (declared: "built from") and a
derived product's ``spec.source.query`` (exact: the products it reads, parsed with sqlglot).
Each active major version of a product is a node, named as SQL names it: ``domain.name`` for the
newest active major, ``domain.name@MAJOR`` for an older one still active.  An edge points from
the upstream product to the downstream one (the way data flows).

The same graph answers three questions: lineage (``GET /api/v1/lineage/{product}``,
``meshgate lineage``), impact (what a breaking change to a product hits downstream, for
``meshgate product diff``) and, at registration, whether a derived product reads only products
that exist and never itself (``check_derived``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway.descriptor import Descriptor
from gateway.errors import InvalidDescriptor, MeshError, NotFound
from gateway.names import CATALOG, SYSTEM_SCHEMA

if TYPE_CHECKING:
    from gateway.registry import Catalog

DIRECTIONS = ("up", "down", "both")
MAX_DEPTH = 50
INPUT_PORT, QUERY = "input_port", "query"


@dataclass(frozen=True)
class Node:
    """One active major version of a product (or a reference that resolves to none: ``missing``)."""

    id: str  # domain.name, or domain.name@MAJOR for an older active major
    product_id: str
    version: str | None  # None for a missing product
    kind: str  # "source" | "derived" | "missing" | "hidden"
    description: str = ""
    owner: str = ""
    connector: str = ""

    def as_json(self, distance: int | None = None) -> dict[str, object]:
        if self.kind == "hidden":
            return {"id": self.id, "kind": "hidden", "distance": distance}
        domain, _, name = self.product_id.partition(".")
        return {
            "id": self.id, "product_id": self.product_id, "domain": domain, "name": name, "version": self.version,
            "kind": self.kind, "connector": self.connector, "owner": self.owner, "description": self.description,
            "distance": distance,
        }


@dataclass(frozen=True)
class Edge:
    upstream: str  # node ids
    downstream: str
    kind: str  # "input_port" | "query"

    def as_json(self) -> dict[str, str]:
        return {"from": self.upstream, "to": self.downstream, "kind": self.kind}


@dataclass
class Subgraph:
    """What a lineage request returns: the focus node, the nodes reached and the edges among them."""

    focus: str
    direction: str
    depth: int
    nodes: dict[str, Node] = field(default_factory=dict)
    distance: dict[str, int] = field(default_factory=dict)  # node id -> -k upstream, +k downstream, 0 focus
    edges: list[Edge] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "product": self.focus,
            "direction": self.direction,
            "depth": self.depth,
            "nodes": [self.nodes[n].as_json(self.distance.get(n)) for n in self.nodes],
            "edges": [e.as_json() for e in self.edges],
        }


# --- what a descriptor reads -------------------------------------------------------------------


def query_references(descriptor: Descriptor) -> list[tuple[str, str]]:
    """``(domain, name)`` of each product a derived product's query reads (``name`` may carry a
    pin, ``orders@2``), in order of appearance, each once; system relations are not products.
    A query that does not parse reads nothing here (registration refuses it)."""
    if not descriptor.derived or not descriptor.source.query:
        return []
    try:
        query = sqlglot.parse_one(descriptor.source.query, read="postgres")
    except (ParseError, TokenError):
        return []
    ctes = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
    found: list[tuple[str, str]] = []
    for table in query.find_all(exp.Table):
        if not table.db:
            if table.name.lower() not in ctes:
                found.append(("", _folded(table.this)))  # unqualified: not a product name (refused)
            continue
        domain = _folded(table.args["db"])
        if domain in (SYSTEM_SCHEMA, "mesh") or (table.catalog and table.catalog.lower() != CATALOG):
            continue
        reference = (domain, _folded(table.this))
        if reference not in found:
            found.append(reference)
    return found


def input_ports(descriptor: Descriptor) -> list[str]:
    """Product ids named in ``spec.input_ports``."""
    ports = descriptor.raw.get("spec", {}).get("input_ports") or []
    return [p["product"] for p in ports if isinstance(p, dict) and isinstance(p.get("product"), str)]


def _folded(identifier: exp.Identifier) -> str:
    return identifier.name if identifier.quoted else identifier.name.lower()


# --- the graph -------------------------------------------------------------------------------


class LineageGraph:
    """Every active major version of every product, and the edges between them."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.nodes: dict[str, Node] = {}
        self.descriptors: dict[str, Descriptor] = {}
        self.upstream: dict[str, list[Edge]] = {}
        self.downstream: dict[str, list[Edge]] = {}
        for product_id in sorted(catalog.versions):
            for d in catalog.majors(product_id):
                node = self._node_for(d)
                self.nodes[node.id] = node
                self.descriptors[node.id] = d
        for node_id, d in list(self.descriptors.items()):
            for upstream, kind in self._inputs(d):
                edge = Edge(upstream, node_id, kind)
                if edge not in self.upstream.setdefault(node_id, []):
                    self.upstream[node_id].append(edge)
                    self.downstream.setdefault(upstream, []).append(edge)

    def _node_for(self, d: Descriptor) -> Node:
        newest = self.catalog.versions[d.product_id][0]
        node_id = d.product_id if d.major == newest.major else f"{d.product_id}@{d.major}"
        return Node(node_id, d.product_id, d.version, "derived" if d.derived else "source", d.description, d.owner,
                    d.source.connector)

    def _inputs(self, d: Descriptor) -> Iterable[tuple[str, str]]:
        for domain, name in query_references(d):
            yield self._resolve(domain, name), QUERY
        for product_id in input_ports(d):
            domain, _, name = product_id.partition(".")
            yield self._resolve(domain, name), INPUT_PORT

    def _resolve(self, domain: str, name: str) -> str:
        """The node a reference reads; a reference to nothing active becomes a ``missing`` node."""
        try:
            return self._node_for(self.catalog.resolve(domain, name)).id
        except NotFound:
            node_id = f"{domain}.{name}" if domain else name
            self.nodes.setdefault(node_id, Node(node_id, node_id, None, "missing"))
            return node_id

    def node_id(self, product: str) -> str:
        """The node of ``domain.name`` or ``domain.name@MAJOR``; NotFound if no active version."""
        domain, dot, name = product.partition(".")
        if not dot or not domain or not name:
            raise NotFound(f"'{product}' is not a product id: write domain.product or domain.product@MAJOR")
        return self._node_for(self.catalog.resolve(domain.lower(), name)).id

    def walk(self, start: str, direction: str, depth: int | None = None) -> Subgraph:
        """Nodes within ``depth`` edges of ``start`` upstream, downstream or both; cycle-safe."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        limit = MAX_DEPTH if depth is None else depth
        graph = Subgraph(start, direction, limit, {start: self.nodes[start]}, {start: 0})
        seen_edges: set[Edge] = set()
        for sign, edges_of, other in ((-1, self.upstream, "upstream"), (1, self.downstream, "downstream")):
            if direction != "both" and direction != ("up" if sign < 0 else "down"):
                continue
            queue = deque([(start, 0)])
            reached = {start}
            while queue:
                node, hops = queue.popleft()
                if hops >= limit:
                    continue
                for edge in edges_of.get(node, []):
                    if edge not in seen_edges:
                        seen_edges.add(edge)
                        graph.edges.append(edge)
                    nxt = getattr(edge, other)
                    if nxt in reached:
                        continue
                    reached.add(nxt)
                    graph.nodes.setdefault(nxt, self.nodes[nxt])
                    graph.distance.setdefault(nxt, sign * (hops + 1))
                    queue.append((nxt, hops + 1))
        return graph

    def downstream_of(self, node_id: str) -> list[str]:
        """Every product that reads ``node_id``, directly or through others (nearest first)."""
        if node_id not in self.nodes:
            return []
        graph = self.walk(node_id, "down")
        return sorted((n for n in graph.nodes if n != node_id), key=lambda n: (graph.distance[n], n))


def lineage(
    catalog: Catalog, product: str, direction: str = "both", depth: int | None = None,
    visible: Callable[[Descriptor], bool] | None = None,
) -> Subgraph:
    """The lineage of ``product`` as ``visible`` lets a caller see it.

    A product the caller may not read is shown as an opaque ``hidden`` node (an id like
    ``hidden-1``, no name, owner or version): the shape of the graph stays true, so a consumer
    knows something it cannot see feeds or reads a product, without learning what.  The product
    asked about must be readable: otherwise it is NotFound, exactly like a product that does not
    exist.
    """
    graph = LineageGraph(catalog)
    start = graph.node_id(product)
    if visible is not None and not visible(graph.descriptors[start]):
        raise NotFound(f"unknown data product '{product}'")
    sub = graph.walk(start, direction, depth)
    if visible is None:
        return sub
    renamed: dict[str, str] = {}
    for node_id, node in list(sub.nodes.items()):
        descriptor = graph.descriptors.get(node_id)
        if descriptor is not None and not visible(descriptor):
            renamed[node_id] = f"hidden-{len(renamed) + 1}"
    if not renamed:
        return sub
    hidden = Subgraph(sub.focus, sub.direction, sub.depth)
    for node_id, node in sub.nodes.items():
        new_id = renamed.get(node_id, node_id)
        hidden.nodes[new_id] = Node(new_id, "", None, "hidden") if node_id in renamed else node
        hidden.distance[new_id] = sub.distance[node_id]
    hidden.edges = [Edge(renamed.get(e.upstream, e.upstream), renamed.get(e.downstream, e.downstream), e.kind) for e in sub.edges]
    return hidden


# --- registration ----------------------------------------------------------------------------


def check_derived(catalog: Catalog, batch: list[Descriptor]) -> None:
    """Refuse derived products in ``batch`` that read an unknown or retired product, do not
    return their contract's columns, or read themselves (directly or through other products),
    against the active registry plus the batch.  Raises InvalidDescriptor listing every problem."""
    from gateway.planner.expand_derived_products import output_problem
    from gateway.planner.parse_statement import parse_statement

    in_batch = {d.product_id: d for d in batch}
    reads: dict[str, set[str]] = {}  # product id -> product ids its derived versions read
    for product_id, versions in catalog.versions.items():
        for d in versions:
            reads.setdefault(product_id, set()).update(f"{dom}.{name.partition('@')[0]}" for dom, name in query_references(d))
    for d in batch:  # a new version adds its reads to the product's
        reads.setdefault(d.product_id, set()).update(f"{dom}.{name.partition('@')[0]}" for dom, name in query_references(d))
    errors: list[InvalidDescriptor] = []
    for d in batch:
        if not d.derived:
            continue
        problems: list[str] = []
        try:
            statement = parse_statement(d.source.query or "")
            if statement.kind != "query" or statement.expression.find(exp.Placeholder, exp.Parameter):
                problems.append("spec.source.query: must be one SELECT over other products, without parameters")
            elif (problem := output_problem(statement.expression.copy(), d)) is not None:
                problems.append(f"spec.source.query: {problem}")
        except MeshError as err:
            problems.append(f"spec.source.query: {err.message}")
        for domain, name in query_references(d):
            if not domain:
                problems.append(f"spec.source.query: '{name}' is not a product name: write domain.product")
                continue
            base, _, pin = name.partition("@")
            if f"{domain}.{base}" in in_batch and (not pin or (pin.isdigit() and int(pin) == in_batch[f"{domain}.{base}"].major)):
                continue
            try:
                catalog.resolve(domain, name)
            except NotFound as err:
                problems.append(f"spec.source.query: reads {err.message} (is it retired?)")
        cycle = _cycle_through(d.product_id, reads)
        if cycle:
            problems.append(f"spec.source.query: reads itself: {' -> '.join(cycle)}")
        if problems:
            errors.append(InvalidDescriptor(f"{d.product_id} {d.version}", problems))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InvalidDescriptor("derived products", [f"{e.source}: {p}" for e in errors for p in e.problems])


def _cycle_through(start: str, reads: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start along ``reads``, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(reads.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


# --- impact ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Impact:
    """Who a breaking change to one product version would hit."""

    product: str  # node id
    downstream: list[Node]  # nearest first
    consumers: list[tuple[str, int, str, list[str]]]  # (principal, queries, last queried ISO, products it read)
    days: int


def impact(catalog: Catalog, product: str, audit_log: Path, days: int = 30) -> Impact:
    """The products downstream of ``product`` (transitively) and the principals that queried it
    or any of them in the last ``days`` days, from the audit log at ``audit_log`` (most recent
    first).  A product not registered yet has no downstream and no consumers."""
    from gateway.usage import usage_index

    graph = LineageGraph(catalog)
    try:
        start = graph.node_id(product)
    except NotFound:
        return Impact(product, [], [], days)
    downstream = graph.downstream_of(start)
    since = datetime.now(timezone.utc) - timedelta(days=days)
    index = usage_index(audit_log)
    found: dict[str, tuple[int, datetime, list[str]]] = {}
    for node_id in [start, *downstream]:
        product_id = graph.nodes[node_id].product_id
        if not product_id:
            continue
        for consumer in index.usage(product_id, since=since).recent_consumers:
            queries, last, via = found.get(consumer.name, (0, consumer.last_queried, []))
            found[consumer.name] = (queries + consumer.queries, max(last, consumer.last_queried), [*via, product_id])
    consumers = sorted(
        ((name, queries, last.strftime("%Y-%m-%d %H:%M UTC"), via) for name, (queries, last, via) in found.items()),
        key=lambda c: c[2], reverse=True,
    )
    return Impact(start, [graph.nodes[n] for n in downstream], consumers, days)
