"""The live hub's reading of a cpoa_events payload (pure)."""

from __future__ import annotations

import uuid

import pytest

from cpoa.gateway.hub import _event_key

WORKFLOW = uuid.UUID("6f1c2a9e-0b7d-4c1e-9a53-2f0d8e7b6c41")


def test_event_key__workflow_and_event_id() -> None:
    assert _event_key(f"{WORKFLOW}:42") == (WORKFLOW, 42)


@pytest.mark.parametrize("payload", [
    f"{WORKFLOW}:progress",  # a live-progress notification, no history row
    f"{WORKFLOW}:", "not-a-uuid:42", ":42", "42", "", f"{WORKFLOW}:-1", f"{WORKFLOW}:4x",
])
def test_event_key__anything_else_is_none(payload: str) -> None:
    assert _event_key(payload) is None
