"""Test plugins: a real PostgreSQL (configured or embedded) and real HTTP agents."""

from __future__ import annotations

import signal

pytest_plugins = ["tests.fix_db", "tests.fix_agents", "tests.fix_gateway", "tests.fix_browser"]

# The Ctrl-C tests send SIGINT to the cpoa commands they start, as a terminal would. A shell
# without job control starts a background job with SIGINT ignored, and every process it starts
# inherits that (POSIX), so those commands would ignore it as they should. A handled signal is
# reset to its default at exec: with Python's own handler here, each command starts as it
# would in the foreground, however the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
