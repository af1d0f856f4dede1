"""What the podcast steps send: the episode options reach WCHA and PSWA unchanged."""

from __future__ import annotations

import uuid

from cpoa import machine, models, steps


def workflow(params, context=None):
    return models.Workflow(uuid.uuid4(), "podcast", machine.initial_state("podcast"), params,
                           context or {}, [])


def test_harvest_request__passes_files_and_target_minutes():
    """files and target_minutes go to WCHA; absent options are left out."""
    wf = workflow({"topic": "bees", "urls": [], "files": ["http://127.0.0.1:1/files/0/a.md"],
                   "target_minutes": 10})
    assert steps.PODCAST["fetching"].request(wf, None) == {
        "topic": "bees", "files": ["http://127.0.0.1:1/files/0/a.md"], "target_minutes": 10}
    assert steps.PODCAST["fetching"].request(workflow({"topic": "bees"}), None) == {
        "topic": "bees"}


def test_script_request__passes_format_target_and_sources():
    """format, target_minutes and the harvested URLs (as sources) go to PSWA."""
    wf = workflow({"topic": "bees", "format": "panel", "target_minutes": 5},
                  {"content": "text", "topics": [], "source_urls": ["http://x/a"]})
    body = steps.PODCAST["scripting"].request(wf, None)
    assert body["format"] == "panel" and body["target_minutes"] == 5
    assert body["sources"] == [{"url": "http://x/a"}]
    plain = steps.PODCAST["scripting"].request(workflow({"topic": "b"}, {"content": "t"}), None)
    assert set(plain) == {"topic", "content", "topics"}
