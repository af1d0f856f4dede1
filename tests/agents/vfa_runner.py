"""Runs one VFA agent in its own process until killed, for the kill-and-restart test.

Usage: ``python -m tests.agents.vfa_runner DATA_DIR [PORT]``. Prints the base URL on one line once
the agent listens (and has resumed its unfinished tasks), then blocks.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from cpoa_agents.vfa import VoiceAgent

REPO = pathlib.Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> None:
    """Starts the agent on 127.0.0.1 and waits forever (the test ends it with a signal)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    data_dir, port = argv[0], int(argv[1]) if len(argv) > 1 else 0
    agent = VoiceAgent(data_dir, neural_host=False)  # the cache and kill tests use espeak-ng
    print(agent.start("127.0.0.1", port), flush=True)
    threading.Event().wait()


class VfaProcess:
    """A VFA agent in a subprocess (``tests.agents.vfa_runner``) and its base URL."""

    def __init__(self, data_dir: pathlib.Path, port: int = 0) -> None:
        self.log = (data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.agents.vfa_runner", str(data_dir), str(port)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=self.log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None
        self.base = self.process.stdout.readline().decode().strip()
        if not self.base.startswith("http://"):
            self.close()
            raise AssertionError(f"the runner did not start; see {self.log.name}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
