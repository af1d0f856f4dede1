"""The agent's row in PostgreSQL (agent_flow): its breaker and its rate, function by function.

cpoa_agent_report_v1 is what every step's write calls when a request told something of its
agent; cpoa_take_token_v1 is what a submit to a rate-limited agent asks first. Both run here
against the real schema, one call per transaction as the workers make them.
"""

from __future__ import annotations

import psycopg
import pytest

from cpoa import defaults

FIRST, MOST = defaults.BREAKER_FIRST_PAUSE_S, defaults.BREAKER_MOST_PAUSE_S


def _report(db: psycopg.Connection, ok: bool, pause_s: float | None = None,
            reason: str | None = None) -> dict:
    db.execute("SELECT cpoa_agent_report_v1('VFA', %s, %s, %s, %s, %s, %s)",
               (ok, pause_s, reason, defaults.BREAKER_FAILURES, FIRST, MOST))
    return db.execute("SELECT failures, pause_reason, "
                      "extract(epoch FROM paused_until - now())::float8 AS left_s "
                      "FROM agent_flow WHERE agent = 'VFA'").fetchone()


def _pause_over(db: psycopg.Connection) -> None:
    """The breaker's pause has run out (as if its time had passed)."""
    db.execute("UPDATE agent_flow SET paused_until = now() - interval '1 ms' "
               "WHERE agent = 'VFA'")


def test_breaker__opens_at_the_threshold_doubles_its_pause_to_the_most_and_closes_on_an_answer(db):
    """Failures below the threshold pause nothing; the threshold's failure pauses new submits
    for the first pause; failures while it is open do not lengthen it; each failure after a
    pause ran out opens it again for twice as long, up to the most; one answer closes it."""
    for _ in range(defaults.BREAKER_FAILURES - 1):
        row = _report(db, ok=False)
    assert (row["failures"], row["pause_reason"], row["left_s"]) == (
        defaults.BREAKER_FAILURES - 1, None, None)
    row = _report(db, ok=False)
    assert row["pause_reason"] == "breaker" and row["left_s"] == pytest.approx(FIRST, abs=0.3)
    row = _report(db, ok=False)  # a poll failing while it is open
    assert row["left_s"] == pytest.approx(FIRST, abs=0.3)
    assert row["failures"] == defaults.BREAKER_FAILURES + 1
    pauses = []
    for _ in range(9):
        _pause_over(db)
        pauses.append(_report(db, ok=False)["left_s"])
    expected = [min(MOST, FIRST * 2 ** n) for n in range(1, 10)]
    assert pauses == pytest.approx(expected, abs=0.3), pauses
    row = _report(db, ok=True)
    assert (row["failures"], row["pause_reason"], row["left_s"]) == (0, None, None)
    _pause_over(db)
    for _ in range(defaults.BREAKER_FAILURES):  # closed means closed: it starts again short
        row = _report(db, ok=False)
    assert row["left_s"] == pytest.approx(FIRST, abs=0.3)


def test_breaker__an_answer_keeps_the_agents_own_retry_after_pause(db):
    """A pause the agent asked for (429 with Retry-After) is the agent's word: an answer from it
    to a poll does not end it, as it ends the breaker's."""
    row = _report(db, ok=False, pause_s=30.0, reason="429")
    assert row["pause_reason"] == "429" and row["left_s"] == pytest.approx(30.0, abs=1.0)
    row = _report(db, ok=True)
    assert row["pause_reason"] == "429" and row["left_s"] == pytest.approx(30.0, abs=1.0)
