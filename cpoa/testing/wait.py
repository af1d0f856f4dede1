"""Waiting on a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

from cpoa.engine import Engine


def wait_until(check: Callable[[], object], timeout: float = 10.0,
               interval: float = 0.02) -> object:
    """Polls ``check`` until it returns something truthy; raises AssertionError at the
    deadline (a failed test, or a failed check of a harness)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        time.sleep(interval)


def drive(engine: Engine, workflow_id: object, timeout: float = 10.0) -> str:
    """Advances one workflow until it is terminal (waits on its schedule, not a fixed sleep)."""
    def step() -> str | None:
        state = engine.advance(workflow_id)
        return state if state in ("completed", "failed", "cancelled") else None
    return wait_until(step, timeout, interval=0.01)  # type: ignore[return-value]
