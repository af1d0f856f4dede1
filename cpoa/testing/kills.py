"""The fault harness's account of its worker kills (bench/chaos, scenario_worker_kills): how long
each kill's workflows took to run again. Here, not in bench/, so the suite can unit-test it
without importing bench/."""

from __future__ import annotations

from typing import Any

from cpoa import machine


def resumptions(kills: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
                calls: list[tuple[str | None, float]]) -> dict[str, Any]:
    """Seconds from each kill until a workflow the killed worker held was resumed: its next
    agent request (submit, poll or notify: the step is running again), and its next transition
    (which also waits for the agent's remaining work)."""
    requests: dict[str, list[float]] = {}
    for workflow_id, at in calls:
        requests.setdefault(str(workflow_id), []).append(at)
    per_kill, per_workflow, transition_per_kill, never = [], [], [], 0
    for kill in kills:
        waits, transitions = [], []
        for workflow_id in kill["held"]:
            if any(h["at"] <= kill["at"] and h["to_state"] in machine.TERMINAL_STATES
                   for h in histories.get(workflow_id, [])):
                continue  # its last step began before the kill (read held just before it)
            later = [at for at in requests.get(workflow_id, []) if at > kill["at_monotonic"]]
            moved = [h["at"] for h in histories.get(workflow_id, []) if h["at"] > kill["at"]]
            if not later or not moved:
                never += 1
                continue
            waits.append(min(later) - kill["at_monotonic"])
            transitions.append((min(moved) - kill["at"]).total_seconds())
        per_workflow += waits
        if waits:  # the kill is over when every workflow it held is running again
            per_kill.append(max(waits))
            transition_per_kill.append(max(transitions))
    return {"per_kill": per_kill, "per_workflow": per_workflow,
            "transition_per_kill": transition_per_kill, "never": never}
