"""The lifecycle diagram, laid out from :data:`lifecycle.TRANSITIONS`.

Nodes and arrows come from the transition table itself, so the picture
cannot drift from the code. Each status sits in the column of its longest
path from ``pending-input`` (moves back to the queue are left out of the
layering, and drawn as dashed return arrows). A status that may reach every
one of :data:`lifecycle.MACHINE_ENDINGS` gets one arrow to a box around them
instead of five, which keeps the picture readable. The template draws the SVG.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks_app import lifecycle
from tasks_app.statuses import FACTS, Status

NODE_W, NODE_H = 176, 28
COL_GAP, ROW_GAP = 30, 10
BOX_PAD = 6
PAD = 10


@dataclass
class Node:
    status: Status
    x: int
    y: int
    visited: bool
    current: bool
    tone: str

    @property
    def cx(self) -> int:
        return self.x + NODE_W // 2

    @property
    def cy(self) -> int:
        return self.y + NODE_H // 2

    @property
    def text_y(self) -> int:
        return self.y + NODE_H // 2 + 4


@dataclass
class Edge:
    path: str
    taken: bool
    back: bool
    title: str


@dataclass
class Box:
    x: int
    y: int
    w: int
    h: int
    taken: bool
    label: str


@dataclass
class Diagram:
    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]
    box: Box | None = None
    node_w: int = NODE_W
    node_h: int = NODE_H


def _columns() -> dict[Status, int]:
    column = {Status.PENDING_INPUT: 0}
    # Longest path over the forward moves; the table is small, so relax until stable.
    changed = True
    while changed:
        changed = False
        for old, news in lifecycle.TRANSITIONS.items():
            if old not in column:
                continue
            for new in news:
                if new == Status.SUBMITTED and old != Status.PENDING_INPUT:
                    continue  # a return to the queue
                if column.get(new, -1) < column[old] + 1:
                    column[new] = column[old] + 1
                    changed = True
    return column


def build(path: list[str] | None = None) -> Diagram:
    """The diagram, with the statuses and moves of ``path`` (in order) highlighted."""
    path = path or []
    column = _columns()
    by_column: dict[int, list[Status]] = {}
    for status in Status:  # declaration order keeps the happy path on top
        by_column.setdefault(column[status], []).append(status)
    endings_col = max(column[s] for s in lifecycle.MACHINE_ENDINGS)
    # Room for the box around the machine endings and its label.
    extra = {endings_col: 2 * BOX_PAD + 16}
    rows = max(len(v) * (NODE_H + ROW_GAP) + extra.get(c, 0) for c, v in by_column.items())
    height = rows - ROW_GAP + 2 * PAD
    nodes: dict[Status, Node] = {}
    for col, statuses in by_column.items():
        y = PAD
        boxed = False
        for status in statuses:
            if status in lifecycle.MACHINE_ENDINGS and not boxed:
                y += BOX_PAD + 16  # the box's label sits above its first node
                boxed = True
            nodes[status] = Node(
                status=status,
                x=PAD + col * (NODE_W + COL_GAP),
                y=y,
                visited=status.value in path,
                current=bool(path) and path[-1] == status.value,
                tone=FACTS[status].tone,
            )
            y += NODE_H + ROW_GAP
    taken = set(zip(path, path[1:], strict=False))
    endings = [nodes[s] for s in Status if s in lifecycle.MACHINE_ENDINGS]
    box = Box(
        x=endings[0].x - BOX_PAD,
        y=endings[0].y - BOX_PAD - 16,
        w=NODE_W + 2 * BOX_PAD,
        h=endings[-1].y + NODE_H + BOX_PAD - (endings[0].y - BOX_PAD - 16),
        taken=False,
        label="Machine endings",
    )
    edges = []
    for old, news in lifecycle.TRANSITIONS.items():
        a = nodes[old]
        targets = sorted(news, key=list(Status).index)
        if lifecycle.MACHINE_ENDINGS <= news:
            hit = any((old.value, m.value) in taken for m in lifecycle.MACHINE_ENDINGS)
            box.taken = box.taken or hit
            x1, y1, x2, y2 = a.x + NODE_W, a.cy, box.x, box.y + box.h // 2
            mid = (x1 + x2) // 2
            edges.append(
                Edge(
                    path=f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 2},{y2}",
                    taken=hit,
                    back=False,
                    title=f"{old.label} → any machine ending",
                )
            )
            targets = [t for t in targets if t not in lifecycle.MACHINE_ENDINGS]
        for new in targets:
            b = nodes[new]
            back = column[new] <= column[old]
            if back:
                # Return to the queue: a loop under the boxes.
                low = height - 2
                d = f"M{a.x},{a.cy} C{a.x - 60},{low} {b.cx},{low} {b.cx},{b.y + NODE_H + 2}"
            else:
                x1, y1, x2, y2 = a.x + NODE_W, a.cy, b.x, b.cy
                mid = (x1 + x2) // 2
                d = f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 2},{y2}"
            edges.append(
                Edge(
                    path=d,
                    taken=(old.value, new.value) in taken,
                    back=back,
                    title=f"{old.label} → {new.label}",
                )
            )
    edges.sort(key=lambda e: e.taken)  # taken moves drawn last, on top
    width = (max(column.values()) + 1) * (NODE_W + COL_GAP) - COL_GAP + 2 * PAD
    return Diagram(width=width, height=height + 24, nodes=list(nodes.values()), edges=edges, box=box)
