"""The state machine of a kind drawn as inline SVG, from cpoa.machine's data, on the server.

No JavaScript library and nothing from the network: the page's CSP allows neither. The layout
is fixed by the machine's shape: the happy path (``step_done`` from the initial state to a
final one) on the middle row, the states ``cancel`` leads to above it, every other state
(``failed``) below it, so the cancel arrows and the fail / retry arrows never cross; every
(source, dest) pair the machine allows is one arrow (two heads when the machine allows both
directions, e.g. fail / retry), and the one from the bottom row to the top row goes round the
right end. Colours come from the stylesheet by class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cpoa import machine
from cpoa.gateway import views
from cpoa.gateway.markup import Markup, el, join

BOX_W, BOX_H = 140, 66
GAP_X = 34
MARGIN = 16
START_R = 7
ROW_GAP = 90
"""Vertical space between the rows, where the arrows between them run."""
DETOUR = 14
"""How far right of the last box the arrow from the bottom row to the top row runs."""


@dataclasses.dataclass(frozen=True)
class Box:
    """Where one state is drawn."""

    state: str
    x: float
    y: float
    row: int

    @property
    def cx(self) -> float:
        return self.x + BOX_W / 2

    @property
    def cy(self) -> float:
        return self.y + BOX_H / 2

    @property
    def right(self) -> float:
        return self.x + BOX_W


def happy_path(kind: str) -> list[str]:
    """Returns the states ``step_done`` leads through from the initial state."""
    following = {t["source"]: t["dest"] for t in machine.KINDS[kind][1]
                 if t["trigger"] == "step_done" and isinstance(t["source"], str)}
    path = [machine.initial_state(kind)]
    while path[-1] in following and following[path[-1]] not in path:
        path.append(following[path[-1]])
    return path


def layout(kind: str) -> dict[str, Box]:
    """Returns the box of every state of a kind: row -1 above the happy path (row 0) for the
    states ``cancel`` leads to, row 1 below it for the others, each centred over the working
    states."""
    path = happy_path(kind)
    cancelled = {t["dest"] for t in machine.KINDS[kind][1] if t["trigger"] == "cancel"}
    others = [s for s in machine.states(kind) if s not in path]
    x0 = MARGIN + 2 * START_R + 24
    working = [s for s in path if s not in machine.FINAL_STATES]
    span = len(working) * BOX_W + (len(working) - 1) * GAP_X
    boxes = {s: Box(s, x0 + i * (BOX_W + GAP_X), _row_y(0), 0) for i, s in enumerate(path)}
    rows = {s: -1 if s in cancelled else 1 for s in others}
    for state, row in rows.items():
        on_row = [s for s in others if rows[s] == row]
        cx = x0 + span * (on_row.index(state) + 1) / (len(on_row) + 1)
        boxes[state] = Box(state, cx - BOX_W / 2, _row_y(row), row)
    return boxes


def _row_y(row: int) -> float:
    return MARGIN + (row + 1) * (BOX_H + ROW_GAP)


def render(kind: str, current: str | None = None, counts: Mapping[str, int] | None = None,
           dwell: Mapping[str, Mapping[str, Any]] | None = None) -> Markup:
    """Returns the ``<svg>`` of a kind's machine.

    Args:
        kind: ``"podcast"`` or ``"snippets"``.
        current: The state to highlight (class ``current``).
        counts: Workflows in each state now.
        dwell: ``store.state_dwell_times(kind)``: average and median stay per state.
    """
    boxes = layout(kind)
    width = max(b.right for b in boxes.values()) + DETOUR + MARGIN
    height = max(b.y for b in boxes.values()) + BOX_H + MARGIN
    first = boxes[machine.initial_state(kind)]
    start = [el("circle", {"class_": "start", "cx": MARGIN + START_R, "cy": first.cy,
                           "r": START_R}),
             _line([(MARGIN + 2 * START_R, first.cy), (first.x, first.cy)], "edge step_done",
                   end=True, title="start")]
    return el("svg", {"xmlns": "http://www.w3.org/2000/svg", "class_": "statechart",
                      "viewBox": f"0 0 {width:g} {height:g}", "role": "img",
                      "aria-label": f"state diagram of a {kind} workflow",
                      "data-testid": "statechart", "data-kind": kind},
              _defs(), start, _edges(kind, boxes),
              [_box(box, current, counts or {}, dwell or {}) for box in boxes.values()])


def _defs() -> Markup:
    markers = [el("marker", {"id": f"arrow-{name}", "viewBox": "0 0 10 10", "refX": 9,
                             "refY": 5, "markerWidth": 7, "markerHeight": 7,
                             "orient": "auto-start-reverse"},
                  el("path", {"class_": f"head {name}", "d": "M0,0 L10,5 L0,10 z"}))
               for name in ("step_done", "fail", "cancel")]
    return el("defs", {}, markers)


def _edges(kind: str, boxes: dict[str, Box]) -> Markup:
    labels = machine.labelled_edges(kind)
    drawn: set[tuple[str, str]] = set()
    incoming = _incoming_order(labels, boxes)
    parts = []
    for (source, dest), triggers in labels.items():
        if (source, dest) in drawn:
            continue
        both = (dest, source) in labels
        drawn |= {(source, dest), (dest, source)}
        if both and boxes[source].row > boxes[dest].row:
            source, dest = dest, source  # draw between the rows from the top one
        names = sorted({*triggers, *labels.get((dest, source), [])})
        css = "edge " + ("fail" if "fail" in names else "cancel" if "cancel" in names
                         else "step_done")
        title = f"{source} → {dest}: {', '.join(labels.get((source, dest), []))}"
        if both:
            title += f"; {dest} → {source}: {', '.join(labels[(dest, source)])}"
        points = _route(boxes[source], boxes[dest], boxes, incoming)
        parts.append(_line(points, css, end=(source, dest) in labels,
                           start=(dest, source) in labels, title=title,
                           edges=" ".join(f"{a}->{b}" for a, b in sorted(
                               {(source, dest), (dest, source)} & labels.keys()))))
    return join(parts)


def _route(a: Box, b: Box, boxes: Mapping[str, Box],
           incoming: Mapping[tuple[str, str], float]) -> list[tuple[float, float]]:
    """The points of the arrow from ``a`` to ``b``: straight between neighbouring rows,
    round the right end of the diagram between the top and bottom rows."""
    if abs(a.row - b.row) < 2:
        x1, y1, x2, y2 = _anchors(a, b, incoming)
        return [(x1, y1), (x2, y2)]
    x = max(box.right for box in boxes.values()) + DETOUR
    return [(a.right, a.cy), (x, a.cy), (x, b.cy), (b.right, b.cy)]


def _incoming_order(labels: Mapping[tuple[str, str], Any],
                    boxes: dict[str, Box]) -> dict[frozenset[str], float]:
    """Spreads the arrows that reach a box off the happy path from it along that box's edge
    (0–1), in the order of their other ends, so that they do not cross."""
    spread: dict[str, list[str]] = {}
    for pair in labels:
        hub, other = sorted(pair, key=lambda s: boxes[s].row == 0)
        if boxes[hub].row != 0 and boxes[other].row == 0 and other not in spread.get(hub, []):
            spread.setdefault(hub, []).append(other)
    order = {}
    for hub, others in spread.items():
        others.sort(key=lambda s: boxes[s].x)
        for i, other in enumerate(others):
            order[frozenset((hub, other))] = (i + 1) / (len(others) + 1)
    return order


def _anchors(a: Box, b: Box, incoming: Mapping[frozenset[str], float]
             ) -> tuple[float, float, float, float]:
    if a.row == b.row:  # neighbours on one row: side to side
        left, right = (a, b) if a.x < b.x else (b, a)
        x1, x2 = left.right, right.x
        return (x1, a.cy, x2, b.cy) if a is left else (x2, a.cy, x1, b.cy)
    upper, lower = (a, b) if a.row < b.row else (b, a)
    path, hub = (lower, upper) if upper.row else (upper, lower)
    # Leave the path's box left of centre towards a hub on the left, and so on.
    lean = 0.5 + max(-0.3, min(0.3, (hub.cx - path.cx) / (4 * BOX_W)))
    at = {path.state: path.x + BOX_W * lean,
          hub.state: hub.x + BOX_W * incoming.get(frozenset((a.state, b.state)), 0.5)}
    ends = (at[upper.state], upper.y + BOX_H, at[lower.state], lower.y)
    return ends if a is upper else (ends[2], ends[3], ends[0], ends[1])


def _line(points: list[tuple[float, float]], css: str, *, end: bool = True,
          start: bool = False, title: str = "", edges: str | None = None) -> Markup:
    kind = css.split()[-1]
    markers = {"marker-end": f"url(#arrow-{kind})" if end else None,
               "marker-start": f"url(#arrow-{kind})" if start else None}
    if len(points) == 2:
        (x1, y1), (x2, y2) = points
        shape = el("line", {"class_": css, "x1": f"{x1:g}", "y1": f"{y1:g}", "x2": f"{x2:g}",
                            "y2": f"{y2:g}", **markers})
    else:
        shape = el("polyline", {"class_": css, "fill": "none", **markers,
                                "points": " ".join(f"{x:g},{y:g}" for x, y in points)})
    return el("g", {"data-edges": edges}, el("title", {}, title), shape)


def _box(box: Box, current: str | None, counts: Mapping[str, int],
         dwell: Mapping[str, Mapping[str, Any]]) -> Markup:
    state = box.state
    classes = ["state"]
    if state == current:
        classes.append("current")
    if state in machine.FINAL_STATES:
        classes.append("final")
    count = counts.get(state, 0)
    stay = dwell.get(state) or {}
    stay_text = (f"avg {views.format_seconds(stay['avg_s'])} · "
                 f"med {views.format_seconds(stay['median_s'])}" if stay else "")
    tooltip = f"{state}: {count} workflow(s) now"
    if stay:
        tooltip += (f"; stays {stay['samples']}, average {views.format_seconds(stay['avg_s'])},"
                    f" median {views.format_seconds(stay['median_s'])}")
    texts = [el("text", {"class_": "name", "x": f"{box.cx:g}", "y": f"{box.y + 20:g}"}, state),
             el("text", {"class_": "count", "x": f"{box.cx:g}", "y": f"{box.y + 38:g}",
                         "data-testid": f"count-{state}"}, f"{count} now"),
             el("text", {"class_": "dwell", "x": f"{box.cx:g}", "y": f"{box.y + 55:g}",
                         "data-testid": f"dwell-{state}"}, stay_text)]
    return el("g", {"class_": " ".join(classes), "data-state": state,
                    "data-testid": f"state-{state}"},
              el("title", {}, tooltip),
              el("rect", {"x": f"{box.x:g}", "y": f"{box.y:g}", "width": BOX_W,
                          "height": BOX_H, "rx": 8}),
              texts)
