"""The workflow state machines as data, and the pure decision `decide()` built on them.

No I/O here: the store applies a decision with a compare-and-set, the engine asks for it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading

import transitions

from cpoa import errors

PODCAST_STEPS = ["fetching", "analyzing", "scripting", "synthesizing", "imaging", "finalizing"]
SNIPPETS_STEPS = ["discovering", "crafting", "imaging"]
PODCAST_WORKING = [*PODCAST_STEPS[:3], "awaiting_review", *PODCAST_STEPS[3:]]
"""The podcast's steps and, after scripting, the wait for a reviewer (``review: true``)."""

PODCAST_STATES = [*PODCAST_WORKING, {"name": "completed", "final": True}, "failed",
                  {"name": "cancelled", "final": True}]
SNIPPETS_STATES = [*SNIPPETS_STEPS, {"name": "completed", "final": True}, "failed",
                   {"name": "cancelled", "final": True}]


def _common(steps: list[str]) -> list[dict]:
    """fail / cancel / retry, which every working state shares."""
    return [
        {"trigger": "fail", "source": steps, "dest": "failed", "before": "remember_origin"},
        {"trigger": "cancel", "source": [*steps, "failed"], "dest": "cancelled"},
        # Retry resumes exactly where the failure happened: one edge per state, one guard.
        *({"trigger": "retry", "source": "failed", "dest": step, "conditions": "resumes_here",
           "before": "forget_origin"} for step in steps),
    ]


PODCAST_TRANSITIONS = [
    {"trigger": "step_done", "source": "fetching", "dest": "analyzing"},
    {"trigger": "step_done", "source": "analyzing", "dest": "scripting"},
    # A workflow started with review: true waits for a person between script and voices.
    {"trigger": "step_done", "source": "scripting", "dest": "awaiting_review",
     "conditions": "wants_review"},
    {"trigger": "step_done", "source": "scripting", "dest": "synthesizing",
     "unless": "wants_review"},
    {"trigger": "approve", "source": "awaiting_review", "dest": "synthesizing"},
    {"trigger": "reject", "source": "awaiting_review", "dest": "scripting"},
    {"trigger": "step_done", "source": "synthesizing", "dest": "imaging"},
    {"trigger": "step_done", "source": "imaging", "dest": "finalizing"},
    {"trigger": "step_done", "source": "finalizing", "dest": "completed"},
    *_common(PODCAST_WORKING),
]

SNIPPETS_TRANSITIONS = [
    {"trigger": "step_done", "source": "discovering", "dest": "crafting"},
    {"trigger": "step_done", "source": "crafting", "dest": "imaging"},
    {"trigger": "step_done", "source": "imaging", "dest": "completed"},
    *_common(SNIPPETS_STEPS),
]

KINDS = {
    "podcast": (PODCAST_STATES, PODCAST_TRANSITIONS, "fetching"),
    "snippets": (SNIPPETS_STATES, SNIPPETS_TRANSITIONS, "discovering"),
}
"""kind -> (states, transitions, initial state)."""

TRIGGERS = ("step_done", "fail", "cancel", "retry", "approve", "reject")
FINAL_STATES = frozenset({"completed", "cancelled"})
"""No trigger leaves these."""

TERMINAL_STATES = frozenset({"completed", "cancelled", "failed"})
"""No work is scheduled in these; only `retry` or `cancel` leave `failed`."""

WAITING_STATES = frozenset({"awaiting_review"})
"""No agent work in these: a person's action (approve, reject, cancel) moves the workflow on;
it is due only at its deadline, which fails it."""


@dataclasses.dataclass
class WorkflowModel:
    """The part of a workflow the machine looks at; `transitions` sets `state` on it."""

    state: str
    failed_from_state: str | None = None
    review: bool = False

    def remember_origin(self, event: transitions.EventData) -> None:
        self.failed_from_state = event.transition.source

    def forget_origin(self, event: transitions.EventData) -> None:
        self.failed_from_state = None

    def resumes_here(self, event: transitions.EventData) -> bool:
        return event.transition.dest == self.failed_from_state

    def wants_review(self, event: transitions.EventData) -> bool:
        return self.review


def states(kind: str) -> list[str]:
    """Returns every state name of a kind, in definition order."""
    return [s if isinstance(s, str) else s["name"] for s in _definition(kind)[0]]


def working_states(kind: str) -> list[str]:
    """Returns the states in which a workflow has work to do."""
    return [s for s in states(kind) if s not in TERMINAL_STATES]


def straight_path(kind: str) -> list[str]:
    """The working states a workflow passes through, in order, when nothing fails and nobody
    reviews it (the waiting states are left out)."""
    return [s for s in working_states(kind) if s not in WAITING_STATES]


def initial_state(kind: str) -> str:
    """Returns the state a new workflow of this kind starts in."""
    return _definition(kind)[2]


def labelled_edges(kind: str) -> dict[tuple[str, str], list[str]]:
    """Returns {(source, dest): sorted triggers} for every pair some trigger allows, in
    definition order."""
    labels: dict[tuple[str, str], set[str]] = {}
    for transition in _definition(kind)[1]:
        sources = transition["source"]
        for source in [sources] if isinstance(sources, str) else sources:
            labels.setdefault((source, transition["dest"]), set()).add(transition["trigger"])
    return {pair: sorted(triggers) for pair, triggers in labels.items()}


def edges(kind: str) -> set[tuple[str, str]]:
    """Returns every (source, dest) pair some trigger allows."""
    return set(labelled_edges(kind))


def enforced_edges() -> set[tuple[str, str, str]]:
    """Every (kind, source, dest) of every kind: the rows of ``workflow_transitions``."""
    return {(kind, source, dest) for kind in KINDS for source, dest in edges(kind)}


def fingerprint() -> str:
    """The machine's version: a short hash of every kind's states and edges, what the
    database enforces (its CHECK and ``workflow_transitions``); ``cpoa_machine`` records it."""
    document = {kind: {"states": sorted(states(kind)),
                       "edges": sorted(f"{s}>{d}" for s, d in edges(kind))}
                for kind in sorted(KINDS)}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def difference(db_fingerprint: str | None, db_edges: set[tuple[str, str, str]]) -> str | None:
    """Says how the database's machine differs from this code's, and what fixes it (None:
    they agree)."""
    missing = sorted(enforced_edges() - db_edges)
    extra = sorted(db_edges - enforced_edges())
    if missing or db_fingerprint is None:
        shown = ", ".join(f"{k} {s} -> {d}" for k, s, d in missing) or "its machine version"
        return (f"the database's state machine ({db_fingerprint or 'unrecorded'}) is older "
                f"than this code's ({fingerprint()}): it lacks {shown}; run `cpoa db init` "
                "with this version of CPOA to migrate it in place (workflows keep going)")
    if extra or db_fingerprint != fingerprint():
        shown = ", ".join(f"{k} {s} -> {d}" for k, s, d in extra) or "nothing this code lacks"
        return (f"the database's state machine ({db_fingerprint}) is not this code's "
                f"({fingerprint()}): it allows {shown}; this CPOA is older than the one that "
                "migrated the database: upgrade it (or run `cpoa db init` from it if it is "
                "the newer one)")
    return None


def decide(kind: str, state: str, trigger: str, failed_from_state: str | None = None,
           review: bool = False) -> WorkflowModel:
    """Runs one trigger on a copy of the workflow's state.

    Args:
        kind: ``"podcast"`` or ``"snippets"``.
        state: The current state.
        trigger: One of :data:`TRIGGERS`.
        failed_from_state: Where a failed workflow failed (guards ``retry``).
        review: The workflow was started with ``review: true`` (guards ``step_done`` out of
            scripting).

    Returns:
        The model after the transition: its ``state`` and ``failed_from_state``.

    Raises:
        InvalidTransition: if the trigger is not allowed in this state.
    """
    dest, origin = _decided(kind, state, trigger, failed_from_state, review)
    return WorkflowModel(state=dest, failed_from_state=origin, review=review)


@functools.lru_cache(maxsize=1024)
def _decided(kind: str, state: str, trigger: str, failed_from_state: str | None,
             review: bool) -> tuple[str, str | None]:
    """``decide`` on the `transitions` machine, remembered: the machine is pure, and adding a
    model to it costs more than the rest of a step's Python (an InvalidTransition is not
    remembered; it is raised again each time)."""
    if state not in states(kind):  # transitions would raise a bare ValueError
        raise errors.InvalidTransition(
            f"cannot {trigger} a {kind} workflow in unknown state {state}",
            state=state, trigger=trigger)
    refused = errors.InvalidTransition(refusal(kind, state, trigger), state=state,
                                       trigger=trigger)
    model = WorkflowModel(state=state, failed_from_state=failed_from_state, review=review)
    machine = _machine(kind)
    machine.add_model(model, initial=state)
    try:
        moved = getattr(model, trigger)()
    except (transitions.MachineError, AttributeError):
        raise refused from None  # the library's wording is not the user's
    finally:
        machine.remove_model(model)
    if not moved:
        raise refused
    return model.state, model.failed_from_state


def refusal(kind: str, state: str, trigger: str) -> str:
    """Says, in CPOA's words, why a trigger is refused and which workflows it applies to."""
    sources = [s for s in states(kind)
               if any(trigger in t for (src, _), t in labelled_edges(kind).items() if src == s)]
    if trigger == "retry":
        allowed = "only a failed workflow can be retried"
    elif trigger == "cancel":
        allowed = "only a workflow still working, or failed, can be cancelled"
    elif trigger in ("approve", "reject") and kind == "podcast":
        allowed = ("only a workflow awaiting_review can be approved or rejected (another "
                   "reviewer may have acted first)")
    elif sources:
        allowed = f"{trigger} applies in state {', '.join(sources)}"
    else:
        allowed = f"{trigger} is not a trigger of {kind} workflows"
    return f"cannot {trigger} a {kind} workflow that is {state}: {allowed}"


def build_machine(kind: str, model: object | str = "self") -> transitions.Machine:
    """Builds the `transitions` machine of a kind (diagram, tests, `decide`)."""
    states_, transitions_, initial = _definition(kind)
    return transitions.Machine(
        model=model, states=states_, transitions=transitions_, initial=initial,
        auto_transitions=False, send_event=True, ignore_invalid_triggers=False)


def _definition(kind: str) -> tuple[list, list[dict], str]:
    try:
        return KINDS[kind]
    except KeyError:
        raise errors.InvalidInput(f"kind: unknown workflow kind {kind!r}", field="kind") from None


_local = threading.local()


def _machine(kind: str) -> transitions.Machine:
    # transitions.Machine is not thread-safe when models come and go: one per thread and kind.
    cache = _local.__dict__.setdefault("machines", {})
    if kind not in cache:
        cache[kind] = build_machine(kind, model=None)
    return cache[kind]
