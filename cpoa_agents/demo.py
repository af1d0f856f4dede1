"""`cpoa demo TOPIC`: a finished episode from one command, offline.

Starts (or reuses) the embedded PostgreSQL unless one is configured, the seven reference agents
and the sample-corpus server on free local ports, and a worker; shows progress per state with
the live page's URL; writes the episode to ``./output/<workflow_id>/``. Ctrl-C stops it all.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from cpoa import api, events, machine
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa.worker import Worker
from cpoa_agents import corpus, episode, serve, userfiles

DEMO_POLL_S = "0.2"
"""Polling interval the demo gives every agent (the contract defaults are 3–10 s)."""
BAR_WIDTH = 30


def run(topic: str, urls: Sequence[str] = (), *, output_root: str = "output",
        data_dir: str | None = None, out: TextIO = sys.stdout,
        files: Sequence[str] = (), options: Mapping[str, Any] | None = None) -> int:
    """Runs one podcast workflow end to end; returns the exit code (0 when completed).

    Args:
        topic: What the episode is about.
        urls: Web pages to harvest.
        output_root: Where ``<workflow_id>/`` is written.
        data_dir: The agents' data folder.
        out: Where progress is printed.
        files: Your own documents (checked first; served to WCHA over local HTTP).
        options: More podcast parameters (``format``, ``target_minutes``).

    Raises:
        cpoa.errors.InvalidInput: A file is missing, unreadable, unsupported or too large.
    """
    started = time.monotonic()
    documents = userfiles.check(files)
    root = pathlib.Path(data_dir) if data_dir else default_data_dir()
    library = corpus.CorpusServer(root / "corpus")
    library.start("127.0.0.1", 0)
    shelf = userfiles.FileServer(root / "files", documents)
    shelf.start("127.0.0.1", 0)
    local = tuple(urllib.parse.urlsplit(s.base_url).netloc for s in (library, shelf))
    fleet = serve.serve(root, ports={name: 0 for name in serve.AGENT_CLASSES}, options={
        "WCHA": {"corpus_url": library.base_url, "allowed_hosts": local}})
    worker: Worker | None = None
    thread: threading.Thread | None = None
    params = {"topic": topic, "urls": list(urls), **(options or {})}
    if documents:
        params["files"] = shelf.urls()
    try:
        engine = api.connect(_settings(fleet))
        engine.store.apply_schema()
        workflow_id = engine.start_workflow("podcast", params, client_id="cpoa-demo")
        print(f"workflow {workflow_id}\nlive page: {fleet.url('ASF')}/", file=out)
        worker = Worker(engine, concurrency=2)
        thread = threading.Thread(target=worker.run, name="cpoa-demo-worker", daemon=True)
        thread.start()
        state = _follow(engine, workflow_id, out)
        status = engine.get_workflow(workflow_id)
        if state != "completed":
            print(f"\nworkflow {state}: {status['error']}", file=out)
            return 1
        folder = pathlib.Path(output_root) / str(workflow_id)
        files = episode.write(status, folder)
        for warning in status["warnings"]:
            print(f"warning: {warning}", file=out)
        note = status["outputs"]["script"].get("length", {}).get("note")
        if note:
            print(f"note: {note}", file=out)
        print(f"\nepisode ready in {time.monotonic() - started:.1f} s "
              f"({status['outputs']['audio']['duration_s']:.0f} s of audio):", file=out)
        for name in sorted(files):
            print(f"  {files[name]}", file=out)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping", file=out)
        return 130
    finally:
        if worker is not None:
            worker.stop()
            thread.join(timeout=30)
        fleet.stop()
        library.stop()
        shelf.stop()


def _settings(fleet: serve.Fleet) -> settings_module.Settings:
    env = {**os.environ, **fleet.env()}
    for name in settings_module.POLLED_AGENTS:
        env.setdefault(f"CPOA_{name}_POLLING_INTERVAL_SECONDS", DEMO_POLL_S)
    return settings_module.from_env(env)


def _follow(engine: Engine, workflow_id: object, out: TextIO) -> str:
    """Shows a progress bar per state entered (from the history, so no state is missed)
    until the workflow is terminal; returns that state."""
    seen, since = 0, time.monotonic()
    while True:
        history = engine.store.get_history(workflow_id)
        for entry in history[seen:]:
            if seen:
                print(f"  done in {time.monotonic() - since:.1f} s", file=out)
            since = time.monotonic()
            _bar(engine.store.get_workflow(workflow_id).kind, entry["to_state"],
                 entry["from_state"], out)
        seen = len(history)
        if history and history[-1]["to_state"] in machine.TERMINAL_STATES:
            return history[-1]["to_state"]
        time.sleep(0.1)


def _bar(kind: str, state: str, failed_from: str | None, out: TextIO) -> None:
    fraction = events.progress(kind, state, failed_from)
    filled = int(round(fraction * BAR_WIDTH))
    message = events.MESSAGES.get(state) or events.IMAGING_MESSAGES.get(kind, state)
    print(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}  {state:<13}"
          f"{message}", file=out, flush=True)


def default_data_dir() -> pathlib.Path:
    """Returns the per-user folder of the agents' data."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import platformdirs
        return pathlib.Path(platformdirs.user_data_dir("cpoa")) / "agents"
