"""`cpoa demo TOPIC`: a finished episode from one command, offline.

Starts (or reuses) the embedded PostgreSQL unless one is configured, the seven reference agents
and the sample-corpus server on free local ports; drives its one workflow in this process (never
a general worker: other workflows in the database are not the demo's, and their agents may be
gone) with a progress bar per state and the live page's URL; writes the episode to
``./output/<workflow_id>/``. Ctrl-C cancels the workflow, so nothing is left half-done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from cpoa import api, errors, models, outbox, progress
from cpoa import settings as settings_module
from cpoa.engine import Engine
from cpoa_agents import corpus, episode, serve, userfiles

DEMO_POLL_S = "0.2"
"""Polling interval the demo gives every agent (the contract defaults are 3–10 s)."""
CLIENT_ID = "cpoa-demo"
"""The UI client the demo's workflow sends its events to (the live page)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What the user asked of the demo.

    Args:
        topic: The episode's topic.
        urls: Pages to harvest instead of the sample corpus.
        output_root: Where ``<workflow_id>/`` is written.
        serve_page: Keep the live page up after the episode, until Ctrl-C.
        params: More podcast parameters (``format``, ``target_minutes``).
    """

    topic: str
    urls: Sequence[str] = ()
    output_root: str = "output"
    serve_page: bool = False
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def run(topic: str, urls: Sequence[str] = (), *, output_root: str = "output",
        data_dir: str | None = None, serve_page: bool = False, out: TextIO = sys.stdout,
        files: Sequence[str] = (), options: Mapping[str, Any] | None = None) -> int:
    """Runs one podcast workflow end to end.

    Args:
        topic: What the episode is about.
        urls: Web pages to harvest.
        output_root: Where ``<workflow_id>/`` is written.
        data_dir: The agents' data folder.
        serve_page: Keep the live page up after the episode, until Ctrl-C.
        out: Where progress is printed.
        files: Your own documents (checked first; served to WCHA over local HTTP).
        options: More podcast parameters (``format``, ``target_minutes``).

    Returns:
        0 when the episode was written, 1 when the workflow did not complete, 130 when
        interrupted (the workflow is then cancelled).

    Raises:
        cpoa.errors.InvalidInput: A file is missing, unreadable, unsupported or too large.
    """
    documents = userfiles.check(files)
    wanted = Options(topic, tuple(urls), output_root, serve_page, dict(options or {}))
    root = pathlib.Path(data_dir) if data_dir else default_data_dir()
    with contextlib.ExitStack() as running:
        try:
            fleet, shelf = _start_agents(root, documents, running)
            if documents:
                wanted = dataclasses.replace(wanted, params={**wanted.params,
                                                             "files": shelf.urls()})
            engine = api.connect(_settings(fleet))
            running.callback(engine.store.close)
            engine.store.apply_schema()
            return _run_episode(engine, fleet, wanted, out)
        except KeyboardInterrupt:  # before the workflow existed: nothing to cancel
            print("\ninterrupted", file=out)
            return 130


def _start_agents(root: pathlib.Path, documents: Sequence[Any], running: contextlib.ExitStack,
                  ) -> tuple[serve.Fleet, userfiles.FileServer]:
    """The sample corpus, the user's files and the seven agents, on free local ports."""
    library = corpus.CorpusServer(root / "corpus")
    library.start("127.0.0.1", 0)
    running.callback(library.stop)
    shelf = userfiles.FileServer(root / "files", documents)
    shelf.start("127.0.0.1", 0)
    running.callback(shelf.stop)
    local = tuple(urllib.parse.urlsplit(s.base_url).netloc for s in (library, shelf))
    fleet = serve.serve(root, ports={name: 0 for name in serve.AGENT_CLASSES}, options={
        "WCHA": {"corpus_url": library.base_url, "allowed_hosts": local}})
    running.callback(fleet.stop)
    return fleet, shelf


def _settings(fleet: serve.Fleet) -> settings_module.Settings:
    env = {**os.environ, **fleet.env()}
    for name in settings_module.POLLED_AGENTS:
        env.setdefault(f"CPOA_{name}_POLLING_INTERVAL_SECONDS", DEMO_POLL_S)
    return settings_module.from_env(env)


def _run_episode(engine: Engine, fleet: serve.Fleet, options: Options, out: TextIO) -> int:
    started = time.monotonic()
    workflow_id = engine.start_workflow(
        "podcast", {"topic": options.topic, "urls": list(options.urls), **options.params},
        client_id=CLIENT_ID)
    try:
        print(f"workflow {workflow_id}\nlive page: {fleet.url('ASF')}/", file=out, flush=True)
        workflow = _drive(engine, workflow_id, out)
    except KeyboardInterrupt:
        _cancel(engine, workflow_id, out)
        return 130
    status = engine.get_workflow(workflow_id)
    if workflow.state != "completed":
        print(f"\nworkflow {workflow.state}: {status['error']}", file=out)
        if status["failed_from_state"] == "fetching" and not options.urls:
            print(f"hint: the sample corpus has nothing on {options.topic!r}; give the pages "
                  "to harvest with --url URL or --file PATH (repeatable)", file=out)
        return 1
    folder = pathlib.Path(options.output_root) / str(workflow_id)
    _report(status, episode.write(status, folder), time.monotonic() - started, out)
    _closing(engine, fleet, folder, options, out)
    return 0


def _drive(engine: Engine, workflow_id: uuid.UUID, out: TextIO) -> models.Workflow:
    """Advances the demo's workflow to its end, showing each state and delivering its UI
    events to the live page after every step."""
    bars = progress.Bars(engine, workflow_id, out)

    def after_step(workflow: models.Workflow) -> None:
        _deliver(engine, workflow_id)
        bars.show(workflow)
    return progress.drive(engine, workflow_id, after_step=after_step)


def _deliver(engine: Engine, workflow_id: uuid.UUID) -> None:
    """Sends the workflow's UI events to the live page (only its own: another workflow's
    belong to its own UI)."""
    outbox.deliver_workflow(engine.store, engine.client, engine.settings.asf_ui_update_url,
                            workflow_id)


def _cancel(engine: Engine, workflow_id: uuid.UUID, out: TextIO) -> None:
    """Cancels the interrupted workflow (a later command must not find it half-done) and
    shows it on the live page."""
    try:
        engine.cancel(workflow_id)
        print(f"\ninterrupted: workflow {workflow_id} cancelled", file=out)
    except errors.InvalidTransition:  # it ended just before the Ctrl-C
        state = engine.store.get_workflow(workflow_id).state
        print(f"\ninterrupted: workflow {workflow_id} already {state}", file=out)
    _deliver(engine, workflow_id)


def _report(status: dict, files: dict[str, pathlib.Path], seconds: float, out: TextIO) -> None:
    for warning in status["warnings"]:
        print(f"warning: {warning}", file=out)
    note = status["outputs"]["script"].get("length", {}).get("note")
    if note:
        print(f"note: {note}", file=out)
    print(f"\nepisode ready in {seconds:.1f} s "
          f"({status['outputs']['audio']['duration_s']:.0f} s of audio):", file=out)
    for name in sorted(files):
        print(f"  {files[name]}", file=out)


def _closing(engine: Engine, fleet: serve.Fleet, folder: pathlib.Path, options: Options,
             out: TextIO) -> None:
    """Says where the episode stays, and what keeps running; with ``serve_page`` serves the
    live page until Ctrl-C."""
    if engine.settings.database.embedded:
        print("the embedded PostgreSQL keeps running for the next command; "
              "`cpoa db stop` stops it", file=out)
    if not options.serve_page:
        print(f"listen: {folder / 'episode.mp3'} (the live page closes now; "
              "--serve keeps it open)", file=out, flush=True)
        return
    print(f"serving the live page at {fleet.url('ASF')}/ until Ctrl-C", file=out, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopped", file=out)


def default_data_dir() -> pathlib.Path:
    """Returns the per-user folder of the agents' data."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import platformdirs
        return pathlib.Path(platformdirs.user_data_dir("cpoa")) / "agents"
