"""WCHA over real HTTP: corpus ranking, URL harvesting, address and redirect checks, protocol."""

from __future__ import annotations

import ipaddress
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cpoa.agents import results
from cpoa_agents import wcha
from cpoa_agents.corpus import CorpusServer
from cpoa_agents.service import MAX_BODY_BYTES, Handler, Request, Response, Service
from cpoa_agents.wcha import HarvestAgent
from tests.agents.protocol import finished, serving, submit, succeeded

VOLCANO_SLUGS = {"how-volcanoes-erupt", "volcano-monitoring"}


class WebSite(Service):
    """A scriptable web site: redirects (``/go?to=…``), a huge page and a small page."""

    name = "website"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("GET", r"/go", self.go), ("GET", r"/huge", self.huge),
                ("GET", r"/loop", lambda r: Response(302, "", headers={"Location": "/loop"}))]

    def go(self, request: Request) -> Response:
        return Response(302, "", headers={"Location": request.query["to"]})

    def huge(self, request: Request) -> Response:
        # Streamed without Content-Length: only the reader's own count can stop it.
        chunks = (b"<p>" + b"lava " * 20_000 + b"</p>" for _ in range(40))
        return Response(200, stream=chunks, content_type="text/html")


def harvest(agent: HarvestAgent, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """Submits, expects 202, waits for SUCCESS and returns the validated result."""
    return succeeded(agent, body, results.harvest, key)


def failure(agent: HarvestAgent, body: dict[str, Any]) -> str:
    """Submits a request that must fail and returns the task's error message."""
    answer = submit(agent, body)
    assert answer.status_code == 202, answer.text
    report = finished(agent, answer.json()["task_id"])
    assert report["status"] == "FAILURE", report
    return report["error"]["message"]


def netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusServer]:
    """The sample-corpus server on a free loopback port."""
    with serving(CorpusServer(tmp_path_factory.mktemp("corpus"))) as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebSite]:
    """The scriptable web site on another free loopback port."""
    with serving(WebSite(tmp_path_factory.mktemp("site"))) as server:
        yield server


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, library: CorpusServer,
          site: WebSite) -> Iterator[HarvestAgent]:
    """WCHA as the demo runs it: corpus URL set, only the corpus server and the site allowed."""
    harvester = HarvestAgent(tmp_path_factory.mktemp("wcha"), corpus_url=library.base_url,
                             allowed_hosts=(netloc(library.base_url), netloc(site.base_url)))
    with serving(harvester):
        yield harvester


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarvestAgent]:
    """WCHA with the defaults: no corpus server, no private address allowed."""
    with serving(HarvestAgent(tmp_path_factory.mktemp("wcha-strict"))) as harvester:
        yield harvester


def test_harvest__topic_ranks_corpus_server_articles_on_theme_first(
        agent: HarvestAgent, library: CorpusServer) -> None:
    """A topic-only request fetches the corpus over HTTP and keeps the on-theme articles."""
    result = harvest(agent, {"topic": "volcano eruptions, magma and lava", "max_results": 2})
    assert result["status"] == "success"
    assert {url.rsplit("/", 1)[-1].removesuffix(".html") for url in result["source_urls"]} == \
        VOLCANO_SLUGS
    assert all(url.startswith(library.base_url + "/articles/") for url in result["source_urls"])
    scores = [a["score"] for a in result["articles"]]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    first = result["articles"][0]["title"]
    assert result["content"].startswith(first + "\n\n")
    assert "Cookie settings" not in result["content"]  # page boilerplate was extracted away


def test_harvest__topic_keeps_only_related_articles(agent: HarvestAgent) -> None:
    """A passing mention does not make an article related; each title heads its block."""
    result = harvest(agent, {"topic": "honey bees on city rooftops"})
    assert [a["url"].rsplit("/", 1)[-1] for a in result["articles"]] == [
        "rooftop-beekeeping.html", "city-honey.html"]
    for article in result["articles"]:
        assert f"\n\n{article['title']}\n\n" in f"\n\n{result['content']}"


@pytest.mark.parametrize(("max_results", "kept"), [(None, 3), (1, 1), (4, 4)])
def test_harvest__max_results_caps_related_articles(agent: HarvestAgent, max_results: int | None,
                                                   kept: int) -> None:
    """A broad topic relates to many articles: three are kept by default, else max_results."""
    body = {"topic": "the ocean"} | ({"max_results": max_results} if max_results else {})
    assert len(harvest(agent, body)["articles"]) == kept


def test_harvest__unrelated_topic_fails_naming_it(agent: HarvestAgent) -> None:
    """When no corpus article matches the topic at all, the task fails naming the topic and
    how to give sources, instead of passing off unrelated articles as the topic's."""
    message = failure(agent, {"topic": "quantum computing", "max_results": 2})
    assert message == ("no article of the sample corpus matches the topic 'quantum computing'; "
                       "give the pages to harvest as urls")


def test_harvest__urls_on_allowed_host_are_extracted(agent: HarvestAgent,
                                                    library: CorpusServer) -> None:
    """Given URLs are all fetched in order and only the article text is kept."""
    urls = [library.url("sourdough-starter"), library.url("tidal-power")]
    result = harvest(agent, {"topic": "tides", "urls": urls})
    assert result["source_urls"] == urls
    assert [a["title"] for a in result["articles"]] == [
        "The Living Loaf: Inside a Sourdough Starter",
        "Harnessing the Tides: How Tidal Power Works"]
    assert result["articles"][1]["score"] > result["articles"][0]["score"]
    assert "wild yeasts and lactic acid bacteria" in result["content"]
    for boilerplate in ("Library home", "Subscribe", "Cookie settings", "More from the library"):
        assert boilerplate not in result["content"]


def test_harvest__packaged_corpus_without_corpus_url(strict: HarvestAgent) -> None:
    """With no corpus server configured, the packaged files are ranked straight from disk."""
    result = harvest(strict, {"topic": "sourdough starter", "max_results": 1})
    assert result["source_urls"][0].startswith("file://")
    assert result["source_urls"][0].endswith("/sourdough-starter.md")


def test_harvest__replay_with_same_key_gives_same_task_and_result(agent: HarvestAgent) -> None:
    """The same X-Idempotency-Key returns the first task and its result, with 200."""
    key = uuid.uuid4().hex
    body = {"topic": "bird migration", "max_results": 2}
    first = submit(agent, body, key)
    assert first.status_code == 202
    report = finished(agent, first.json()["task_id"])
    replay = submit(agent, body, key)
    assert replay.status_code == 200
    assert replay.json()["task_id"] == first.json()["task_id"]
    assert replay.json()["result"] == report["result"]


def test_harvest__loopback_url_refused_by_default(strict: HarvestAgent,
                                                  library: CorpusServer) -> None:
    """Without allow_private or allowed_hosts, a loopback URL fails the task as private."""
    message = failure(strict, {"topic": "tides", "urls": [library.url("tidal-power")]})
    assert "private address" in message and "127.0.0.1" in message


def test_harvest__some_urls_refused_is_partial_success(agent: HarvestAgent,
                                                       library: CorpusServer) -> None:
    """A refused URL next to a good one gives partial_success with the reason listed."""
    blocked = "http://127.0.0.1:9/private.html"  # loopback, not in allowed_hosts
    result = harvest(agent, {"topic": "tides", "urls": [blocked, library.url("tidal-power")]})
    assert result["status"] == "partial_success"
    assert result["source_urls"] == [library.url("tidal-power")]
    [failed] = result["failed_urls"]
    assert failed["url"] == blocked and "private address" in failed["reason"]


def test_harvest__redirect_to_private_address_refused(agent: HarvestAgent, site: WebSite) -> None:
    """A redirect from an allowed host to a private, unlisted one is refused at that hop."""
    target = "http://127.0.0.2:9/secret"
    go = f"{site.base_url}/go?to={urllib.parse.quote(target, safe='')}"
    message = failure(agent, {"topic": "secrets", "urls": [go]})
    assert "private address" in message and "127.0.0.2" in message


def test_harvest__redirect_to_allowed_host_followed(agent: HarvestAgent, site: WebSite,
                                                    library: CorpusServer) -> None:
    """A redirect between allowed hosts is followed and the final URL is the source."""
    go = f"{site.base_url}/go?to={urllib.parse.quote(library.url('wave-energy'), safe='')}"
    result = harvest(agent, {"topic": "waves", "urls": [go]})
    assert result["source_urls"] == [library.url("wave-energy")]


def test_harvest__redirect_loop_stops_after_five(agent: HarvestAgent, site: WebSite) -> None:
    """A page that keeps redirecting fails after the redirect limit."""
    assert "more than 5 redirects" in failure(agent, {"topic": "x", "urls": [site.base_url +
                                                                             "/loop"]})


def test_harvest__oversized_page_refused(agent: HarvestAgent, site: WebSite) -> None:
    """A page larger than 2 MiB (streamed, no length announced) is cut off and refused."""
    message = failure(agent, {"topic": "lava", "urls": [site.base_url + "/huge"]})
    assert f"larger than {wcha.MAX_PAGE_BYTES} bytes" in message


@pytest.mark.parametrize(("body", "field"), [
    ({}, "topic"), ({"topic": "  "}, "topic"), ({"topic": "x" * 1001}, "topic"),
    ({"topic": "t", "urls": "http://a.example/"}, "urls"),
    ({"topic": "t", "urls": ["ftp://a.example/file"]}, "urls[0]"),
    ({"topic": "t", "urls": ["https://a.example/", "file:///etc/passwd"]}, "urls[1]"),
    ({"topic": "t", "urls": ["https://a.example/"] * 21}, "urls"),
    ({"topic": "t", "max_results": 0}, "max_results"),
    ({"topic": "t", "max_results": "3"}, "max_results")])
def test_harvest__bad_input_is_422_naming_the_field(agent: HarvestAgent, body: dict[str, Any],
                                                    field: str) -> None:
    """An invalid request is refused with 422 and the field named in the JSON error."""
    answer = submit(agent, body)
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


def test_harvest__malformed_json_and_missing_key_are_400(agent: HarvestAgent) -> None:
    """A body that is not a JSON object, or no idempotency key, is a 400."""
    answer = requests.post(agent.base_url + "/harvest", data="[1, 2", timeout=10,
                           headers={"X-Idempotency-Key": "k-bad-json"})
    assert answer.status_code == 400 and answer.json()["field"] == "body"
    answer = requests.post(agent.base_url + "/harvest", json={"topic": "t"}, timeout=10)
    assert answer.status_code == 400 and answer.json()["field"] == "X-Idempotency-Key"


def test_harvest__oversized_body_is_413(agent: HarvestAgent) -> None:
    """A request body over 2 MiB is refused with 413 naming the body."""
    answer = submit(agent, {"topic": "x" * (MAX_BODY_BYTES + 1)})
    assert answer.status_code == 413 and answer.json()["field"] == "body"


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:4700::1111", True), ("127.0.0.1", False),
    ("10.1.2.3", False), ("192.168.0.1", False), ("169.254.169.254", False), ("::1", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("100.64.0.1", False)])
def test_is_public__only_global_unicast(address: str, public: bool) -> None:
    """Private, loopback, link-local, shared, multicast and mapped loopback are not public."""
    assert wcha.is_public(ipaddress.ip_address(address)) is public


def test_strip_tags__keeps_paragraphs_and_drops_scripts_and_navigation() -> None:
    """The crude fallback keeps text by paragraph and drops script, style, nav and footer."""
    markup = ("<html><head><style>p{}</style><script>var x = 1;</script></head><body>"
              "<nav>Home | About</nav><p>First &amp; best.</p><p>Second<br>line.</p>"
              "<footer>Legal</footer></body></html>")
    assert wcha.strip_tags(markup) == "First & best.\nSecond\nline."


def test_result__content_capped_at_60000_characters() -> None:
    """Long articles are cut at a paragraph or sentence so the content stays within the cap."""
    long_text = "\n".join(["The tide rose over the long grey wall. " * 40] * 40)
    found = [wcha.Harvested(f"http://a.example/{i}", f"Article {i}", long_text) for i in range(3)]
    result = wcha._result(found, [])
    assert len(result["content"]) <= wcha.MAX_CONTENT_CHARS
    assert result["content"].endswith("wall.")
    assert result["source_urls"] == [h.url for h in found[:len(result["articles"])]]
