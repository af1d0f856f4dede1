"""PSWA over real HTTP: the template dialogue, the protocol, the LLM backend on a fake server."""

from __future__ import annotations

import http.server
import json
import logging
import pathlib
import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cpoa import errors
from cpoa.agents import results
from cpoa_agents import template
from cpoa_agents.pswa import ScriptAgent
from cpoa_agents.service import MAX_BODY_BYTES
from tests.agents.protocol import finished, serving, submit, succeeded
from cpoa.testing.agent import free_port

API_KEY = "sk-test-secret-123"
THEMES = {  # subjects x facts x contexts: enough distinct sentences for a ~3000-word article
    "solar": (["Rooftop solar panels", "Utility-scale solar farms", "Community solar projects",
               "Cheaper photovoltaic modules"],
              ["now supply a growing share of daytime electricity",
               "have cut household power bills by a noticeable margin",
               "are being installed faster than any other kind of generation",
               "still depend on supply chains that run through a handful of countries",
               "produce the most power around midday when demand is modest"],
              ["in sunny regions such as Spain and Arizona", "according to an industry survey",
               "which surprised many analysts a decade ago", "even in cloudier northern countries",
               "as module prices keep falling"]),
    "storage": (["Lithium-ion battery packs", "Grid-scale battery storage", "Home batteries",
                 "Newer sodium-ion cells"],
                ["smooth out the evening peak when solar output fades",
                 "let grid operators shift cheap midday energy into the night",
                 "respond to frequency changes within milliseconds",
                 "have become far cheaper over the past five years",
                 "raise hard questions about mining and recycling"],
                ["according to engineers who run regional grids", "in California and Australia",
                 "although their lifetime is still debated", "which attracts utilities",
                 "as factories scale up production"]),
    "wind": (["Offshore wind turbines", "Onshore wind farms", "Floating wind platforms",
              "Taller turbine towers"],
             ["capture stronger and steadier winds than older designs",
              "face long permitting delays and local opposition",
              "now rival gas plants on cost in many auctions",
              "need new transmission lines to reach big cities",
              "generate much of their output during winter nights"],
             ["along the North Sea coast", "says a recent government report",
              "which complements solar output nicely", "despite rising interest rates",
              "as ports are rebuilt to handle huge blades"]),
    "policy": (["Carbon pricing schemes", "Renewable energy subsidies", "Grid connection rules",
                "National climate targets"],
               ["shape where investors decide to build new projects",
                "have shifted billions of dollars toward clean power",
                "often lag behind the speed of technological change",
                "create winners and losers among regions and industries",
                "are hotly debated before every election"],
               ["according to policy researchers", "in the European Union and beyond",
                "which frustrates many developers", "even when public support is high",
                "as governments try to cut emissions quickly"]),
}
TOPICS: list[dict[str, Any]] = [
    {"topic_id": f"t{i}", "title_suggestion": title, "summary": f"About {keywords[0]}.",
     "keywords": keywords, "relevance_score": 1 - i / 10}
    for i, (title, keywords) in enumerate([
        ("The Solar Boom", ["solar", "panels", "photovoltaic"]),
        ("Storing Energy", ["battery", "storage", "batteries"]),
        ("Winds of Change", ["wind", "turbines", "offshore"]),
        ("Policy and Politics", ["carbon", "subsidies", "climate targets"])])]


def article(words: int = 3000, seed: int = 7) -> str:
    """A deterministic article of about ``words`` words, themed paragraphs of five sentences."""
    rng, paragraphs, count = random.Random(seed), list[str](), 0
    while count < words:
        subjects, facts, contexts = list(THEMES.values())[len(paragraphs) % len(THEMES)]
        sentences = [f"{rng.choice(subjects)} {rng.choice(facts)}, {rng.choice(contexts)}."
                     for _ in range(5)]
        paragraphs.append(" ".join(sentences))
        count += sum(len(s.split()) for s in sentences)
    return "\n\n".join(paragraphs)


CONTENT = article()
REQUEST: dict[str, Any] = {"topic": "the future of renewable energy", "content": CONTENT,
                           "topics": TOPICS, "persona": "a curious science journalist"}


def weave(agent: ScriptAgent, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """Submits, expects 202, waits for SUCCESS and returns the validated result."""
    return succeeded(agent, body, results.script, key)


def lines(result: dict[str, Any]) -> list[dict[str, str]]:
    """All speaker lines of a result's script, in order."""
    return [line for segment in result["script_data"]["segments"] for line in segment["lines"]]


@pytest.fixture(scope="module")
def pswa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptAgent]:
    """A template-only PSWA (no PSWA_LLM_* from the environment) shared by the module."""
    with serving(ScriptAgent(tmp_path_factory.mktemp("pswa"), env={})) as agent:
        yield agent


class FakeLLM:
    """An OpenAI-compatible chat server on loopback that answers every call with ``reply``."""

    def __init__(self, reply: str) -> None:
        self.reply, self.calls = reply, list[dict[str, Any]]()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append({"path": self.path, "headers": dict(self.headers),
                                   "body": body})
                payload = json.dumps({"object": "chat.completion", "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": fake.reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


LLM_SCRIPT = {"script_id": "made-up-by-the-model", "title": "Sun, Wind and Batteries",
              "segments": [{"segment_title": "Introduction", "lines": [
                  {"speaker": "Host", "text": "Welcome! Today: renewable energy."},
                  {"speaker": "Guest", "text": "Glad to be here."}]}]}


@pytest.fixture
def llm_agent(tmp_path: pathlib.Path) -> Iterator[Any]:
    """Builds PSWAs wired to a fake LLM answering ``reply``, configured by env or by arguments."""
    made: list[Any] = []

    def make(reply: str, *, via_args: bool = False, **options: Any) -> tuple[ScriptAgent, FakeLLM]:
        fake = FakeLLM(reply)
        if via_args:
            options.update(llm_url=fake.url, llm_model="test-model", llm_api_key=API_KEY, env={})
        else:
            options["env"] = {"PSWA_LLM_URL": fake.url, "PSWA_LLM_MODEL": "test-model",
                              "PSWA_LLM_API_KEY": API_KEY}
        agent = ScriptAgent(tmp_path / f"pswa{len(made)}", **options)
        agent.start("127.0.0.1", 0)
        made.extend((agent, fake))
        return agent, fake
    yield make
    for thing in made:
        thing.stop() if isinstance(thing, ScriptAgent) else thing.close()


def test_weave_script__success_returns_a_valid_script(pswa: ScriptAgent) -> None:
    """A topic, content and topics give 202, then SUCCESS with a script CPOA accepts."""
    result = weave(pswa, REQUEST)
    data = result["script_data"]
    assert result["status"] == "success" and result["backend"] == "template"
    assert data["script_id"].startswith("script-") and data["title"]
    assert "a curious science journalist" in data["segments"][0]["lines"][0]["text"]


def test_weave_script__same_key_replays_task_and_result(pswa: ScriptAgent) -> None:
    """A second submit with the same idempotency key returns 200, the same task and result."""
    key = uuid.uuid4().hex
    first = submit(pswa, REQUEST, key)
    report = finished(pswa, first.json()["task_id"])
    again = submit(pswa, REQUEST, key)
    assert again.status_code == 200
    assert again.json() == report and again.json()["task_id"] == first.json()["task_id"]


def test_weave_script__deterministic_across_keys(pswa: ScriptAgent) -> None:
    """The same input under two keys gives the identical script; another topic a new id."""
    one, two = weave(pswa, REQUEST), weave(pswa, REQUEST)
    other = weave(pswa, {**REQUEST, "topic": "wind power"})
    assert one == two
    assert other["script_data"]["script_id"] != one["script_data"]["script_id"]


def test_weave_script__two_speakers_alternate(pswa: ScriptAgent) -> None:
    """Host opens and Host and Guest take strict turns across the whole episode."""
    speakers = [line["speaker"] for line in lines(weave(pswa, REQUEST))]
    assert speakers[0] == "Host" and set(speakers) == {"Host", "Guest"}
    assert all(a != b for a, b in zip(speakers, speakers[1:]))


def test_weave_script__one_segment_per_topic_titled_by_a_source_phrase(
        pswa: ScriptAgent) -> None:
    """Between intro and outro there is one segment per topic, titled by a phrase of at least
    two words taken from the content (not a keyword pair), and about that topic."""
    segments = weave(pswa, REQUEST)["script_data"]["segments"]
    assert len(segments) == len(TOPICS) + 2
    titles = [s["segment_title"] for s in segments[1:-1]]
    assert len(set(titles)) == len(titles)
    for title in titles:
        assert len(title.split()) >= 2 and title.lower() in CONTENT.lower(), title
    for segment, topic in zip(segments[1:-1], TOPICS):
        answers = " ".join(line["text"].lower() for line in segment["lines"]
                           if line["speaker"] == "Guest")
        assert any(keyword.split()[0] in answers for keyword in topic["keywords"])


def test_weave_script__guest_lines_quote_the_content_with_a_source(pswa: ScriptAgent) -> None:
    """Every guest line carries the sentence it quotes, found verbatim in the content, and the
    index of its source; host questions name phrases of two words or more."""
    data = weave(pswa, REQUEST)["script_data"]
    guest = [line for line in lines({"script_data": data}) if line["speaker"] != "Host"]
    assert guest and all(line["quote"] in line["text"] and line["quote"] in CONTENT
                         and 0 <= line["source"] < len(data["sources"]) for line in guest)
    host = [line for line in lines({"script_data": data}) if "about" in line]
    assert host and all(len(p.split()) >= 2 and p in line["text"]
                        for line in host for p in line["about"])


@pytest.mark.parametrize(("fmt", "speakers"), [
    ("conversation", {"Host", "Guest"}), ("bulletin", {"Host"}),
    ("panel", {"Host", "Guest 1", "Guest 2"})])
def test_weave_script__format_sets_the_speakers(pswa: ScriptAgent, fmt: str,
                                                speakers: set[str]) -> None:
    """A conversation has host and guest, a bulletin one voice, a panel host and two guests."""
    data = weave(pswa, {**REQUEST, "format": fmt})["script_data"]
    assert {line["speaker"] for line in lines({"script_data": data})} == speakers
    assert data["format"] == fmt


@pytest.mark.parametrize("minutes", [1, 2, 3, 4, 8])
def test_weave_script__length_follows_target_minutes(pswa: ScriptAgent, minutes: int) -> None:
    """The script's estimated length is within 5 % of target_minutes when the content holds
    enough material, and VFA is given the target."""
    data = weave(pswa, {**REQUEST, "target_minutes": minutes})["script_data"]
    assert abs(data["length"]["estimated_s"] - 60 * minutes) <= 0.05 * 60 * minutes
    assert data["length"]["enough_material"] and data["target_s"] == 60 * minutes


def test_weave_script__short_material_is_said_in_the_script(pswa: ScriptAgent) -> None:
    """Content far too short for the target gives a script that says so, without a target."""
    content = "\n\n".join(CONTENT.split("\n\n")[:3])
    data = weave(pswa, {**REQUEST, "content": content, "target_minutes": 20})["script_data"]
    assert not data["length"]["enough_material"] and "target_s" not in data
    last = data["segments"][-1]["lines"][-1]["text"]
    assert data["length"]["note"] in last and "sources ran out" in last


@pytest.mark.parametrize("topic_count", [0, 1, 2, 4])
def test_weave_script__word_count_fits_a_few_minutes(pswa: ScriptAgent, topic_count: int) -> None:
    """A ~3000-word article gives 350-600 spoken words (2-4 minutes), counted truthfully."""
    result = weave(pswa, {**REQUEST, "topics": TOPICS[:topic_count]})
    assert 350 <= result["word_count"] <= 600
    assert result["word_count"] == sum(len(line["text"].split()) for line in lines(result))


def test_weave_script__without_topics_uses_paragraphs(pswa: ScriptAgent) -> None:
    """With no topics the content's paragraphs make two or three segments of its sentences."""
    segments = weave(pswa, {"topic": "renewable energy", "content": CONTENT})["script_data"][
        "segments"]
    assert 2 <= len(segments) - 2 <= 3
    answers = [line["text"] for s in segments[1:-1] for line in s["lines"]
               if line["speaker"] == "Guest"]
    assert all(any(sentence in CONTENT for sentence in a.split(". ")) for a in answers)


def test_weave_script__short_content_still_speaks(pswa: ScriptAgent) -> None:
    """Content with no full sentence still gives a non-empty, valid script."""
    result = weave(pswa, {"topic": "tiny", "content": "just a few words", "topics": TOPICS[:1]})
    assert len(result["script_data"]["segments"]) == 3


@pytest.mark.parametrize(("body", "field"), [
    ({"content": CONTENT}, "topic"),
    ({"topic": "x" * 1001, "content": CONTENT}, "topic"),
    ({"topic": "energy", "content": "x" * 50_001}, "content"),
    ({"topic": "energy", "content": CONTENT, "topics": "solar"}, "topics"),
    ({"topic": "energy", "content": CONTENT,
      "topics": [{"topic_id": "t", "title_suggestion": "S"}]}, "topics[0].keywords"),
    ({"topic": "energy", "content": CONTENT, "topics": [{**TOPICS[0], "title_suggestion": 7}]},
     "topics[0].title_suggestion"),
    ({"topic": "energy", "content": CONTENT, "persona": 5}, "persona"),
    ({"topic": "energy", "content": CONTENT, "format": "radio"}, "format"),
    ({"topic": "energy", "content": CONTENT, "target_minutes": 31}, "target_minutes"),
    ({"topic": "energy", "content": CONTENT, "target_minutes": "5"}, "target_minutes"),
    ({"topic": "energy", "content": CONTENT, "sources": [{"url": 3}]}, "sources[0]"),
])
def test_weave_script__bad_input_names_the_field(pswa: ScriptAgent, body: dict[str, Any],
                                                 field: str) -> None:
    """A missing, mistyped or too long field is refused with 422 naming it."""
    answer = submit(pswa, body)
    assert answer.status_code == 422 and answer.json()["field"] == field


def test_weave_script__not_json_or_no_key_is_400(pswa: ScriptAgent) -> None:
    """A body that is not JSON, or a missing idempotency key, is refused with 400."""
    answer = requests.post(pswa.base_url + "/weave_script", data=b"{oops", timeout=5,
                           headers={"X-Idempotency-Key": "k-not-json"})
    assert answer.status_code == 400 and answer.json()["field"] == "body"
    answer = requests.post(pswa.base_url + "/weave_script", json=REQUEST, timeout=5)
    assert answer.status_code == 400 and answer.json()["field"] == "X-Idempotency-Key"


def test_weave_script__oversized_body_is_413(pswa: ScriptAgent) -> None:
    """A body over 2 MiB is refused with 413 naming the body."""
    answer = submit(pswa, {**REQUEST, "content": "x" * (MAX_BODY_BYTES + 1)})
    assert answer.status_code == 413 and answer.json()["field"] == "body"


def test_weave_script_llm__valid_answer_is_used(llm_agent: Any) -> None:
    """A valid (fenced) LLM answer becomes the script; the call carries key and model."""
    agent, fake = llm_agent("```json\n" + json.dumps(LLM_SCRIPT) + "\n```")
    result = weave(agent, REQUEST)
    assert result["backend"] == "llm" and "llm_error" not in result
    assert result["script_data"]["title"] == "Sun, Wind and Batteries"
    assert result["script_data"]["script_id"].startswith("script-")
    call = fake.calls[0]
    assert call["path"] == "/v1/chat/completions"
    assert call["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert call["body"]["model"] == "test-model"
    assert [m["role"] for m in call["body"]["messages"]] == ["system", "user"]
    assert "The Solar Boom" in call["body"]["messages"][1]["content"]


@pytest.mark.parametrize(("reply", "reason"), [
    ("Sure! Here is your script: {title: oops", "not JSON"),
    (json.dumps({"title": "No segments", "segments": []}), "segments"),
    (json.dumps({**LLM_SCRIPT,
                 "segments": [{"segment_title": "x", "lines": [{"speaker": "Host"}]}]}), "text"),
])
def test_weave_script_llm__invalid_answer_falls_back(llm_agent: Any, reply: str,
                                                     reason: str) -> None:
    """Invalid JSON or a wrong shape gives the template script and records why."""
    agent, _ = llm_agent(reply, via_args=True)
    result = weave(agent, REQUEST)
    assert result["backend"] == "template" and reason in result["llm_error"]
    assert result["script_data"] == template.weave(ScriptAgent.validate(agent, REQUEST))


def test_weave_script_llm__unreachable_server_falls_back(tmp_path: pathlib.Path) -> None:
    """A refused connection to the LLM gives the template script and records the failure."""
    port = free_port()  # free a moment ago: nothing listens there
    agent = ScriptAgent(tmp_path, llm_url=f"http://127.0.0.1:{port}/v1", llm_model="m", env={})
    with serving(agent):
        result = weave(agent, REQUEST)
    assert result["backend"] == "template" and "request failed" in result["llm_error"]


def test_weave_script_llm__no_fallback_fails_with_reason(
        llm_agent: Any, caplog: pytest.LogCaptureFixture) -> None:
    """With fallback off an invalid answer fails the task with the reason; the key is not
    logged."""
    caplog.set_level(logging.DEBUG)
    agent, fake = llm_agent("not json at all", via_args=True, llm_fallback=False)
    answer = submit(agent, REQUEST)
    report = finished(agent, answer.json()["task_id"])
    assert report["status"] == "FAILURE" and "not JSON" in report["error"]["message"]
    assert fake.calls and API_KEY not in caplog.text and API_KEY not in json.dumps(report)


def test_script_agent__url_without_model_is_a_config_error(tmp_path: pathlib.Path) -> None:
    """An LLM URL without a model name is refused at construction, naming the variable."""
    with pytest.raises(errors.ConfigError) as caught:
        ScriptAgent(tmp_path, env={"PSWA_LLM_URL": "http://127.0.0.1:9/v1"})
    assert str(caught.value).startswith("PSWA_LLM_MODEL:")
