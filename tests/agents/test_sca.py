"""SCA over real HTTP: extractive 2–3 sentence snippets, cover-art prompts, the protocol."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cpoa.agents import results
from cpoa_agents import corpus, sca, text
from cpoa_agents.sca import SnippetAgent
from cpoa_agents.service import MAX_BODY_BYTES
from tests.agents.protocol import finished, serving, submit, succeeded

TOPIC = {"topic_id": "topic-tidal", "title_suggestion": "Tidal Stream and Power",
         "summary": "The second approach, tidal stream power, places turbines directly in fast "
                    "currents.",
         "keywords": ["tidal", "power", "turbines", "currents"], "relevance_score": 0.91}


def craft(agent: SnippetAgent, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """Submits, expects 202, waits for SUCCESS and returns the validated result."""
    return succeeded(agent, body, results.snippet, key)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnippetAgent]:
    """One SCA on a free loopback port, shared by the module."""
    with serving(SnippetAgent(tmp_path_factory.mktemp("sca"))) as snippet_agent:
        yield snippet_agent


def test_craft_snippet__extracts_two_to_three_sentences_from_the_brief(
        agent: SnippetAgent) -> None:
    """A long brief gives a 2–3 sentence snippet quoted from it, in the brief's order."""
    [article] = [a for a in corpus.load_corpus() if a.slug == "tidal-power"]
    result = craft(agent, {"topic_id": "topic-tidal", "content_brief": article.text,
                           "topic_info": TOPIC})
    assert result["snippet_id"] == "snippet-topic-tidal" and result["topic_id"] == "topic-tidal"
    assert result["title"] == "Tidal Stream and Power"
    sentences = text.split_sentences(result["text_content"])
    assert 2 <= len(sentences) <= 3
    source = text.split_sentences(article.text)
    assert all(s in source for s in sentences)
    assert [source.index(s) for s in sentences] == sorted(source.index(s) for s in sentences)
    assert len(text.split_sentences(result["summary"])) == 1
    assert result["summary"] in sentences


def test_craft_snippet__short_brief_is_completed_from_keywords(agent: SnippetAgent) -> None:
    """A one-sentence brief (what CPOA sends) gets a readable keyword sentence added."""
    result = craft(agent, {"topic_id": TOPIC["topic_id"], "content_brief": TOPIC["summary"],
                           "topic_info": TOPIC})
    assert result["text_content"] == (
        f"{TOPIC['summary']} It touches on tidal, power, turbines and currents.")
    assert result["summary"] == TOPIC["summary"]


def test_craft_snippet__title_only_brief_without_topic_info(agent: SnippetAgent) -> None:
    """A bare title as the brief becomes the snippet title and two built sentences."""
    result = craft(agent, {"topic_id": "topic-lagoons",
                           "content_brief": "Tidal Range and Lagoons"})
    assert result["title"] == "Tidal Range and Lagoons"
    assert len(text.split_sentences(result["text_content"])) == 2
    assert result["text_content"].startswith("A short look at Tidal Range and Lagoons.")


def test_craft_snippet__cover_art_prompt_names_title_and_keywords(agent: SnippetAgent) -> None:
    """The cover-art prompt describes the title and the topic's keywords."""
    result = craft(agent, {"topic_id": "topic-tidal", "content_brief": TOPIC["summary"],
                           "topic_info": TOPIC})
    prompt = result["cover_art_prompt"]
    assert "Tidal Stream and Power" in prompt and "turbines" in prompt and len(prompt) < 400


def test_craft_snippet__deterministic_across_runs(agent: SnippetAgent) -> None:
    """Two tasks with the same request (different keys) give the same snippet."""
    body = {"topic_id": "topic-tidal", "content_brief": corpus.load_corpus()[0].text,
            "topic_info": TOPIC}
    assert craft(agent, body) == craft(agent, body)


def test_craft_snippet__replay_with_same_key_gives_same_task_and_result(
        agent: SnippetAgent) -> None:
    """The same X-Idempotency-Key returns the first task and its result, with 200."""
    key, body = uuid.uuid4().hex, {"topic_id": "t-1", "content_brief": "Bees on the roof"}
    first = submit(agent, body, key)
    assert first.status_code == 202
    report = finished(agent, first.json()["task_id"])
    replay = submit(agent, body, key)
    assert replay.status_code == 200 and replay.json()["task_id"] == first.json()["task_id"]
    assert replay.json()["result"] == report["result"]


@pytest.mark.parametrize(("body", "field"), [
    ({"content_brief": "b"}, "topic_id"), ({"topic_id": "t"}, "content_brief"),
    ({"topic_id": "t", "content_brief": "  "}, "content_brief"),
    ({"topic_id": "t", "content_brief": "b", "topic_info": "x"}, "topic_info"),
    ({"topic_id": "t", "content_brief": "b", "topic_info": {"keywords": "a b"}},
     "topic_info.keywords"),
    ({"topic_id": "t", "content_brief": "b", "topic_info": {"keywords": ["a", 2]}},
     "topic_info.keywords[1]"),
    ({"topic_id": "t", "content_brief": "b", "topic_info": {"title_suggestion": 3}},
     "topic_info.title_suggestion"),
    ({"topic_id": "t" * 201, "content_brief": "b"}, "topic_id")])
def test_craft_snippet__bad_input_is_422_naming_the_field(
        agent: SnippetAgent, body: dict[str, Any], field: str) -> None:
    """An invalid request is refused with 422 and the field named in the JSON error."""
    answer = submit(agent, body)
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


def test_craft_snippet__oversized_body_is_413(agent: SnippetAgent) -> None:
    """A request body over 2 MiB is refused with 413 naming the body."""
    answer = submit(agent, {"topic_id": "t", "content_brief": "x" * (MAX_BODY_BYTES + 1)})
    assert answer.status_code == 413 and answer.json()["field"] == "body"


def test_craft__keywords_from_the_brief_when_none_given() -> None:
    """Without topic_info keywords, the brief's most frequent content words are used."""
    result = sca.craft("topic-bees", "Bees visit flowers. Bees carry pollen home to the hive. "
                                     "The hive stores honey for winter.", {})
    assert "bees" in result["cover_art_prompt"] and "hive" in result["cover_art_prompt"]
    assert result["title"] == "Bees and Hive"
