"""IGA over real HTTP: the cover PNG, its download route, determinism and the protocol."""

from __future__ import annotations

import hashlib
import io
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from PIL import Image

from cpoa.agents import results
from cpoa_agents.iga import ImageAgent, derive_title
from cpoa_agents.service import MAX_BODY_BYTES
from tests.agents.protocol import finished, raw_get, serving, submit, succeeded

PROMPT = ("Podcast cover art for \u201cThe Future of Renewable Energy\u201d, an episode about "
          "the future of renewable energy")


def generate(agent: ImageAgent, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    """Submits, expects 202, waits for SUCCESS and returns the validated result."""
    return succeeded(agent, body, results.image, key)


def download(url: str) -> bytes:
    """GETs an image URL, expecting 200 and image/png."""
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
    return answer.content


@pytest.fixture(scope="module")
def iga(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageAgent]:
    """One IGA shared by the module (each stop costs half a second)."""
    with serving(ImageAgent(tmp_path_factory.mktemp("iga"))) as agent:
        yield agent


@pytest.fixture(scope="module")
def cover(iga: ImageAgent) -> dict[str, Any]:
    """The result of one generated cover for PROMPT."""
    return generate(iga, {"prompt": PROMPT})


def test_generate_image__success_returns_a_valid_result(iga: ImageAgent,
                                                        cover: dict[str, Any]) -> None:
    """A prompt gives 202, then SUCCESS with a 1400x1400 image URL served by the agent."""
    assert cover["status"] == "success"
    assert cover["width"] == cover["height"] == 1400
    assert cover["image_url"].startswith(iga.base_url + "/images/")
    assert cover["title"] == "The Future of Renewable Energy"


def test_generate_image__png_downloads_at_1400_square(cover: dict[str, Any]) -> None:
    """The image URL serves a PNG of 1400x1400 pixels."""
    with Image.open(io.BytesIO(download(cover["image_url"]))) as image:
        assert image.format == "PNG" and image.size == (1400, 1400)


def test_generate_image__same_prompt_same_image(iga: ImageAgent, cover: dict[str, Any],
                                                tmp_path: pathlib.Path) -> None:
    """The same prompt under another key, or on another agent, gives the identical PNG."""
    again = generate(iga, {"prompt": PROMPT})
    assert again == cover
    other = ImageAgent(tmp_path)
    other.start("127.0.0.1", 0)
    try:
        elsewhere = generate(other, {"prompt": PROMPT})
        assert download(elsewhere["image_url"]) == download(cover["image_url"])
    finally:
        other.stop()


def test_generate_image__different_prompts_differ(iga: ImageAgent, cover: dict[str, Any]) -> None:
    """Another prompt, or the same prompt with a title, gives another picture."""
    pictures = {hashlib.sha256(download(cover["image_url"])).hexdigest()}
    for body in ({"prompt": "Deep sea mining and the race for battery metals"},
                 {"prompt": PROMPT, "title": "Sun and Wind"}):
        result = generate(iga, body)
        pictures.add(hashlib.sha256(download(result["image_url"])).hexdigest())
    assert len(pictures) == 3


def test_generate_image__same_key_replays_task_and_result(iga: ImageAgent) -> None:
    """A second submit with the same idempotency key returns 200, the same task and result."""
    key = uuid.uuid4().hex
    first = submit(iga, {"prompt": "A replayed cover"}, key)
    report = finished(iga, first.json()["task_id"])
    again = submit(iga, {"prompt": "A replayed cover"}, key)
    assert again.status_code == 200
    assert again.json() == report and again.json()["task_id"] == first.json()["task_id"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": ["a", "list"]}, "prompt"),
    ({"prompt": "fine", "title": 42}, "title"),
])
def test_generate_image__bad_input_names_the_field(iga: ImageAgent, body: dict[str, Any],
                                                   field: str) -> None:
    """A missing, blank, mistyped or too long field is refused with 422 naming it."""
    answer = submit(iga, body)
    assert answer.status_code == 422 and answer.json()["field"] == field


def test_generate_image__not_json_is_400(iga: ImageAgent) -> None:
    """A body that is not JSON is refused with 400 naming the body."""
    answer = requests.post(iga.base_url + "/generate_image", data=b"\xff not json", timeout=5,
                           headers={"X-Idempotency-Key": "k-not-json"})
    assert answer.status_code == 400 and answer.json()["field"] == "body"


def test_generate_image__oversized_body_is_413(iga: ImageAgent) -> None:
    """A body over 2 MiB is refused with 413 naming the body."""
    answer = submit(iga, {"prompt": "x" * (MAX_BODY_BYTES + 1)})
    assert answer.status_code == 413 and answer.json()["field"] == "body"


@pytest.mark.parametrize("path", [
    "/images/../x.png", "/images/..%2f..%2fetc%2fpasswd", "/images/%2e%2e/x.png",
    "/images/../iga-tasks.sqlite3", "/images/ABCDEF0123456789ABCDEF01.png",
    "/images/0123456789abcdef01234567.png", "/images/0123456789abcdef01234567.png.bak",
])
def test_serve_image__traversal_and_unknown_ids_are_404(iga: ImageAgent, path: str) -> None:
    """Anything but a known lower-case hex id under /images/ is 404, never a file elsewhere."""
    assert raw_get(iga, path) == 404


@pytest.mark.parametrize(("prompt", "title"), [
    (PROMPT, "The Future of Renewable Energy"),
    ('A cover for "Deep Sea Mining", with waves', "Deep Sea Mining"),
    ("Cover art for an episode about heat pumps in cold climates", "Heat pumps in cold climates"),
    ("Illustration: tidal power and the moon, drawn in blue ink",
     "Tidal power and the moon, drawn..."),
    ("Tides", "Tides"),
])
def test_derive_title__quoted_text_else_first_words(prompt: str, title: str) -> None:
    """The title is the quoted part of the prompt, else its first six words after a lead-in."""
    assert derive_title(prompt) == title
