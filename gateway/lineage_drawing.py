"""Draw a lineage subgraph: as a tree in the terminal, and as a PNG or SVG picture.

The picture is layered by distance from the product asked about (upstream products to its left,
downstream ones to its right), so data flows left to right and a long chain stays readable.
"""

from __future__ import annotations

from pathlib import Path

from rich.tree import Tree

from gateway.lineage import INPUT_PORT, Subgraph

FORMATS = (".png", ".svg")
_COLORS = {"source": "#4C78A8", "derived": "#F58518", "missing": "#E45756", "hidden": "#BAB0AC"}
_STYLES = {"source": "cyan", "derived": "yellow", "missing": "red", "hidden": "dim"}


def terminal_trees(graph: Subgraph) -> list[Tree]:
    """One tree per direction drawn: the product, then what it reads (upstream) or what reads it
    (downstream), recursively; a product met again on a branch is marked and not expanded."""
    trees = []
    for direction, arrow in (("up", "<-"), ("down", "->")):
        if graph.direction not in (direction, "both"):
            continue
        title = "upstream (built from)" if direction == "up" else "downstream (read by)"
        tree = Tree(f"{_label(graph, graph.focus)}  [dim]{title}[/dim]")
        _grow(graph, tree, graph.focus, direction, arrow, (graph.focus,))
        trees.append(tree)
    return trees


def _grow(graph: Subgraph, tree: Tree, node: str, direction: str, arrow: str, path: tuple[str, ...]) -> None:
    for edge in graph.edges:
        if (edge.downstream if direction == "up" else edge.upstream) != node:
            continue
        other = edge.upstream if direction == "up" else edge.downstream
        kind = "input port" if edge.kind == INPUT_PORT else "query"
        if other in path:
            tree.add(f"{arrow} {_label(graph, other)} [dim]({kind})[/dim] [red]cycle[/red]")
            continue
        branch = tree.add(f"{arrow} {_label(graph, other)} [dim]({kind})[/dim]")
        _grow(graph, branch, other, direction, arrow, (*path, other))


def _label(graph: Subgraph, node_id: str) -> str:
    node = graph.nodes[node_id]
    style = "bold " + _STYLES[node.kind] if node_id == graph.focus else _STYLES[node.kind]
    detail = {"source": f"{node.version}, {node.connector}", "derived": f"{node.version}, derived",
              "missing": "not an active product", "hidden": "not readable by you"}[node.kind]
    return f"[{style}]{node_id}[/{style}] [dim]{detail}[/dim]"


def write_picture(graph: Subgraph, path: Path) -> None:
    """Write ``graph`` as a PNG or SVG (by ``path``'s suffix): boxes by kind, arrows with the
    data flow, dashed for input ports, the product asked about outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: write a .png or .svg file")
    g = nx.DiGraph()
    for node_id in graph.nodes:
        g.add_node(node_id, layer=graph.distance.get(node_id, 0))
    for edge in graph.edges:
        g.add_edge(edge.upstream, edge.downstream, kind=edge.kind)
    layers: dict[int, list[str]] = {}
    for node_id in g.nodes:
        layers.setdefault(g.nodes[node_id]["layer"], []).append(node_id)
    positions = {
        node_id: (layer * 3.0, (len(members) - 1) / 2 - i)
        for layer, members in layers.items() for i, node_id in enumerate(sorted(members))
    }
    width = max(6.0, 3.2 * len(layers) + 1)
    height = max(3.0, 1.1 * max(len(m) for m in layers.values()) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height), dpi=150)
    boxes = {}
    for node_id, (x, y) in positions.items():
        node = graph.nodes[node_id]
        text = node_id if node.kind == "hidden" else f"{node_id}\n{node.version or 'missing'}"
        boxes[node_id] = ax.text(
            x, y, text, ha="center", va="center", fontsize=9, color="black" if node.kind == "hidden" else "white",
            bbox={"boxstyle": "round,pad=0.5", "facecolor": _COLORS[node.kind],
                  "edgecolor": "black" if node_id == graph.focus else _COLORS[node.kind],
                  "linewidth": 2.5 if node_id == graph.focus else 1},
        )
    fig.canvas.draw()  # lays the boxes out, so arrows can end at their edges
    for upstream, downstream, kind in g.edges(data="kind"):
        ax.annotate("", xy=positions[downstream], xytext=positions[upstream],
                    arrowprops={"arrowstyle": "-|>", "mutation_scale": 16, "color": "#555555",
                                "linestyle": "--" if kind == INPUT_PORT else "-", "shrinkA": 2, "shrinkB": 2,
                                "patchA": boxes[upstream].get_bbox_patch(), "patchB": boxes[downstream].get_bbox_patch(),
                                "connectionstyle": "arc3,rad=0.06"})
    legend = [Patch(color=_COLORS[k], label=k) for k in ("source", "derived", "missing", "hidden")
              if any(n.kind == k for n in graph.nodes.values())]
    legend += [Line2D([0], [0], color="#555555", label="query"), Line2D([0], [0], color="#555555", ls="--", label="input port")]
    ax.legend(handles=legend, loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=len(legend), frameon=False, fontsize=8)
    ax.set_title(f"lineage of {graph.focus} ({graph.direction}, depth {graph.depth}): data flows left to right", fontsize=10)
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    ax.set_xlim(min(xs) - 1.8, max(xs) + 1.8)
    ax.set_ylim(min(ys) - 1.2, max(ys) + 0.8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format=suffix[1:])
    plt.close(fig)
