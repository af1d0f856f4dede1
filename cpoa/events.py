"""UI events (contract §4): what ASF is told when a workflow enters a state. Pure."""

from __future__ import annotations

from cpoa import machine, models

MESSAGES = {
    "fetching": "Fetching web content...",
    "analyzing": "Analyzing topics...",
    "scripting": "Writing the script...",
    "awaiting_review": "The script awaits a reviewer's approval.",
    "synthesizing": "Synthesizing voices...",
    "finalizing": "Publishing the episode...",
    "discovering": "Discovering topics...",
    "crafting": "Crafting snippets...",
    "completed": "Done.",
    "cancelled": "Cancelled.",
}
IMAGING_MESSAGES = {"podcast": "Generating cover art...", "snippets": "Generating snippet images..."}


def progress(kind: str, state: str, failed_from_state: str | None = None) -> float:
    """Returns how far a workflow is, from 0 to 1."""
    steps = machine.working_states(kind)
    if state == "completed":
        return 1.0
    at = failed_from_state if state == "failed" else state
    if at not in steps:
        return 0.0
    return round(steps.index(at) / len(steps), 3)


def entered(workflow: models.Workflow, dest: str, *, failed_from_state: str | None = None,
            error: str | None = None, warnings: list[str] | tuple[str, ...] = ()) -> models.UIEvent:
    """Returns the event for a workflow entering ``dest``: one per state, one per failure."""
    message = MESSAGES.get(dest) or IMAGING_MESSAGES.get(workflow.kind, dest)
    if dest == "failed":
        message = f"Failed: {error}" if error else "Failed."
    at, origin = ((workflow.state, workflow.failed_from_state) if dest == "cancelled"
                  else (dest, failed_from_state))  # cancelled: keep how far it got
    data = {"workflow_id": str(workflow.workflow_id), "state": dest, "stage": dest,
            "message": message, "progress": progress(workflow.kind, at, origin)}
    if dest in machine.TERMINAL_STATES:
        all_warnings = [*workflow.warnings, *warnings]
        final = dest
        if dest == "completed" and all_warnings:
            final = "completed_with_warnings"
        data.update(is_terminal=True, final_status=final, warnings=all_warnings)
    if dest == "failed":
        data.update(error=error, failed_from_state=failed_from_state)
        return models.UIEvent("task_error", data)
    if dest in machine.WAITING_STATES:  # ASF shows the reviewer where to act
        data["review_url"] = f"/v1/workflows/{workflow.workflow_id}/review"
        return models.UIEvent("review_requested", data)
    return models.UIEvent("generation_status", data)
