"""WCHA, the web content harvester: safe HTTP fetches, article extraction, corpus ranking.

Given ``urls``, it fetches each page (bounded in time, size and redirects, every hop checked
against private addresses) and extracts the article with trafilatura. Given only a ``topic``, it
ranks the sample corpus by TF-IDF relevance: over HTTP from a corpus server when ``corpus_url``
is set (the demo's path), else straight from the packaged files.

The ``content`` it returns holds the articles in order, each as its title line followed by its
paragraphs, all separated by blank lines (:func:`cpoa_agents.text.article_block`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import pathlib
import socket
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import requests

from cpoa_agents import bounded, corpus, documents, text, validate
from cpoa_agents.documents import Page, extract_article, strip_tags  # noqa: F401 (its API)
from cpoa_agents.service import BadRequest, TaskAgent

logger = logging.getLogger(__name__)

MAX_URLS = 20
"""Most URLs one request may ask for."""
MAX_RESULTS = 50
"""Largest ``max_results`` (the limit CPOA itself accepts for a podcast)."""
DEFAULT_RESULTS = 3
"""Articles kept from the corpus when ``max_results`` is absent."""
FETCH_TIMEOUT_S = 10.0
"""Time budget of one page fetch, redirects and body included."""
MAX_PAGE_BYTES = 2 * 1024 * 1024
"""Largest page body read; a larger page is refused."""
MAX_REDIRECTS = 5
"""Redirects followed per page, each hop checked like the first URL."""
MAX_CONTENT_CHARS = 60_000
"""Largest ``content`` returned."""
USER_AGENT = "cpoa-wcha/0.1 (reference web content harvester)"
TEXT_TYPES = ("html", "xml", "text/", "json", "pdf", "markdown")  # worth extracting; not images


class FetchRefused(Exception):
    """A page that could not or may not be fetched; the message is the reason."""


class HarvestFailed(Exception):
    """Nothing could be harvested; the task fails with this message."""


@dataclasses.dataclass(frozen=True)
class Harvested:
    """One harvested article."""

    url: str
    title: str
    text: str
    score: float = 0.0

    def block(self) -> str:
        """The article in the content format: title, then paragraphs, blank lines between."""
        return text.article_block(self.title, self.text.splitlines())


# -- fetching -------------------------------------------------------------------------------

class SafeFetcher:
    """GETs web pages without reaching private networks, and within time and size bounds.

    Every hop (the URL and each redirect target) must be http(s) and resolve only to public
    addresses, unless private ones are allowed or its ``host:port`` is listed. The fetcher
    connects directly (no proxies from the environment): an address check means nothing when a
    proxy makes the connection. A name resolved again by ``requests`` after the check could in
    theory change (DNS rebinding); pinning addresses would need a custom transport.

    Args:
        allow_private: Skip the address check altogether.
        allowed_hosts: ``host:port`` (or bare ``host``, any port) that may be private.
        timeout: Seconds for one fetch, redirects and body included.
        max_bytes: Largest body read.
        max_redirects: Redirects followed.
    """

    def __init__(self, *, allow_private: bool = False, allowed_hosts: Sequence[str] = (),
                 timeout: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_PAGE_BYTES,
                 max_redirects: int = MAX_REDIRECTS) -> None:
        self.allow_private = allow_private
        self.allowed_hosts = frozenset(h.strip().lower() for h in allowed_hosts if h.strip())
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects

    def get(self, url: str) -> Page:
        """Fetches one page, following at most ``max_redirects`` checked redirects.

        Raises:
            FetchRefused: The URL or a redirect is refused, the server answers an error, the
                body is too large or of an unusable type, or the fetch fails or times out.
        """
        deadline = time.monotonic() + self.timeout
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(self.max_redirects + 1):
                self.check(url)
                try:
                    page, url = self._hop(session, url, deadline)
                except requests.RequestException as exc:
                    raise FetchRefused(f"fetch failed: {type(exc).__name__}: "
                                       f"{text.clip(str(exc), 200)}") from None
                if page is not None:
                    return page
        raise FetchRefused(f"more than {self.max_redirects} redirects")

    def check(self, url: str) -> None:
        """Refuses a URL that is not http(s) or points at a private address.

        Raises:
            FetchRefused: With the reason ("private address" for a private target).
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchRefused(f"scheme {parts.scheme or '(none)'!r} refused: http or https only")
        if parts.username or parts.password:
            raise FetchRefused("credentials in the URL refused")
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise FetchRefused("invalid port") from None
        if not host:
            raise FetchRefused("no host in the URL")
        if self.allow_private or host in self.allowed_hosts or \
                host_key(host, port) in self.allowed_hosts:
            return
        for address in _resolve(host, port):
            if not is_public(address):
                allow = f"--wcha-allowed-host {host_key(host, port)}"
                raise FetchRefused(f"{host} resolves to a private address ({address}); refused "
                                   f"(`cpoa agents serve {allow}` or WCHA_ALLOWED_HOSTS would "
                                   "permit it)")

    def _hop(self, session: requests.Session, url: str,
             deadline: float) -> tuple[Page | None, str]:
        """One request: a Page, or None and the redirect target."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchRefused(f"timed out after {self.timeout:g} s")
        response = session.get(url, stream=True, allow_redirects=False, timeout=left,
                               headers={"User-Agent": USER_AGENT,
                                        "Accept": "text/html,application/xhtml+xml,text/*"})
        with response:
            if response.is_redirect:
                return None, urllib.parse.urljoin(url, response.headers["location"])
            if response.status_code >= 400:
                raise FetchRefused(f"HTTP {response.status_code}")
            content_type = response.headers.get("content-type", "")
            if content_type and not any(t in content_type.lower() for t in TEXT_TYPES):
                raise FetchRefused(f"unsupported content type {content_type!r}")
            return Page(url, self._read(response, deadline), content_type), url

    def _read(self, response: requests.Response, deadline: float) -> bytes:
        return bounded.read(response, self.max_bytes, deadline,
                            lambda reason: FetchRefused(f"page {reason}"))


def host_key(host: str, port: int) -> str:
    """``host:port`` as it appears in a URL (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address (not private, loopback, link-local…)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_link_local
        or address.is_loopback or address.is_unspecified or address.is_private)


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchRefused(f"cannot resolve {host}: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


# -- the agent ------------------------------------------------------------------------------

class HarvestAgent(TaskAgent):
    """``POST /harvest``: article text for a topic, from given URLs or the sample corpus.

    Args:
        data_dir: The agent's data folder (task store).
        corpus_url: Base URL of a :class:`~cpoa_agents.corpus.CorpusServer`; topic-only
            requests rank its articles, fetched over HTTP. Empty: the packaged files.
        allow_private: Fetch private and loopback addresses too.
        allowed_hosts: ``host:port`` entries that may be private (e.g. the corpus server).
    """

    name = "WCHA"
    path = "/harvest"

    def __init__(self, data_dir: str | pathlib.Path, *, corpus_url: str = "",
                 allow_private: bool = False, allowed_hosts: tuple[str, ...] = ()) -> None:
        super().__init__(data_dir)
        self.corpus_url = corpus_url.rstrip("/")
        self.fetcher = SafeFetcher(allow_private=allow_private, allowed_hosts=allowed_hosts)

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Checks ``topic``, ``urls`` and ``max_results``; raises BadRequest naming the field."""
        topic = validate.text(body, "topic", max_chars=1000)
        urls = validate.array(body, "urls", max_items=MAX_URLS, required=False)
        files = validate.array(body, "files", max_items=MAX_URLS, required=False)
        minutes = validate.integer(body, "target_minutes", 1, 30, 3)
        return {"topic": topic,
                "urls": list(dict.fromkeys(
                    [*(_url(u, f"files[{i}]") for i, u in enumerate(files)),
                     *(_url(u, f"urls[{i}]") for i, u in enumerate(urls))])),
                "max_results": validate.integer(body, "max_results", 1, MAX_RESULTS,
                                                max(DEFAULT_RESULTS, -(-minutes // 3)))}

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Harvests and returns ``{status, content, source_urls, articles[, failed_urls]}``.

        Given ``files`` (documents: Markdown, text, HTML, PDF) and ``urls`` are all harvested
        in that order; ``max_results`` limits corpus articles (default: 3, or one per three
        ``target_minutes``).

        Raises:
            HarvestFailed: No article could be harvested, or (topic only) none of the corpus
                matches the topic.
        """
        if request["urls"]:  # the caller chose the pages: all of them, in their order
            found, failed = self._fetch_all(request["urls"])
            found = _scored(request["topic"], found)
        else:
            found, failed = self._from_corpus_server() if self.corpus_url else (_from_disk(), [])
            found = _best(_scored(request["topic"], found), request["max_results"])
            if found and not any(h.score > 0 for h in found):  # never another topic's articles
                raise HarvestFailed(f"no article of the sample corpus matches the topic "
                                    f"{request['topic']!r}; give the pages to harvest as urls")
        if not found:
            reasons = "; ".join(f"{f['url']}: {f['reason']}" for f in failed)
            raise HarvestFailed(f"nothing harvested: {reasons or 'no articles'}")
        return _result(found, failed)

    def _fetch_all(self, urls: Sequence[str]) -> tuple[list[Harvested], list[dict[str, str]]]:
        found, failed = [], []
        for url in urls:
            try:
                page = self.fetcher.get(url)
                title, body = extract_article(page)
                if not body.strip():
                    raise FetchRefused("no article text found")
            except (FetchRefused, documents.DocumentError) as exc:
                logger.info("harvest refused %s: %s", url, exc, extra={"agent": self.name})
                failed.append({"url": url, "reason": str(exc)})
                continue
            found.append(Harvested(page.url, title, body))
        return found, failed

    def _from_corpus_server(self) -> tuple[list[Harvested], list[dict[str, str]]]:
        index_url = f"{self.corpus_url}/index.json"
        try:
            entries = json.loads(self.fetcher.get(index_url).body)
        except (FetchRefused, ValueError) as exc:
            raise HarvestFailed(f"corpus index {index_url}: {exc}") from None
        if not isinstance(entries, list):
            raise HarvestFailed(f"corpus index {index_url}: expected a JSON list")
        urls = [urllib.parse.urljoin(index_url, e["url"]) for e in entries
                if isinstance(e, dict) and isinstance(e.get("url"), str)]
        return self._fetch_all(urls)


def _url(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2048:
        raise BadRequest(f"{field}: expected a URL of at most 2048 characters", field=field)
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{field}: not an http(s) URL", field=field)
    return value.strip()


def _from_disk() -> list[Harvested]:
    return [Harvested((corpus.CORPUS_DIR / f"{a.slug}.md").as_uri(), a.title,
                      "\n".join(a.paragraphs())) for a in corpus.load_corpus()]


def _scored(topic: str, found: Sequence[Harvested]) -> list[Harvested]:
    """The articles in their order, each with its relevance to the topic."""
    scores = dict(text.rank(topic, [(h.title, h.text) for h in found]))
    return [dataclasses.replace(h, score=scores[i]) for i, h in enumerate(found)]


def _best(found: Sequence[Harvested], limit: int) -> list[Harvested]:
    """The ``limit`` most relevant articles; unrelated ones only when nothing is related."""
    ranked = sorted(enumerate(found), key=lambda ih: (-ih[1].score, ih[0]))
    return [found[i] for i in text.related([(i, h.score) for i, h in ranked], limit)]


def _result(found: Sequence[Harvested], failed: list[dict[str, str]]) -> dict[str, Any]:
    blocks, used, size = [], [], 0
    for article in found:
        block = article.block()
        room = MAX_CONTENT_CHARS - size - 2
        if len(block) > room:
            block = _cut(block, room)
        if not block:
            break
        blocks.append(block)
        used.append(article)
        size += len(block) + 2
    result: dict[str, Any] = {
        "status": "partial_success" if failed else "success",
        "content": "\n\n".join(blocks),
        "source_urls": [h.url for h in used],
        "articles": [{"url": h.url, "title": h.title, "score": round(h.score, 4)} for h in used]}
    if failed:
        result["failed_urls"] = failed
    return result


def _cut(block: str, room: int) -> str:
    """The start of a block that fits ``room``, ending at a line or sentence; "" if tiny."""
    if room < 200:
        return ""
    cut = block[:room]
    end = max(cut.rfind("\n"), cut.rfind(". ") + 1)
    return (cut[:end] if end > room // 2 else cut.rsplit(" ", 1)[0]).rstrip()
