"""Ctrl-C during a step of a command that drives a workflow (cpoa.progress.interrupt_after_step),
with signals sent to this test's own process."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from cpoa import progress


@pytest.fixture
def sigint_restored():
    """Puts SIGINT's handler back as it was after the test."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_after_step__ctrl_c_takes_effect_when_the_step_ends(sigint_restored):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with progress.interrupt_after_step():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("step")
    assert finished == ["step"]


def test_interrupt_after_step__an_ignored_sigint_stays_ignored(sigint_restored):
    """A process started with SIGINT ignored (a background job of a shell without job control)
    ignores Ctrl-C during a step too, as it does between steps."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with progress.interrupt_after_step():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
