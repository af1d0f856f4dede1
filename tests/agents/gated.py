"""A real VFA whose synthesis pauses after a number of turns until the test lets it go on: the
live progress of a synthesis in flight, seen without racing a fast espeak-ng."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from cpoa_agents.vfa import Turn, VoiceAgent

GATE_MAX_S = 120.0
"""Longest a gated turn waits (a test that forgot to open the gate still ends)."""


class GatedVoiceAgent(VoiceAgent):
    """VFA (espeak-ng voices) that speaks ``open_turns`` turns, then waits for :meth:`allow`
    or :meth:`go_on`.

    Attributes:
        spoken: Turns synthesised so far (cache misses).
    """

    def __init__(self, data_dir: Any, open_turns: int) -> None:
        super().__init__(data_dir, neural_host=False)
        self.open_turns = open_turns
        self.spoken = 0
        self.gate = threading.Condition()

    def synthesise(self, turn: Turn) -> np.ndarray:
        with self.gate:
            self.gate.wait_for(lambda: self.spoken < self.open_turns, GATE_MAX_S)
        samples = super().synthesise(turn)
        with self.gate:
            self.spoken += 1
        return samples

    def allow(self, turns: int) -> None:
        """Lets ``turns`` more turns be spoken."""
        with self.gate:
            self.open_turns += turns
            self.gate.notify_all()

    def go_on(self) -> None:
        """Lets the synthesis finish."""
        self.allow(10 ** 6)

    def stop(self) -> None:
        self.go_on()
        super().stop()
