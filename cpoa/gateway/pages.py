"""The dashboard's HTML: the workflow list and the workflow page, built only from escaped parts.

Every value from the database or an agent goes through :mod:`cpoa.gateway.markup`, so it is
text, never markup. The pages carry no inline script or style (the CSP forbids both): the
scripts in ``static/`` read the ``data-`` attributes and follow ``/events``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa import diagram, machine, presentation, queues
from cpoa.gateway import statechart, views
from cpoa.gateway.markup import Markup, attributes, el, escape

KINDS = tuple(machine.KINDS)
STATE_ORDER = list(dict.fromkeys(s for kind in KINDS for s in machine.states(kind)))
"""Every state of every kind, in machine order (the filter's and the counts' order)."""
ERROR_PREVIEW_CHARS = 160

_LAYOUT = string.Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · CPOA</title>
<link rel="stylesheet" href="/static/dashboard.css">
<link rel="icon" href="/static/icon.svg" type="image/svg+xml">
<script type="module" src="/static/$script"></script>
</head>
<body$body_attrs>
<header class="top">
<a class="brand" href="/">CPOA workflows</a>
<span class="connection">live updates: <span id="connection" data-testid="connection">connecting</span></span>
</header>
<main>
$main
</main>
</body>
</html>
""")


def layout(title: str, script: str, main: Markup, body: Mapping[str, Any]) -> str:
    """Returns a whole page; ``body`` becomes the ``<body>``'s (data) attributes."""
    return _LAYOUT.substitute(title=escape(title), script=escape(script), main=main,
                              body_attrs=attributes(body))


# -- the list ------------------------------------------------------------------------------------


def list_page(workflows: Sequence[Any], counts: Mapping[str, int], last_event_id: int, *,
              state: str | None, kind: str | None,
              agents: Sequence[tuple[str, ...]] = ()) -> str:
    """Returns the workflow list: counts per state (links), the filter, the newest rows and
    the agent queues (``agents``: rows of :data:`cpoa.queues.COLUMNS` cells)."""
    main = [el("h1", {}, "Workflows"), _counts(counts, kind), _filter(state, kind),
            _table(workflows, state), _agent_queues(agents)]
    return layout("Workflows", "list.js", Markup("\n".join(main)), {
        "data-page": "list", "data-last-event-id": last_event_id,
        "data-state-filter": state or "", "data-kind-filter": kind or ""})


def _query(state: str | None, kind: str | None) -> str:
    parts = [f"state={state}" if state else "", f"kind={kind}" if kind else ""]
    joined = "&".join(p for p in parts if p)
    return "/?" + joined if joined else "/"


def _counts(counts: Mapping[str, int], kind: str | None) -> Markup:
    total = sum(counts.values())
    chips = [el("li", {}, el("a", {"href": _query(None, kind), "data-testid": "count-all"},
                             "all ", el("span", {"class_": "n"}, total)))]
    for state in STATE_ORDER:
        chips.append(el("li", {"class_": f"chip state-{state}"},
                        el("a", {"href": _query(state, kind)}, f"{state} ",
                           el("span", {"class_": "n", "data-count-state": state,
                                       "data-testid": f"count-{state}"},
                              counts.get(state, 0)))))
    return el("nav", {"class_": "counts", "aria-label": "workflows per state"},
              el("ul", {}, chips))


def _filter(state: str | None, kind: str | None) -> Markup:
    states = [el("option", {"value": ""}, "any state")] + [
        el("option", {"value": s, "selected": s == state}, s) for s in STATE_ORDER]
    kinds = [el("option", {"value": ""}, "any kind")] + [
        el("option", {"value": k, "selected": k == kind}, k) for k in KINDS]
    return el("form", {"class_": "filter", "method": "get", "action": "/"},
              el("label", {}, "State ", el("select", {"name": "state",
                                                      "data-testid": "state-filter"}, states)),
              el("label", {}, "Kind ", el("select", {"name": "kind"}, kinds)),
              el("button", {"type": "submit"}, "Filter"))


def _table(workflows: Sequence[Any], state: str | None) -> Markup:
    head = el("thead", {}, el("tr", {}, [el("th", {}, h) for h in (
        "Started", "Kind", "Topic / query", "State", "Updated", "Error")]))
    rows = [_row(w) for w in workflows]
    empty = el("p", {"class_": "empty", "data-testid": "empty", "hidden": bool(rows)},
               f"No {state} workflows." if state else "No workflows yet.")
    return Markup(_scrolling(el("table", {"class_": "workflows"}, head,
                                el("tbody", {"id": "rows", "data-testid": "rows"}, rows)))
                  + empty)


def _agent_queues(agents: Sequence[tuple[str, ...]]) -> Markup:
    """Each agent's flow control as the page was read (reload for news): slots held of its
    cap, workflows waiting for a slot and for their place in its rate, its pause."""
    head = el("thead", {}, el("tr", {}, [el("th", {}, h.capitalize()) for h in queues.COLUMNS]))
    rows = [el("tr", {"data-agent": row[0]}, [el("td", {}, cell) for cell in row])
            for row in agents]
    return el("section", {}, el("h2", {}, "Agent queues"),
              _scrolling(el("table", {"class_": "agents"}, head,
                            el("tbody", {"data-testid": "agent-queues"}, rows))))


def _scrolling(wide: Markup) -> Markup:
    """A table or drawing that scrolls sideways by itself on a narrow screen, so the page
    never does."""
    return el("div", {"class_": "scroll"}, wide)


def _row(workflow: Any) -> Markup:
    workflow_id = str(workflow.workflow_id)
    error = workflow.error_message or ""
    short = error[:ERROR_PREVIEW_CHARS] + ("…" if len(error) > ERROR_PREVIEW_CHARS else "")
    return el("tr", {"data-workflow-id": workflow_id, "data-state": workflow.state},
              el("td", {}, el("time", {"datetime": presentation.iso(workflow.start_timestamp)},
                             _clock(workflow.start_timestamp))),
              el("td", {}, workflow.kind),
              el("td", {}, el("a", {"href": f"/workflows/{workflow_id}",
                                    "data-testid": "workflow-link"},
                              views.label(workflow.params) or workflow_id)),
              el("td", {}, _badge(workflow.state, "row-state")),
              el("td", {"data-cell": "updated"},
                 el("time", {"datetime": presentation.iso(workflow.last_updated_timestamp)},
                    _clock(workflow.last_updated_timestamp))),
              el("td", {"class_": "error", "data-cell": "error", "title": error}, short))


def _time(iso: str | None) -> Markup:
    """A time shown short, with the whole ISO value in its ``datetime``."""
    return el("time", {"datetime": iso}, views.short_time(iso)) if iso else Markup("–")


def _clock(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _badge(state: str, testid: str) -> Markup:
    return el("span", {"class_": f"badge state-{state}", "data-testid": testid}, state)


# -- one workflow ----------------------------------------------------------------------------------


def workflow_page(view: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]],
                  last_event_id: int, counts: Mapping[str, int],
                  dwell: Mapping[str, Mapping[str, Any]], dwell_days: float) -> str:
    """Returns the page of one workflow: summary, actions, media, diagram, timeline, tasks."""
    kind, state = view["kind"], view["state"]
    title = view["label"] or view["workflow_id"]
    main = [
        el("p", {"class_": "back"}, el("a", {"href": "/"}, "← all workflows")),
        el("h1", {}, el("span", {"class_": "kind"}, kind), " ",
           el("span", {"data-testid": "title"}, title)),
        el("p", {"class_": "id"}, el("code", {}, view["workflow_id"])),
        _summary(view), _actions(view), _review(view["review_script"], view["script_revision"]), _fork(view),
        _media(view["media"]),
        _diagram(kind, state, counts, dwell, dwell_days),
        _timeline(timeline), _tasks(view["tasks"]),
    ]
    return layout(title, "workflow.js", Markup("\n".join(main)), {
        "data-page": "workflow", "data-workflow-id": view["workflow_id"],
        "data-last-event-id": last_event_id})


def _summary(view: Mapping[str, Any]) -> Markup:
    facts = [("State", "state", _badge(view["state"], "state")),
             ("Progress", "progress", el("progress", {"max": 1, "value": view["progress"],
                                                      "data-testid": "progress"})),
             ("Step progress", "step_progress", _step_progress(view["step_progress"])),
             ("Failed in", "failed_from_state", view["failed_from_state"] or "–"),
             ("Started", "started_at", _time(view["started_at"])),
             ("Updated", "updated_at", _time(view["updated_at"])),
             ("Ended", "ended_at", _time(view["ended_at"])),
             ("Next run", "next_run_at", _time(view["next_run_at"])),
             ("Retries", "retry_count", view["retry_count"]),
             ("Recoveries", "recovery_attempts", view["recovery_attempts"]),
             ("Lease", "lease_owner", view["lease_owner"] or "–"),
             ("Forked from", "forked_from", _forked_from(view["forked_from"]))]
    items = [Markup(el("dt", {}, label) + el("dd", {"data-field": name}, value))
             for label, name, value in facts]
    warnings = [el("li", {}, w) for w in view["warnings"]]
    return Markup(
        el("dl", {"class_": "summary"}, items)
        + el("p", {"class_": "error", "data-testid": "error", "hidden": not view["error"]},
             view["error"] or "")
        + el("ul", {"class_": "warnings", "data-testid": "warnings"}, warnings))


def _step_progress(value: float | None) -> Markup:
    """The current step's own bar (an agent's live progress); hidden while none is known."""
    return Markup(el("progress", {"max": 1, "value": value if value is not None else 0,
                                  "data-testid": "step-progress", "hidden": value is None})
                  + el("span", {"data-testid": "step-percent"},
                       f"{value:.0%}" if value is not None else "–"))


def _review(script: Mapping[str, Any] | None, revision: int) -> Markup:
    """The script of a workflow awaiting review as a form: title, and per segment its title
    and each line's speaker and text (all escaped into values; workflow.js reads them back),
    with Approve and Reject (with notes) sent with the revision shown (``data-revision``).
    Nothing when no review is awaited."""
    if not script:
        return Markup("")
    segments = []
    for i, segment in enumerate(script.get("segments") or []):
        lines = [el("li", {"class_": "line"},
                    el("input", {"type": "text", "value": line.get("speaker", ""),
                                 "aria-label": f"segment {i + 1} line {j + 1} speaker",
                                 "data-segment": i, "data-line": j, "data-part": "speaker"}),
                    el("textarea", {"rows": 2, "aria-label": f"segment {i + 1} line {j + 1}",
                                    "data-segment": i, "data-line": j, "data-part": "text",
                                    "data-testid": f"line-{i}-{j}"}, line.get("text", "")))
                 for j, line in enumerate(segment.get("lines") or [])]
        segments.append(el("fieldset", {"class_": "segment"},
                           el("input", {"type": "text", "value": segment.get("segment_title"),
                                        "aria-label": f"segment {i + 1} title",
                                        "data-segment": i, "data-part": "segment_title"}),
                           el("ol", {}, lines)))
    return el("section", {"class_": "review", "id": "review", "data-testid": "review",
                          "data-revision": revision, "aria-label": "review the script"},
              el("h2", {}, "Review the script"),
              el("input", {"type": "text", "id": "script-title", "value": script.get("title"),
                           "aria-label": "script title", "data-testid": "script-title"}),
              segments,
              el("textarea", {"id": "review-notes", "rows": 2, "data-testid": "review-notes",
                              "placeholder": "notes for PSWA (needed to reject)"}),
              el("button", {"type": "button", "id": "approve", "data-testid": "approve"},
                 "Approve"),
              el("button", {"type": "button", "id": "reject", "data-testid": "reject"},
                 "Reject"))


def _fork(view: Mapping[str, Any]) -> Markup:
    """Fork a finished workflow from a state, optionally with another voice."""
    if not view["can_fork"]:
        return Markup("")
    options = [el("option", {"value": s}, s) for s in view["fork_states"]]
    return el("section", {"class_": "fork", "aria-label": "fork"},
              el("label", {}, "Fork from ", el("select", {"id": "fork-from",
                                                          "data-testid": "fork-from"}, options)),
              el("label", {}, " voice ", el("input", {"type": "text", "id": "fork-voice",
                                                      "data-testid": "fork-voice"})),
              el("button", {"type": "button", "id": "fork", "data-testid": "fork"}, "Fork"),
              el("a", {"id": "fork-link", "data-testid": "fork-link", "hidden": True}, ""))


def _forked_from(source: str | None) -> Markup | str:
    """A link to the workflow this one was forked from (a UUID we stored), or a dash."""
    if not source:
        return "–"
    return el("a", {"href": f"/workflows/{source}", "data-testid": "forked-from"}, source)


def _actions(view: Mapping[str, Any]) -> Markup:
    return el("section", {"class_": "actions", "aria-label": "actions"},
              el("button", {"type": "button", "id": "cancel", "data-testid": "cancel",
                            "disabled": not view["can_cancel"]}, "Cancel"),
              el("button", {"type": "button", "id": "retry", "data-testid": "retry",
                            "disabled": not view["can_retry"]}, "Retry"),
              el("label", {"class_": "token"}, "API token ",
                 el("input", {"type": "password", "id": "token", "data-testid": "token",
                              "autocomplete": "off",
                              "placeholder": "only if the server asks"})),
              el("span", {"id": "action-status", "data-testid": "action-status",
                          "role": "status"}))


def _media(media: Mapping[str, Any]) -> Markup:
    parts = []
    if media["image_url"]:
        parts.append(el("img", {"src": media["image_url"], "alt": "Cover art",
                                "data-testid": "cover"}))
    if media["audio_url"]:
        parts.append(el("div", {"class_": "player"},
                        el("p", {"data-testid": "episode-title"}, media["title"] or ""),
                        el("audio", {"controls": True, "preload": "metadata",
                                     "src": media["audio_url"], "data-testid": "audio"}),
                        el("a", {"href": media["audio_url"], "download": True,
                                 "rel": "noopener", "data-testid": "download"}, "Download")))
    snippets = [el("li", {}, el("strong", {}, s["title"]), " ", s["summary"])
                for s in media["snippets"]]
    if snippets:
        parts.append(el("ul", {"class_": "snippets", "data-testid": "snippets"}, snippets))
    return el("section", {"class_": "media", "id": "media", "data-testid": "media",
                          "hidden": not parts}, parts)


def _diagram(kind: str, state: str, counts: Mapping[str, int],
             dwell: Mapping[str, Mapping[str, Any]], dwell_days: float) -> Markup:
    return el("section", {"class_": "diagram"},
              el("h2", {}, "State machine"),
              _scrolling(statechart.render(kind, state, counts, dwell)),
              el("p", {"class_": "legend"},
                 el("span", {"class_": "key step_done"}, "step done"), " ",
                 el("span", {"class_": "key fail"}, "fail / retry"), " ",
                 el("span", {"class_": "key cancel"}, "cancel"), " · ",
                 f"per state: {kind} workflows in it now; average and median stay of "
                 f"{kind} workflows started in the last {dwell_days:g} days"),
              el("details", {}, el("summary", {}, "Mermaid source"),
                 el("pre", {"data-testid": "mermaid"}, diagram.mermaid(kind, state))))


def _timeline(timeline: Sequence[Mapping[str, Any]]) -> Markup:
    head = el("thead", {}, el("tr", {}, [el("th", {}, h) for h in (
        "#", "At", "Transition", "Trigger", "Time in previous state", "Reason / warnings")]))
    return el("section", {}, el("h2", {}, "Transitions"),
              _scrolling(el("table", {"class_": "timeline"}, head,
                            el("tbody", {"id": "timeline", "data-testid": "timeline"},
                               [timeline_row(row) for row in timeline]))))


def timeline_row(row: Mapping[str, Any]) -> Markup:
    """One transition of the timeline (the script builds the same row from a live frame)."""
    notes = [row["reason"] or "", *row["warnings"]]
    return el("tr", {"data-event-id": row["event_id"], "data-at": row["at"]},
              el("td", {}, row["event_id"]), el("td", {}, _time(row["at"])),
              el("td", {}, f"{row['from'] or '●'} → {row['to']}"), el("td", {}, row["trigger"]),
              el("td", {}, views.format_seconds(row["after_s"]) if row["after_s"] is not None
                 else ""),
              el("td", {"class_": "error"}, "\n".join(n for n in notes if n)))


def _tasks(tasks: Sequence[Mapping[str, Any]]) -> Markup:
    head = el("thead", {}, el("tr", {}, [el("th", {}, h) for h in (
        "Step", "Item", "Attempt", "Agent", "Status", "Progress", "Agent task id", "Started",
        "Duration", "Retries", "Error")]))
    return el("section", {}, el("h2", {}, "Task attempts"),
              _scrolling(el("table", {"class_": "tasks"}, head,
                            el("tbody", {"id": "tasks", "data-testid": "tasks"},
                               [task_row(t) for t in tasks]))))


def task_row(task: Mapping[str, Any]) -> Markup:
    """One task attempt (the script renders the same cells from a snapshot)."""
    duration = views.format_seconds(task["duration_s"])
    return el("tr", {"data-task-id": task["task_id"], "data-status": task["status"]},
              el("td", {}, task["step"]), el("td", {}, task["item_key"]),
              el("td", {}, task["attempt"]), el("td", {}, task["agent"]),
              el("td", {}, task["status"]), el("td", {}, _task_progress(task["progress"])),
              el("td", {}, el("code", {}, task["agent_task_id"])),
              el("td", {}, _time(task["started_at"])),
              el("td", {}, duration + (" (running)" if task["running"] else
                                       " (abandoned)" if task["abandoned"] else "")),
              el("td", {}, task["retries"]), el("td", {"class_": "error"}, task["error"] or ""))


def _task_progress(value: float | None) -> Markup | str:
    if value is None:
        return "–"
    return el("progress", {"max": 1, "value": value, "data-testid": "task-progress"})


def not_found(message: str) -> str:
    """Returns the page of an unknown workflow."""
    return layout("Not found", "list.js", Markup(
        el("h1", {}, "Not found") + el("p", {}, message)
        + el("p", {}, el("a", {"href": "/"}, "All workflows"))), {"data-page": "none"})
