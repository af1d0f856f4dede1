"""IGA, the image generator: a 1400×1400 PNG cover drawn with Pillow from a hash of the prompt.

The same prompt (and title) always gives the same picture: colours, gradient angle and shapes all
derive from a SHA-256 of the prompt, and the file name from a hash of both. Images are kept in
``<data_dir>/images/`` and served at ``GET /images/<image_id>.png``.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import pathlib
import re
import tempfile
import textwrap
import unicodedata
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cpoa_agents import service, validate

SIZE = 1400
"""Width and height in pixels (Apple Podcasts asks for 1400 to 3000 square)."""
PROMPT_MAX_CHARS, TITLE_MAX_CHARS = 2000, 300
TITLE_SHOWN_CHARS = 90
"""Longest title drawn; a longer one is cut at a word and ends with "..."."""
TITLE_FONT_SIZES = (150, 130, 112, 96, 84, 72, 62)
"""Tried largest first; the first that fits in TITLE_MAX_LINES lines is used."""
TITLE_MAX_LINES = 5
TEXT_WIDTH = 1120
"""Widest title line in pixels, leaving margins inside the shaded panel."""
RENDER_VERSION = "1"
"""Part of every image id: a new drawing changes the ids rather than serving stale files."""
IMAGE_ID = re.compile(r"[0-9a-f]{24}")
_QUOTED = re.compile(r"[\u201c\"\u00ab]([^\u201d\"\u00bb]+)[\u201d\"\u00bb]")
_PROMPT_PREFIX = re.compile(r"^(?:an?\s+)?(?:podcast\s+)?(?:cover(?:\s+art)?|artwork|image|"
                            r"illustration|picture)(?:\s+(?:for|of|about))?\s*:?\s+"
                            r"(?:(?:an?|the)\s+(?:podcast\s+)?episode\s+(?:about|on)\s+)?", re.I)
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_ASCII = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
          "\u2014": "-", "\u2026": "..."}


class ImageAgent(service.TaskAgent):
    """IGA: ``POST /generate_image`` → ``image_url`` of a cover PNG it serves itself.

    Args:
        data_dir: Where the agent keeps its task database and ``images/``.
    """

    name = "IGA"
    path = "/generate_image"

    def __init__(self, data_dir: Any) -> None:
        super().__init__(data_dir)
        self.images = self.data_dir / "images"
        self.images.mkdir(exist_ok=True)

    def routes(self) -> list[tuple[str, str, service.Handler]]:
        # The route pattern is the whole defence against path traversal: only hex ids match.
        return [*super().routes(), ("GET", rf"/images/{IMAGE_ID.pattern}\.png", self.serve_image)]

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Returns ``prompt`` and, when given, ``title``; raises BadRequest naming the field."""
        cleaned = {"prompt": validate.text(body, "prompt", max_chars=PROMPT_MAX_CHARS)}
        title = validate.text(body, "title", max_chars=TITLE_MAX_CHARS, required=False)
        if title:
            cleaned["title"] = title
        return cleaned

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Draws the cover unless it is already on disk; returns its URL and size."""
        title = request.get("title") or derive_title(request["prompt"])
        image_id = make_image_id(request["prompt"], request.get("title", ""))
        path = self.images / f"{image_id}.png"
        if not path.exists():
            _save_atomically(render(request["prompt"], title), path)
        return {"status": "success", "image_url": f"{self.base_url}/images/{image_id}.png",
                "width": SIZE, "height": SIZE, "title": title}

    def serve_image(self, request: service.Request) -> service.Response:
        """Answers ``GET /images/<id>.png`` with the PNG, or 404."""
        image_id = request.path.rsplit("/", 1)[-1].removesuffix(".png")
        path = self.images / f"{image_id}.png"
        if not IMAGE_ID.fullmatch(image_id) or not path.is_file():
            return service.error(404, "unknown image")
        # The id is a hash of what was drawn, so the bytes behind a URL never change.
        return service.Response(200, path.read_bytes(), "image/png",
                                {"Cache-Control": "public, max-age=31536000, immutable"})


def make_image_id(prompt: str, title: str = "") -> str:
    """The image's id: a hash of the drawing version, the prompt and the explicit title."""
    text = "\0".join((RENDER_VERSION, prompt, title))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def derive_title(prompt: str) -> str:
    """A cover title from a prompt: the quoted part, else its first words.

    Args:
        prompt: E.g. ``Podcast cover art for “Deep Sea Mining”, an episode about …``.

    Returns:
        ``Deep Sea Mining`` for the example. With nothing quoted, the first six words after a
        "cover art for" style lead-in, with "..." when the prompt goes on.
    """
    quoted = _QUOTED.search(prompt)
    if quoted and quoted.group(1).strip():
        return " ".join(quoted.group(1).split())
    words = _PROMPT_PREFIX.sub("", prompt.strip()).split() or prompt.split()
    title = " ".join(words[:6]).rstrip(",.;:")
    return title[:1].upper() + title[1:] + ("..." if len(words) > 6 else "")


def render(prompt: str, title: str) -> Image.Image:
    """Draws the cover: gradient, translucent shapes, the title on a panel, a CPOA footer."""
    digest = hashlib.sha256(prompt.encode()).digest()
    first, second = _palette(digest)
    image = _gradient(first, second, digest[4] / 255 * 2 * np.pi)
    image = Image.alpha_composite(image, _shapes(digest))
    _draw_title(image, _printable(title))
    _draw_footer(image)
    return image.convert("RGB")


def _palette(digest: bytes) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two related colours: hue from the hash, kept dark enough for white text."""
    hue = digest[0] / 255
    shift = 0.12 + digest[1] / 255 * 0.3  # analogous to split-complementary, never muddy
    saturation, value = 0.55 + digest[2] / 255 * 0.3, 0.38 + digest[3] / 255 * 0.2

    def rgb(h: float, v: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(h % 1.0, saturation, v)
        return round(r * 255), round(g * 255), round(b * 255)
    return rgb(hue, value), rgb(hue + shift, value * 0.6)


def _gradient(first: tuple[int, int, int], second: tuple[int, int, int],
              angle: float) -> Image.Image:
    """A linear gradient from ``first`` to ``second`` along ``angle`` (radians)."""
    axis = np.linspace(-0.5, 0.5, SIZE, dtype=np.float32)
    t = axis[None, :] * np.cos(angle) + axis[:, None] * np.sin(angle)
    t = (t - t.min()) / (t.max() - t.min())
    a, b = np.array(first, np.float32), np.array(second, np.float32)
    pixels = a * (1 - t[..., None]) + b * t[..., None]
    return Image.fromarray(pixels.round().astype(np.uint8)).convert("RGBA")


def _shapes(digest: bytes) -> Image.Image:
    """Six translucent circles and rings placed by the hash, on a transparent layer."""
    layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for i in range(6):
        x, y, r, kind = (digest[8 + 4 * i + k] for k in range(4))
        cx, cy = x / 255 * SIZE, y / 255 * SIZE
        radius = 120 + r / 255 * 420
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if kind % 2:
            draw.ellipse(box, fill=(255, 255, 255, 18 + kind % 24))
        else:
            draw.ellipse(box, outline=(255, 255, 255, 40 + kind % 40), width=10 + kind % 20)
    return layer


def _draw_title(image: Image.Image, title: str) -> None:
    """Centres the title in the largest type that fits, on a shaded panel for contrast."""
    size, font, lines = _fit(title)
    height = round(size * 1.18)
    top = (SIZE - height * len(lines)) // 2 - 40
    panel = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(panel).rounded_rectangle(
        (80, top - size // 2, SIZE - 80, top + height * len(lines) + size // 2),
        radius=48, fill=(0, 0, 0, 96))
    image.alpha_composite(panel)
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        x = (SIZE - draw.textlength(line, font=font)) / 2
        y = top + n * height
        draw.text((x + 4, y + 5), line, font=font, fill=(0, 0, 0, 140))  # soft shadow
        draw.text((x, y), line, font=font, fill=(255, 255, 255, 255))


def _fit(title: str) -> tuple[int, _Font, list[str]]:
    """The largest font size whose wrapped title fits the width in few enough lines."""
    for size in TITLE_FONT_SIZES:
        font = ImageFont.load_default(size=size)
        lines = _wrap(title, font)
        if len(lines) <= TITLE_MAX_LINES:
            break
    return size, font, lines[:TITLE_MAX_LINES]


def _wrap(text: str, font: _Font) -> list[str]:
    """Greedy word wrap by measured width; a word too wide on its own is cut by characters."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= TEXT_WIDTH:
            lines[-1] = candidate
            continue
        while font.getlength(word) > TEXT_WIDTH:
            cut = max(1, int(len(word) * TEXT_WIDTH / font.getlength(word)) - 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def _draw_footer(image: Image.Image) -> None:
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=44)
    x = (SIZE - draw.textlength("CPOA", font=font)) / 2
    draw.text((x, SIZE - 110), "CPOA", font=font, fill=(255, 255, 255, 200))


def _printable(title: str) -> str:
    """The title in the characters Pillow's built-in font can draw (ASCII).

    Accents are dropped ("Café" → "Cafe") and typographic quotes straightened; other scripts
    cannot be drawn by the built-in font, and a title left empty becomes "Podcast".
    """
    text = "".join(_ASCII.get(c, c) for c in title)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = " ".join(text.split())
    if len(text) > TITLE_SHOWN_CHARS:
        text = textwrap.shorten(text, TITLE_SHOWN_CHARS, placeholder="...")
    return text or "Podcast"


def _save_atomically(image: Image.Image, path: pathlib.Path) -> None:
    """Writes next to the target and renames, so a reader never sees half a PNG."""
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        try:
            image.save(handle, format="PNG")
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)
