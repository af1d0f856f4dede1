"""Validation of caller input: every refusal is an InvalidInput naming the bad field."""

from __future__ import annotations

import uuid

import pytest

from cpoa import errors, inputs


def test_workflow_params__podcast_is_cleaned():
    """A valid podcast input is stripped and completed with empty urls and voice_params."""
    assert inputs.workflow_params("podcast", {"topic": "  tides  "}) == {
        "topic": "tides", "urls": [], "voice_params": {}}


def test_workflow_params__podcast_keeps_every_optional_field():
    """urls, voice_params, persona and max_results pass through when valid."""
    params = {"topic": "tides", "urls": ["https://example.org/a"], "persona": "curious host",
              "voice_params": {"voice_name": "en-GB", "speaking_rate": 1.1, "pitch": 0,
                               "language_code": "en"},
              "max_results": 7, "files": ["http://127.0.0.1:8000/files/0/notes.md"],
              "format": "panel", "target_minutes": 30}
    assert inputs.workflow_params("podcast", params) == params


def test_workflow_params__snippets_default_limit():
    """A snippets input gets limit 5 when none is given."""
    assert inputs.workflow_params("snippets", {"query": "ocean"}) == {"query": "ocean",
                                                                       "limit": 5}


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("podcast", {"topic": ""}, "topic"),
    ("podcast", {"topic": "   "}, "topic"),
    ("podcast", {"topic": "x" * 100_000}, "topic"),
    ("podcast", {"topic": "nul\x00byte"}, "topic"),
    ("podcast", {}, "topic"),
    ("podcast", {"topic": None}, "topic"),
    ("podcast", {"topic": 42}, "topic"),
    ("podcast", {"topic": ["tides"]}, "topic"),
    ("podcast", {"topic": "t", "colour": "blue"}, "colour"),
    ("podcast", {"topic": "t", "urls": "https://example.org"}, "urls"),
    ("podcast", {"topic": "t", "urls": ["https://example.org"] * 21}, "urls"),
    ("podcast", {"topic": "t", "urls": ["ftp://example.org/file"]}, "urls[0]"),
    ("podcast", {"topic": "t", "urls": ["https://ok.org", "not a url"]}, "urls[1]"),
    ("podcast", {"topic": "t", "urls": ["http://"]}, "urls[0]"),
    ("podcast", {"topic": "t", "urls": [7]}, "urls[0]"),
    ("podcast", {"topic": "t", "voice_params": "loud"}, "voice_params"),
    ("podcast", {"topic": "t", "voice_params": {"volume": 11}}, "voice_params.volume"),
    ("podcast", {"topic": "t", "voice_params": {"pitch": "high"}}, "voice_params.pitch"),
    ("podcast", {"topic": "t", "voice_params": {"speaking_rate": True}},
     "voice_params.speaking_rate"),
    ("podcast", {"topic": "t", "voice_params": {"voice_name": 3}}, "voice_params.voice_name"),
    ("podcast", {"topic": "t", "voice_params": {"pitch": float("nan")}}, "voice_params.pitch"),
    ("podcast", {"topic": "t", "voice_params": {"speaking_rate": float("inf")}},
     "voice_params.speaking_rate"),
    ("podcast", {"topic": "t", "voice_params": {"voice_name": "x" * 201}},
     "voice_params.voice_name"),
    ("podcast", {"topic": "lone \ud800 surrogate"}, "topic"),
    ("podcast", {"topic": "t", "persona": "\udfff"}, "persona"),
    ("podcast", {"topic": "t", "persona": ""}, "persona"),
    ("podcast", {"topic": "t", "max_results": 0}, "max_results"),
    ("podcast", {"topic": "t", "max_results": 51}, "max_results"),
    ("podcast", {"topic": "t", "max_results": "5"}, "max_results"),
    ("podcast", {"topic": "t", "max_results": True}, "max_results"),
    ("podcast", {"topic": "t", "format": "radio"}, "format"),
    ("podcast", {"topic": "t", "format": 1}, "format"),
    ("podcast", {"topic": "t", "target_minutes": 0}, "target_minutes"),
    ("podcast", {"topic": "t", "target_minutes": 31}, "target_minutes"),
    ("podcast", {"topic": "t", "target_minutes": "5"}, "target_minutes"),
    ("podcast", {"topic": "t", "target_minutes": 2.5}, "target_minutes"),
    ("podcast", {"topic": "t", "files": "notes.md"}, "files"),
    ("podcast", {"topic": "t", "files": ["/home/me/notes.md"]}, "files[0]"),
    ("snippets", {"query": ""}, "query"),
    ("snippets", {"topic": "t"}, "topic"),
    ("snippets", {"query": 1}, "query"),
    ("snippets", {"query": "q", "limit": 0}, "limit"),
    ("snippets", {"query": "q", "limit": 51}, "limit"),
    ("snippets", {"query": "q", "limit": "3"}, "limit"),
    ("snippets", {"query": "q", "limit": 2.0}, "limit"),
    ("podcast", ["topic"], "params"),
    ("podcast", None, "params"),
    ("radio", {"topic": "t"}, "kind"),
    ("", {"topic": "t"}, "kind"),
])
def test_workflow_params__bad_input_names_field(kind, params, field):
    """Empty, huge, mistyped, unknown or malformed input raises InvalidInput with .field set."""
    with pytest.raises(errors.InvalidInput) as info:
        inputs.workflow_params(kind, params)
    assert info.value.field == field
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("value", ["", 0, False, {}])
def test_workflow_params__falsy_wrong_type_urls_refused(value):
    """A falsy value of the wrong type for urls is refused, not read as an empty list."""
    with pytest.raises(errors.InvalidInput) as info:
        inputs.workflow_params("podcast", {"topic": "t", "urls": value})
    assert info.value.field == "urls"


@pytest.mark.parametrize("value", ["", 0, False, []])
def test_workflow_params__falsy_wrong_type_voice_params_refused(value):
    """A falsy value of the wrong type for voice_params is refused, not read as no params."""
    with pytest.raises(errors.InvalidInput) as info:
        inputs.workflow_params("podcast", {"topic": "t", "voice_params": value})
    assert info.value.field == "voice_params"


def test_workflow_params__null_optionals_mean_absent():
    """None for urls, voice_params, persona and max_results means 'not given'."""
    assert inputs.workflow_params("podcast", {"topic": "t", "urls": None, "voice_params": None,
                                              "persona": None, "max_results": None}) == {
        "topic": "t", "urls": [], "voice_params": {}}


def test_text__longest_accepted_is_the_limit():
    """A topic of exactly TOPIC_MAX_CHARS characters is accepted, one more is not."""
    assert inputs.text("x" * 1000, "topic") == "x" * 1000
    with pytest.raises(errors.InvalidInput):
        inputs.text("x" * 1001, "topic")


@pytest.mark.parametrize(("value", "field"), [
    ("", "idempotency_key"), ("  ", "client_id"), (12, "user_id"), ("k" * 201, "idempotency_key"),
])
def test_optional_id__bad_value_names_field(value, field):
    """An empty, non-text or over-long caller id raises InvalidInput naming it."""
    with pytest.raises(errors.InvalidInput) as info:
        inputs.optional_id(value, field)
    assert info.value.field == field


def test_optional_id__none_and_text():
    """None stays None and a text id is stripped."""
    assert inputs.optional_id(None, "client_id") is None
    assert inputs.optional_id(" c1 ", "client_id") == "c1"


@pytest.mark.parametrize("value", ["not-a-uuid", "", "1234", 42, None, "x" * 500,
                                   "123e4567-e89b-12d3-a456-42661417400z"])
def test_workflow_id__malformed_names_field(value):
    """A value that is not a UUID raises InvalidInput naming workflow_id, briefly quoted."""
    with pytest.raises(errors.InvalidInput) as info:
        inputs.workflow_id(value)
    assert info.value.field == "workflow_id"
    assert len(str(info.value)) < 120


def test_workflow_id__accepts_uuid_and_text():
    """A UUID object is returned as is and its text form is parsed."""
    value = uuid.uuid4()
    assert inputs.workflow_id(value) is value
    assert inputs.workflow_id(str(value)) == value
    assert inputs.workflow_id(str(value).upper()) == value
