"""Driving one workflow in this process and showing its states as they pass.

`cpoa start --wait` and `cpoa demo` advance a single workflow with :func:`drive` (never a
general worker: other workflows in the database are not theirs to run) and print a progress
bar per state entered with :class:`Bars`.
"""

from __future__ import annotations

import contextlib
import datetime
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TextIO

from cpoa import defaults, errors, events, machine, models
from cpoa.engine import Engine

BAR_WIDTH = 30
"""Characters of a progress bar."""


def drive(engine: Engine, workflow_id: uuid.UUID, *, timeout_s: float | None = None,
          after_step: Callable[[models.Workflow], None] | None = None) -> models.Workflow:
    """Advances one workflow until it is terminal (or awaits a reviewer), sleeping until it
    is due again.

    Args:
        engine: The engine to advance it with.
        workflow_id: The workflow.
        timeout_s: Give up after this many seconds (None: never).
        after_step: Called with the stored workflow after each advance (progress, UI events).

    Returns:
        The terminal workflow.

    Raises:
        CPOAError: the workflow is still unfinished after ``timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with interrupt_after_step():
            workflow = engine.advance_workflow(workflow_id)
            if after_step is not None:
                after_step(workflow)
        if workflow.is_terminal or workflow.state in machine.WAITING_STATES:
            return workflow  # a reviewer acts next, not this loop
        if deadline is not None and time.monotonic() > deadline:
            raise errors.CPOAError(
                f"workflow {workflow_id} still {workflow.state} after {timeout_s:g} s")
        time.sleep(pause(workflow))


@contextlib.contextmanager
def interrupt_after_step() -> Iterator[None]:
    """Ctrl-C (SIGINT) during a step takes effect when the step ends, so that no write to the
    database is cut in half (psycopg would log a failed rollback); a second Ctrl-C stops at
    once, as the first does while the loop sleeps. Only the main thread handles signals: on
    any other thread this does nothing. Nor does it in a process started with SIGINT ignored (a
    background job of a shell without job control): Ctrl-C stays ignored throughout, not only
    while the loop sleeps."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        yield
        return
    pressed: list[bool] = []

    def on_interrupt(signum: int, frame: object) -> None:
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def pause(workflow: models.Workflow) -> float:
    """Seconds to wait before advancing again: until it is due, at most a second; a little
    while when another process holds its lease."""
    if workflow.next_run_at is None or workflow.lease_owner is not None:
        return defaults.DRIVE_HELD_RECHECK_S
    now = datetime.datetime.now(datetime.timezone.utc)
    wait = (workflow.next_run_at - now).total_seconds()
    return min(max(wait, 0.0), defaults.DRIVE_RECHECK_MAX_S)


class Bars:
    """Prints a progress bar for each state a workflow enters, read from its history so that
    none is missed (another process may advance it too), with the time spent in the last.

    Args:
        engine: Where the workflow lives.
        workflow_id: The workflow.
        out: Where to print.
    """

    def __init__(self, engine: Engine, workflow_id: uuid.UUID, out: TextIO) -> None:
        self.store = engine.store
        self.workflow_id = workflow_id
        self.out = out
        self.seen = 0
        self.since = time.monotonic()

    def show(self, workflow: models.Workflow) -> None:
        """Prints the states entered since the last call."""
        history = self.store.get_history(self.workflow_id)
        for entry in history[self.seen:]:
            if self.seen:
                print(f"  done in {time.monotonic() - self.since:.1f} s", file=self.out)
            self.since = time.monotonic()
            print(bar(workflow.kind, entry["to_state"], entry["from_state"]), file=self.out,
                  flush=True)
            self.seen += 1


def bar(kind: str, state: str, failed_from: str | None) -> str:
    """One line: a bar filled to the state's progress, the state and what it does."""
    fraction = events.progress(kind, state, failed_from)
    filled = int(round(fraction * BAR_WIDTH))
    message = events.MESSAGES.get(state) or events.IMAGING_MESSAGES.get(kind, state)
    return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}  {state:<13}"
            f"{message}")
