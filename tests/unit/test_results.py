"""Agent result validators (contract §3): valid results pass, each bad field is named."""

from __future__ import annotations

import copy

import pytest

from cpoa import errors
from cpoa.agents import results

VALID = {
    "harvest": {"status": "success", "content": "Articles about tides.",
                "source_urls": ["https://example.org/a"]},
    "discovered_topics": {"status": "success", "discovered_topics": [
        {"topic_id": "t0", "title_suggestion": "Tides", "summary": "", "keywords": ["moon"],
         "relevance_score": 0.9},
        {"topic_id": "t1", "title_suggestion": "Waves", "summary": "Big ones",
         "keywords": [], "relevance_score": 1}]},
    "snippet": {"snippet_id": "sn1", "topic_id": "t0", "title": "Tides", "summary": "",
                "text_content": "The moon pulls.", "cover_art_prompt": "a moonlit bay"},
    "script": {"status": "success", "script_data": {
        "script_id": "s1", "title": "On tides", "segments": [
            {"segment_title": "Intro", "lines": [{"speaker": "Host", "text": "Welcome."},
                                                 {"speaker": "Guest", "text": "Hello."}]}]}},
    "audio": {"status": "success", "audio_url": "http://127.0.0.1/a.mp3", "audio_format": "mp3",
              "duration_s": 12.5, "stream_id": "st1", "tts_settings_used": {"voice": "en"}},
    "image": {"status": "success", "image_url": "http://127.0.0.1/c.png"},
}
SERVICES = {"harvest": "WCHA", "discovered_topics": "TDA", "snippet": "SCA", "script": "PSWA",
            "audio": "VFA", "image": "IGA"}


def mutated(validator, path, value):
    """A deep copy of the valid result with the item at ``path`` set (or deleted: ...)."""
    result = copy.deepcopy(VALID[validator])
    target = result
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return result


def test_harvest__valid_passes():
    """A valid WCHA result gives content and source_urls."""
    assert results.harvest(VALID["harvest"]) == {"content": "Articles about tides.",
                                                 "source_urls": ["https://example.org/a"]}


def test_harvest__source_urls_optional():
    """A WCHA result without source_urls gives an empty list."""
    assert results.harvest({"content": "c"})["source_urls"] == []


def test_discovered_topics__valid_passes():
    """A valid TDA result gives the five TopicObject fields of every topic."""
    topics = results.discovered_topics(VALID["discovered_topics"])
    assert topics == VALID["discovered_topics"]["discovered_topics"]


def test_discovered_topics__empty_list_passes():
    """Zero topics is a valid result (the workflow decides what zero means)."""
    assert results.discovered_topics({"discovered_topics": []}) == []


def test_snippet__valid_passes():
    """A valid SCA result keeps its fields; an empty cover-art prompt becomes None."""
    assert results.snippet(VALID["snippet"]) == VALID["snippet"]
    for absent in ("", ...):
        cleaned = results.snippet(mutated("snippet", ["cover_art_prompt"], absent))
        assert cleaned["cover_art_prompt"] is None


def test_script__valid_passes():
    """A valid PSWA result gives its script_data."""
    assert results.script(VALID["script"]) == VALID["script"]["script_data"]


def test_audio__valid_passes():
    """A valid VFA result gives url, format, duration, stream id and settings."""
    assert results.audio(VALID["audio"]) == {
        "url": "http://127.0.0.1/a.mp3", "format": "mp3", "duration_s": 12.5,
        "stream_id": "st1", "tts_settings_used": {"voice": "en"}}


def test_audio__keeps_turn_timings():
    """Per-turn timings given by VFA are kept."""
    turns = [{"speaker": "Host", "start_s": 0.0}]
    assert results.audio(mutated("audio", ["turns"], turns))["turns"] == turns


def test_image__valid_passes():
    """A valid IGA result gives image_url."""
    assert results.image(VALID["image"]) == {"image_url": "http://127.0.0.1/c.png"}


BAD_FIELDS = [
    ("harvest", ["content"], ..., "result.content"),
    ("harvest", ["content"], "   ", "result.content"),
    ("harvest", ["content"], 42, "result.content"),
    ("harvest", ["source_urls"], "https://example.org", "result.source_urls"),
    ("harvest", ["source_urls"], [None], "result.source_urls[0]"),
    ("harvest", ["status"], "done", "result.status"),
    ("discovered_topics", ["discovered_topics"], ..., "result.discovered_topics"),
    ("discovered_topics", ["discovered_topics"], {"t0": {}}, "result.discovered_topics"),
    ("discovered_topics", ["discovered_topics", 1], "t1", "result.discovered_topics[1]"),
    ("discovered_topics", ["discovered_topics", 0, "topic_id"], ...,
     "result.discovered_topics[0].topic_id"),
    ("discovered_topics", ["discovered_topics", 0, "topic_id"], 7,
     "result.discovered_topics[0].topic_id"),
    ("discovered_topics", ["discovered_topics", 1, "title_suggestion"], "",
     "result.discovered_topics[1].title_suggestion"),
    ("discovered_topics", ["discovered_topics", 0, "summary"], None,
     "result.discovered_topics[0].summary"),
    ("discovered_topics", ["discovered_topics", 0, "keywords"], "moon",
     "result.discovered_topics[0].keywords"),
    ("discovered_topics", ["discovered_topics", 0, "keywords"], ["moon", 3],
     "result.discovered_topics[0].keywords[1]"),
    ("discovered_topics", ["discovered_topics", 0, "relevance_score"], "high",
     "result.discovered_topics[0].relevance_score"),
    ("discovered_topics", ["discovered_topics", 0, "relevance_score"], True,
     "result.discovered_topics[0].relevance_score"),
    ("discovered_topics", ["discovered_topics", 0, "relevance_score"], float("nan"),
     "result.discovered_topics[0].relevance_score"),
    ("snippet", ["snippet_id"], ..., "result.snippet_id"),
    ("snippet", ["topic_id"], "", "result.topic_id"),
    ("snippet", ["title"], None, "result.title"),
    ("snippet", ["text_content"], ["text"], "result.text_content"),
    ("snippet", ["summary"], 1, "result.summary"),
    ("snippet", ["cover_art_prompt"], {"prompt": "bay"}, "result.cover_art_prompt"),
    ("script", ["script_data"], ..., "result.script_data"),
    ("script", ["script_data"], "a script", "result.script_data"),
    ("script", ["script_data", "script_id"], ..., "result.script_data.script_id"),
    ("script", ["script_data", "title"], "", "result.script_data.title"),
    ("script", ["script_data", "segments"], [], "result.script_data.segments"),
    ("script", ["script_data", "segments", 0], "Intro", "result.script_data.segments[0]"),
    ("script", ["script_data", "segments", 0, "segment_title"], None,
     "result.script_data.segments[0].segment_title"),
    ("script", ["script_data", "segments", 0, "lines"], ...,
     "result.script_data.segments[0].lines"),
    ("script", ["script_data", "segments", 0, "lines", 1], "Hello.",
     "result.script_data.segments[0].lines[1]"),
    ("script", ["script_data", "segments", 0, "lines", 1, "speaker"], "",
     "result.script_data.segments[0].lines[1].speaker"),
    ("script", ["script_data", "segments", 0, "lines", 0, "text"], None,
     "result.script_data.segments[0].lines[0].text"),
    ("audio", ["audio_url"], ..., "result.audio_url"),
    ("audio", ["audio_format"], "", "result.audio_format"),
    ("audio", ["duration_s"], "12.5", "result.duration_s"),
    ("audio", ["duration_s"], False, "result.duration_s"),
    ("audio", ["stream_id"], 5, "result.stream_id"),
    ("audio", ["tts_settings_used"], "default", "result.tts_settings_used"),
    ("image", ["image_url"], ..., "result.image_url"),
    ("image", ["image_url"], " ", "result.image_url"),
]


@pytest.mark.parametrize(("validator", "path", "value", "field"), BAD_FIELDS)
def test_validator__bad_field_is_named(validator, path, value, field):
    """A missing or mistyped field raises InvalidAgentResult naming it in text and attribute."""
    with pytest.raises(errors.InvalidAgentResult) as info:
        getattr(results, validator)(mutated(validator, path, value))
    assert info.value.field == field
    assert info.value.service == SERVICES[validator]
    assert f"{field} " in str(info.value)


@pytest.mark.parametrize("validator", sorted(VALID))
@pytest.mark.parametrize("result", [None, "ok", ["content"], 3])
def test_validator__non_object_result_is_named(validator, result):
    """A result that is not a JSON object is refused as ``result``."""
    with pytest.raises(errors.InvalidAgentResult) as info:
        getattr(results, validator)(result)
    assert info.value.field == "result"


@pytest.mark.parametrize("validator", sorted(VALID))
def test_validator__business_error_is_task_failure(validator):
    """``status: error`` is the agent's business failure, with its message and code."""
    result = {**VALID[validator], "status": "error", "message": "quota exceeded",
              "error_code": "Q1"}
    with pytest.raises(errors.AgentTaskFailed) as info:
        getattr(results, validator)(result)
    assert "quota exceeded (Q1)" in str(info.value)
    assert info.value.service == SERVICES[validator]


def test_business_status__defaults_and_values():
    """A missing status is success; partial_success and skipped are returned as they are."""
    assert results.business_status({}, "TDA") == "success"
    assert results.business_status({"status": "partial_success"}, "TDA") == "partial_success"
    assert results.business_status({"status": "skipped"}, "VFA") == "skipped"


def test_business_status__error_without_message():
    """An error with no message still fails with a readable reason."""
    with pytest.raises(errors.AgentTaskFailed, match="no message"):
        results.business_status({"status": "error"}, "VFA")


def test_business_status__long_message_is_clipped():
    """The business error message kept in the reason is bounded."""
    with pytest.raises(errors.AgentTaskFailed) as info:
        results.business_status({"status": "error", "message": "x" * 5000}, "PSWA")
    assert len(info.value.body) <= 510 and len(str(info.value)) < 600
