"""Editorial control, pure: a reviewer's decision on a script, and what a fork copies.

:func:`decision_outcome` turns an approval (optionally with an edited script, checked exactly
like a PSWA result) or a rejection (with notes for PSWA) into the one transition the store
applies under the workflow's row lock. :func:`fork_plan` says what a new workflow forked from a
finished one starts with. No I/O here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa import defaults, errors, events, inputs, machine, models, steps
from cpoa.agents import results

SCRIPT_RESULT_PREFIX = "result.script_data"
"""How :func:`cpoa.agents.results.script` names a field; a reviewer's edit names it ``script``."""


def edited_script(script: Any) -> dict[str, Any]:
    """Checks a reviewer's script exactly as a PSWA ``script_data`` is checked (contract §3).

    Raises:
        InvalidInput: naming the field, e.g. ``script.segments[2].lines[0].text``, or
            ``script`` when its JSON is longer than ``REVIEW_SCRIPT_MAX_CHARS``.
    """
    size = len(json.dumps(script, ensure_ascii=False, default=str))
    if size > defaults.REVIEW_SCRIPT_MAX_CHARS:
        raise errors.InvalidInput(f"script: {size} characters of JSON, more than the "
                                  f"{defaults.REVIEW_SCRIPT_MAX_CHARS} accepted", field="script")
    try:
        return results.script({"script_data": script})
    except errors.AgentError as exc:  # a business status cannot occur: the object is ours
        field = getattr(exc, "field", "") or SCRIPT_RESULT_PREFIX
        name = "script" + field[len(SCRIPT_RESULT_PREFIX):]
        problem = str(exc).split(f"{field} ", 1)[-1]
        raise errors.InvalidInput(f"{name}: {problem}", field=name) from None


def notes_text(notes: Any, *, required: bool) -> str | None:
    """Checks a reviewer's notes (required with a rejection).

    Raises:
        InvalidInput: naming ``notes``.
    """
    if notes is None and not required:
        return None
    if notes is None:
        raise errors.InvalidInput("notes: a rejection needs notes that say what to change",
                                  field="notes")
    return inputs.text(notes, "notes", defaults.REVIEW_NOTES_MAX_CHARS)


@dataclasses.dataclass(frozen=True)
class Decision:
    """A reviewer's checked decision.

    Attributes:
        approve: Approve (on to synthesizing) or reject (back to scripting).
        script: The edited script to store instead of PSWA's (approval only), or None.
        notes: What the reviewer wrote (PSWA's ``revision_notes`` on a rejection).
        expected_revision: The script revision the reviewer saw; the decision is refused
            when the workflow's script is at another one. None: not checked.
    """

    approve: bool
    script: dict[str, Any] | None = None
    notes: str | None = None
    expected_revision: int | None = None

    @classmethod
    def checked(cls, approve: bool, script: Any = None, notes: Any = None,
                expected_revision: Any = None) -> Decision:
        """Builds a decision from caller input, checking every field.

        Raises:
            InvalidInput: naming the bad field.
        """
        if not isinstance(approve, bool):
            raise errors.InvalidInput("approve: expected true or false", field="approve")
        if script is not None and not approve:
            raise errors.InvalidInput("script: only an approval carries an edited script",
                                      field="script")
        if expected_revision is not None:
            expected_revision = inputs.integer(expected_revision, "expected_revision", 1,
                                               defaults.REVIEW_MAX_REVISIONS)
        return cls(approve, None if script is None else edited_script(script),
                   notes_text(notes, required=not approve), expected_revision)


def decision_outcome(workflow: models.Workflow, decision: Decision) -> models.Outcome:
    """The transition a reviewer's decision makes, checked against the machine.

    Raises:
        InvalidTransition: the workflow is not awaiting review (another reviewer acted first,
            or it was cancelled or failed at its deadline), or its script is not at the
            revision the reviewer saw (``expected_revision``).
    """
    trigger = "approve" if decision.approve else "reject"
    dest = machine.decide(workflow.kind, workflow.state, trigger).state
    current = workflow.context.get("script")
    history = list(workflow.context.get("script_history") or [])
    revision = steps.script_revision(workflow)
    _check_revision(workflow, decision, revision, trigger)
    review = {"decision": "approved" if decision.approve else "rejected",
              "revision": revision, "edited": decision.script is not None,
              "notes": decision.notes}
    updates: dict[str, Any] = {"review": review}
    if decision.script is not None:  # the original is kept in the history
        updates.update(script=decision.script, script_history=[
            *history, {"revision": revision, "script": current, "replaced_by": "reviewer"}])
    elif not decision.approve:
        updates.update(script_revision=revision + 1, revision_notes=decision.notes,
                       script_history=[*history, {"revision": revision, "script": current,
                                                  "rejected": decision.notes}])
    return models.Outcome.transition(
        trigger, dest, context_updates=updates,
        detail={k: v for k, v in review.items() if v is not None},
        ui_event=events.entered(workflow, dest))


def _check_revision(workflow: models.Workflow, decision: Decision, revision: int,
                    trigger: str) -> None:
    """Refuses a decision on another revision than the reviewer saw, and a rejection of the
    last revision allowed (``REVIEW_MAX_REVISIONS``)."""
    if decision.expected_revision not in (None, revision):
        raise errors.InvalidTransition(
            f"expected_revision: the script is at revision {revision}, not "
            f"{decision.expected_revision}: reload it and review again",
            workflow_id=workflow.workflow_id, state=workflow.state, trigger=trigger)
    if not decision.approve and revision >= defaults.REVIEW_MAX_REVISIONS:
        raise errors.InvalidTransition(
            f"script_revision: the script is at revision {revision}, the most allowed "
            f"({defaults.REVIEW_MAX_REVISIONS}): approve it (edited if need be) or cancel",
            workflow_id=workflow.workflow_id, state=workflow.state, trigger=trigger)


def fork_plan(source: models.Workflow, history: Sequence[Mapping[str, Any]], from_state: Any,
              changes: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a workflow forked from ``source`` at ``from_state`` starts with.

    Returns:
        Its parameters (the source's with ``changes`` over them, checked) and its context
        (what the steps before ``from_state`` wrote).

    Raises:
        InvalidInput: naming ``from_state`` (not a step of the kind, or one the source never
            reached) or the bad parameter.
        InvalidTransition: the source is still working (fork a completed, failed or cancelled
            workflow).
    """
    if not source.is_terminal:
        raise errors.InvalidTransition(
            f"cannot fork a {source.kind} workflow that is {source.state}: only a completed, "
            "failed or cancelled workflow can be forked", state=source.state, trigger="fork")
    kind_steps = list(steps.STEPS[source.kind])
    if from_state not in kind_steps:
        raise errors.InvalidInput(f"from_state: expected one of {', '.join(kind_steps)}",
                                  field="from_state")
    reached = {h["to_state"] for h in history}
    if from_state not in reached:
        raise errors.InvalidInput(f"from_state: workflow {source.workflow_id} never reached "
                                  f"{from_state}", field="from_state")
    params = forked_params(source, from_state, changes)
    return params, steps.context_before(source.kind, from_state, source.context)


def forked_params(source: models.Workflow, from_state: str,
                  changes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The source's parameters with ``changes`` over them, checked like a start.
    ``voice_params`` is merged key by key into the source's (on every path: Python, API,
    CLI, bulk). A change no step from ``from_state`` on reads is refused: it would have no
    effect (``persona`` when forking at synthesizing).

    Raises:
        InvalidInput: naming the bad or ineffective parameter.
    """
    if changes is not None and not isinstance(changes, Mapping):
        raise errors.InvalidInput("params: expected an object", field="params")
    changes = dict(changes or {})
    voice, before = changes.get("voice_params"), source.params.get("voice_params")
    if isinstance(voice, Mapping) and isinstance(before, Mapping):
        changes["voice_params"] = {**before, **voice}
    params = inputs.workflow_params(source.kind, {**source.params, **changes})
    read = steps.reads_from(source.kind, from_state)
    for name in sorted(changes):
        if name not in read and params.get(name) != source.params.get(name):
            raise errors.InvalidInput(
                f"{name}: no step from {from_state} on reads it, so changing it would have "
                f"no effect (fork from an earlier state)", field=name)
    return params
