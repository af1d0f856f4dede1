"""The fault harness's account of its worker kills (cpoa.testing.kills), with no database."""

from __future__ import annotations

import datetime

import pytest

from cpoa.testing.kills import resumptions


def test_resumptions__a_workflow_that_ended_before_the_kill_needs_none() -> None:
    """The victim's leases are read just before the kill too: a workflow whose last step began
    before it (completed by then, or by the statement the victim had sent) is not counted as
    never resumed; one that was held and shows nothing after the kill is."""
    kill_at = datetime.datetime(2026, 12, 5, 4, 0, tzinfo=datetime.UTC)
    before, after = kill_at - datetime.timedelta(seconds=0.01), kill_at + datetime.timedelta(
        seconds=0.3)
    histories = {
        "ended": [{"at": before, "to_state": "completed"}],
        "stuck": [{"at": before, "to_state": "imaging"}],
        "resumed": [{"at": before, "to_state": "imaging"}, {"at": after, "to_state": "finalizing"}],
    }
    kill = {"at": kill_at, "at_monotonic": 100.0, "held": ["ended", "stuck", "resumed"]}
    got = resumptions([kill], histories, [("resumed", 100.2), ("stuck", 99.9)])
    assert got["never"] == 1  # "stuck"
    assert got["per_workflow"] == [pytest.approx(0.2)]
