"""Runs one VFA agent in its own process until killed, for the kill-and-restart test.

Usage: ``python -m tests.agents.vfa_runner DATA_DIR [PORT]``. Prints the base URL on one line once
the agent listens (and has resumed its unfinished tasks), then blocks.
"""

from __future__ import annotations

import logging
import sys
import threading

from cpoa_agents.vfa import VoiceAgent


def main(argv: list[str]) -> None:
    """Starts the agent on 127.0.0.1 and waits forever (the test ends it with a signal)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    data_dir, port = argv[0], int(argv[1]) if len(argv) > 1 else 0
    agent = VoiceAgent(data_dir)
    print(agent.start("127.0.0.1", port), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
