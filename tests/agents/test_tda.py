"""TDA over real HTTP: relevant, distinct, deterministic topics; the protocol and its errors."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cpoa.agents import results
from cpoa_agents import corpus, tda, text
from cpoa_agents.service import MAX_BODY_BYTES
from cpoa_agents.tda import TopicAgent
from tests.agents.protocol import finished, serving, submit, succeeded

VOLCANO_WORDS = {"volcano", "volcanoes", "volcanic", "magma", "eruption", "eruptions", "lava",
                 "ash", "gas", "warning", "rock", "pressure", "explosive", "erupt"}
BEE_WORDS = {"bees", "bee", "honey", "hives", "hive", "beekeeper", "beekeepers", "urban",
             "pollen", "nectar", "pollinators", "city", "colony", "flowers", "trees"}


def content_of(*slugs: str) -> str:
    """Corpus articles in WCHA's content format."""
    articles = {a.slug: a for a in corpus.load_corpus()}
    return "\n\n".join(text.article_block(articles[s].title, articles[s].paragraphs())
                       for s in slugs)


def discover(agent: TopicAgent, body: dict[str, Any], key: str | None = None) -> list[dict]:
    """Submits, expects 202, waits for SUCCESS and returns the validated topics."""
    result = succeeded(agent, body, key=key)
    assert result["status"] == "success"
    topics = results.discovered_topics(result)
    assert topics == result["discovered_topics"]  # nothing to clean up
    return topics


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopicAgent]:
    """One TDA on a free loopback port, shared by the module."""
    with serving(TopicAgent(tmp_path_factory.mktemp("tda"))) as topic_agent:
        yield topic_agent


def test_discover_topics__from_harvested_content_are_on_theme(agent: TopicAgent) -> None:
    """Topics of two volcano articles carry volcano keywords, unique ids and sane fields."""
    topics = discover(agent, {"query": "volcano eruptions", "limit": 4,
                              "content": content_of("how-volcanoes-erupt", "volcano-monitoring")})
    assert 1 <= len(topics) <= 4
    assert len({t["topic_id"] for t in topics}) == len(topics)
    for topic in topics:
        assert topic["topic_id"].startswith("topic-")
        assert 3 <= len(topic["keywords"]) <= 6
        assert set(topic["keywords"]) & VOLCANO_WORDS, topic
        assert 0 < len(topic["summary"]) <= 300 and topic["title_suggestion"]
        assert 0 <= topic["relevance_score"] <= 1
    scores = [t["relevance_score"] for t in topics]
    assert scores == sorted(scores, reverse=True)
    assert {"volcano", "volcanoes", "eruption", "eruptions"} & set(topics[0]["keywords"])


def test_discover_topics__query_only_uses_the_ranked_corpus(agent: TopicAgent) -> None:
    """Without content, the corpus articles about the query give the topics."""
    topics = discover(agent, {"query": "urban beekeeping and city honey", "limit": 3})
    assert len(topics) == 3
    assert all(set(t["keywords"]) & BEE_WORDS for t in topics), topics


def test_discover_topics__summary_is_a_sentence_of_the_content(agent: TopicAgent) -> None:
    """Each summary is one of the content's own sentences, never a title line."""
    content = content_of("tidal-power")
    sentences = set(text.split_sentences(content))
    for topic in discover(agent, {"query": "tidal power", "content": content}):
        assert topic["summary"] in sentences
        assert topic["summary"] != "Harnessing the Tides: How Tidal Power Works"


@pytest.mark.parametrize("limit", [1, 2, 7])
def test_discover_topics__limit_respected(agent: TopicAgent, limit: int) -> None:
    """Never more topics than the limit; enough text gives exactly the limit."""
    topics = discover(agent, {"query": "clocks", "limit": limit,
                              "content": content_of("pendulums-to-atoms",
                                                    "sundials-and-water-clocks")})
    assert len(topics) == limit


def test_discover_topics__default_limit_is_five(agent: TopicAgent) -> None:
    """Without a limit, five topics come back from enough text."""
    assert len(discover(agent, {"query": "fermentation"})) == 5


def test_discover_topics__deterministic_across_runs(agent: TopicAgent) -> None:
    """Two tasks with the same request (different keys) find exactly the same topics."""
    body = {"query": "bird migration", "limit": 6,
            "content": content_of("bird-navigation", "stopover-sites")}
    assert discover(agent, body) == discover(agent, body)


def test_discover_topics__replay_with_same_key_gives_same_task_and_result(
        agent: TopicAgent) -> None:
    """The same X-Idempotency-Key returns the first task and its result, with 200."""
    key = uuid.uuid4().hex
    first = submit(agent, {"query": "tides", "limit": 2}, key)
    assert first.status_code == 202
    report = finished(agent, first.json()["task_id"])
    replay = submit(agent, {"query": "tides", "limit": 2}, key)
    assert replay.status_code == 200 and replay.json()["task_id"] == first.json()["task_id"]
    assert replay.json()["result"] == report["result"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "query"), ({"query": ""}, "query"), ({"query": 5}, "query"),
    ({"query": "q", "limit": 0}, "limit"), ({"query": "q", "limit": 51}, "limit"),
    ({"query": "q", "limit": True}, "limit"), ({"query": "q", "content": ["text"]}, "content"),
    ({"query": "q", "content": "x" * 200_001}, "content")])
def test_discover_topics__bad_input_is_422_naming_the_field(
        agent: TopicAgent, body: dict[str, Any], field: str) -> None:
    """An invalid request is refused with 422 and the field named in the JSON error."""
    answer = submit(agent, body)
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


def test_discover_topics__oversized_body_is_413(agent: TopicAgent) -> None:
    """A request body over 2 MiB is refused with 413 naming the body."""
    answer = submit(agent, {"query": "q", "content": "x" * (MAX_BODY_BYTES + 1)})
    assert answer.status_code == 413 and answer.json()["field"] == "body"


def test_discover__tiny_content_still_gives_a_topic() -> None:
    """A single short sentence yields one topic with its own words as keywords."""
    [topic] = tda.discover("tides", "Tidal lagoons store seawater behind walls.", 5)
    assert {"tidal", "lagoons"} <= set(topic["keywords"])
    assert topic["summary"] == "Tidal lagoons store seawater behind walls."


def test_discover__text_without_words_gives_no_topics() -> None:
    """Content with no words at all has no topics (CPOA then fails the step clearly)."""
    assert tda.discover("anything", "123 456 ... !!!", 5) == []


def test_discover__repeated_seed_words_get_distinct_ids() -> None:
    """Topic ids stay unique even when two topics would take the same slug."""
    ids: set[str] = set()
    assert [tda._unique("topic-tide", ids) for _ in range(3)] == [
        "topic-tide", "topic-tide-2", "topic-tide-3"]
