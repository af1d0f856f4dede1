"""What each working state asks of which agent, and how its results become the next context.

Pure functions over a workflow snapshot: ``request`` builds the body for one item, ``validate``
checks a result against the contract, ``conclude`` turns the finished items into a Verdict.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from cpoa import models
from cpoa.agents import results

PSWA_CONTENT_MAX_CHARS = 50_000
KEY_SAFE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
"""Characters kept as they are in a downstream key; the rest is percent-encoded (UTF-8)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a step ended: ``ok`` moves on with ``context``; otherwise the workflow fails."""

    ok: bool
    context: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One working state.

    Attributes:
        agent: The agent's short name.
        path: Appended to the agent's base URL.
        key: The step's part of the downstream idempotency key.
        request: Builds the request body for one item.
        validate: Checks a result and returns what CPOA keeps.
        conclude: Turns the finished tasks into a Verdict.
        items: The fan-out items as (item_key, item); one unnamed item by default.
        skipped_is_failure: ``result.status == "skipped"`` fails the item.
        notified: The agent is notified (one POST to its full URL, 2xx is success), not
            given a task to poll (ASF).
        produces: The context keys the step writes (a fork copies those of the steps
            before its starting state).
        reads: The workflow parameters the step uses (a fork refuses a change of one that
            no step from its starting state on reads: it would have no effect).
    """

    agent: str
    path: str
    key: str
    request: Callable[[models.Workflow, Any], dict[str, Any]]
    validate: Callable[[Any], Any]
    conclude: Callable[[models.Workflow, Sequence[models.Task]], Verdict]
    items: Callable[[models.Workflow], list[tuple[str, Any]]] = lambda wf: [("", None)]
    skipped_is_failure: bool = True
    notified: bool = False
    produces: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()

    def idempotency_key(self, workflow: models.Workflow, item_key: str) -> str:
        """``<base>_<step>[_<item>][_r<n>]`` (contract §2), fit for an HTTP header.

        A caller's key or an agent's topic id may hold characters a header cannot carry
        (non-ASCII, control characters): those are percent-encoded, and so is ``%`` itself,
        so that two different keys never encode alike.
        """
        key = f"{workflow.agent_key_base}_{self.key}"
        if item_key:
            key += f"_{item_key}"
        if workflow.retry_count:
            key += f"_r{workflow.retry_count}"
        return urllib.parse.quote(key, safe=KEY_SAFE_CHARS)


def _only(name: str, *, required: bool = True, warn: str = "") -> Callable[
        [models.Workflow, Sequence[models.Task]], Verdict]:
    """Conclusion of a one-item step: its result is stored under ``name``."""
    def conclude(workflow: models.Workflow, tasks: Sequence[models.Task]) -> Verdict:
        task = tasks[0]
        if task.status == "succeeded":
            return Verdict(True, {name: task.output_result_summary_json})
        reason = _reason(task)
        if required:
            return Verdict(False, reason=reason)
        return Verdict(True, {}, warnings=(f"{warn}: {reason}",))
    return conclude


def _reason(task: models.Task) -> str:
    error = task.error_details_json or {}
    return str(error.get("reason") or f"{task.agent_name} failed")


# -- podcast ---------------------------------------------------------------------------------

def _harvest_request(wf: models.Workflow, _: Any) -> dict[str, Any]:
    body = {"topic": wf.params["topic"]}
    if wf.params.get("urls"):
        body["urls"] = wf.params["urls"]
    for name in ("files", "max_results", "target_minutes"):
        if wf.params.get(name):
            body[name] = wf.params[name]
    return body


def _harvested(wf: models.Workflow, tasks: Sequence[models.Task]) -> Verdict:
    verdict = _only("harvest")(wf, tasks)
    if not verdict.ok:
        return verdict
    return Verdict(True, dict(verdict.context["harvest"]))


def script_revision(wf: models.Workflow) -> int:
    """Which script this is: 1, then one more after each rejection by a reviewer."""
    return int(wf.context.get("script_revision") or 1)


def _script_items(wf: models.Workflow) -> list[tuple[str, Any]]:
    """One item; a rewrite after a rejection is item ``v<n>``, so its task row and its PSWA
    key (``<base>_pswa_v<n>``) are new and PSWA writes a new script."""
    revision = script_revision(wf)
    return [("" if revision == 1 else f"v{revision}", None)]


def _script_request(wf: models.Workflow, _: Any) -> dict[str, Any]:
    body = {"topic": wf.params["topic"], "content": wf.context["content"][:PSWA_CONTENT_MAX_CHARS],
            "topics": wf.context.get("topics", [])}
    if script_revision(wf) > 1 and wf.context.get("revision_notes"):
        body["revision_notes"] = wf.context["revision_notes"]
    for name in ("persona", "format", "target_minutes"):
        if wf.params.get(name):
            body[name] = wf.params[name]
    if wf.context.get("source_urls"):  # in the content's order: PSWA names each line's source
        body["sources"] = [{"url": url} for url in wf.context["source_urls"]]
    return body


def _cover_prompt(wf: models.Workflow, _: Any) -> dict[str, Any]:
    if wf.params.get("cover_prompt"):
        return {"prompt": wf.params["cover_prompt"]}
    title = wf.context["script"]["title"]
    return {"prompt": f"Podcast cover art for \u201c{title}\u201d, an episode about "
                      f"{wf.params['topic']}"}


def _notified(wf: models.Workflow, tasks: Sequence[models.Task]) -> Verdict:
    if tasks[0].status == "succeeded":
        return Verdict(True, {"asf_notified": True})
    return Verdict(True, {"asf_notified": False},
                   warnings=(f"ASF notification failed: {_reason(tasks[0])}",))


REVIEW_CONTEXT = ("script_revision", "revision_notes", "script_history", "review")
"""What the review gate adds to the context beside ``script`` (cpoa/editorial.py)."""

PODCAST = {
    "fetching": Step("WCHA", "/harvest", "wcha", _harvest_request, results.harvest, _harvested,
                     produces=("content", "source_urls"),
                     reads=("topic", "urls", "files", "max_results", "target_minutes")),
    "analyzing": Step(
        "TDA", "/discover_topics", "tda",
        lambda wf, _: {"query": wf.params["topic"], "content": wf.context["content"]},
        results.discovered_topics, _only("topics"), produces=("topics",), reads=("topic",)),
    "scripting": Step("PSWA", "/weave_script", "pswa", _script_request, results.script,
                      _only("script"), items=_script_items,
                      produces=("script", *REVIEW_CONTEXT),  # review: its verdict waits
                      reads=("topic", "persona", "format", "target_minutes", "review")),
    "synthesizing": Step(
        "VFA", "/forge_voice", "vfa",
        lambda wf, _: {"script": wf.context["script"],
                       "voice_params": wf.params.get("voice_params", {})},
        results.audio, _only("audio"), produces=("audio",), reads=("voice_params",)),
    "imaging": Step("IGA", "/generate_image", "iga", _cover_prompt,
                    lambda r: results.image(r)["image_url"],
                    _only("image_url", required=False, warn="cover art skipped"),
                    skipped_is_failure=True, produces=("image_url",),
                    reads=("cover_prompt", "topic")),  # topic: the default prompt
    "finalizing": Step(
        "ASF", "", "asf",
        lambda wf, _: {"stream_id": wf.context["audio"]["stream_id"],
                       "audio_url": wf.context["audio"]["url"],
                       "workflow_id": str(wf.workflow_id)},
        lambda r: r, _notified, notified=True, produces=("asf_notified",)),
}


# -- snippets --------------------------------------------------------------------------------

def _discovered(wf: models.Workflow, tasks: Sequence[models.Task]) -> Verdict:
    verdict = _only("topics")(wf, tasks)
    if verdict.ok and not verdict.context["topics"]:
        return Verdict(False, reason="TDA discovered no topics")
    seen: dict[str, int] = {}
    for i, topic in enumerate(verdict.context.get("topics", [])):
        # The topic id names the SCA item and its key: a repeat would replay the first snippet.
        first = seen.setdefault(topic["topic_id"], i)
        if first != i:
            return Verdict(False, reason=f"TDA result.discovered_topics[{i}].topic_id "
                                         f"{topic['topic_id']!r} repeats topic {first}")
    return verdict


def _topics(wf: models.Workflow) -> list[tuple[str, Any]]:
    return [(str(t["topic_id"]), t) for t in wf.context.get("topics", [])]


def _craft_request(wf: models.Workflow, topic: dict[str, Any]) -> dict[str, Any]:
    return {"topic_id": topic["topic_id"],
            "content_brief": topic.get("summary") or topic["title_suggestion"],
            "topic_info": topic}


def _crafted(wf: models.Workflow, tasks: Sequence[models.Task]) -> Verdict:
    snippets = [t.output_result_summary_json for t in tasks if t.status == "succeeded"]
    warnings = tuple(f"snippet for topic {t.item_key} failed: {_reason(t)}"
                     for t in tasks if t.status == "failed")
    if not snippets:
        return Verdict(False, reason="every snippet failed: " + "; ".join(warnings))
    return Verdict(True, {"snippets": snippets}, warnings=warnings)


def _prompts(wf: models.Workflow) -> list[tuple[str, Any]]:
    return [(str(s["snippet_id"]), s) for s in wf.context.get("snippets", [])
            if s.get("cover_art_prompt")]


def _illustrated(wf: models.Workflow, tasks: Sequence[models.Task]) -> Verdict:
    images = {t.item_key: t.output_result_summary_json for t in tasks if t.status == "succeeded"}
    snippets = [{**s, "image_url": images.get(str(s["snippet_id"]))}
                for s in wf.context.get("snippets", [])]
    warnings = tuple(f"image for snippet {t.item_key} skipped: {_reason(t)}"
                     for t in tasks if t.status == "failed")
    return Verdict(True, {"snippets": snippets}, warnings=warnings)


SNIPPETS = {
    "discovering": Step(
        "TDA", "/discover_topics", "tda",
        lambda wf, _: {"query": wf.params["query"], "limit": wf.params["limit"]},
        results.discovered_topics, _discovered, produces=("topics",), reads=("query", "limit")),
    "crafting": Step("SCA", "/craft_snippet", "sca", _craft_request, results.snippet, _crafted,
                     items=_topics, produces=("snippets",)),
    "imaging": Step("IGA", "/generate_image", "iga",
                    lambda wf, s: {"prompt": s["cover_art_prompt"]},
                    lambda r: results.image(r)["image_url"], _illustrated, items=_prompts),
}

STEPS = {"podcast": PODCAST, "snippets": SNIPPETS}


def step_for(workflow: models.Workflow) -> Step:
    """Returns the step of the workflow's current state."""
    return STEPS[workflow.kind][workflow.state]


def reads_from(kind: str, state: str) -> set[str]:
    """The parameters the steps from ``state`` on read (what a fork there may change)."""
    names = list(STEPS[kind])
    return {p for name in names[names.index(state):] for p in STEPS[kind][name].reads}


def context_before(kind: str, state: str, context: dict[str, Any]) -> dict[str, Any]:
    """The part of ``context`` the steps before ``state`` wrote (what a fork copies)."""
    earlier = list(STEPS[kind])[:list(STEPS[kind]).index(state)]
    keys = {key for name in earlier for key in STEPS[kind][name].produces}
    return {key: value for key, value in context.items() if key in keys}
