"""VFA_NEURAL_HOST: which voice the host gets (a pure reading of the environment)."""

from __future__ import annotations

import pytest

from cpoa_agents import neural


@pytest.mark.parametrize("value, expected", [("no", False), ("0", False), ("OFF", False),
                                             ("auto", neural.available())])
def test_wanted__reads_the_variable(value, expected):
    """auto follows the installed extra; no/0/off turn Piper off."""
    assert neural.wanted({"VFA_NEURAL_HOST": value}) is expected
    assert neural.wanted({}) is neural.available()


def test_wanted__bad_value_names_the_variable():
    """Anything else is refused, naming the variable and what it takes."""
    with pytest.raises(ValueError, match="VFA_NEURAL_HOST: expected auto, yes or no, got 'maybe'"):
        neural.wanted({"VFA_NEURAL_HOST": "maybe"})
