"""Documents to article text: HTML pages, Markdown, plain text and PDF files.

:func:`extract_article` turns a fetched :class:`Page` into a title and paragraphs, one per line,
whatever the document's type. PDFs are read with pypdf (the ``agents`` extra), pure Python.
"""

from __future__ import annotations

import dataclasses
import html
import io
import re

import trafilatura

from cpoa_agents import text

_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(\*\*|__|\*|`)")
_MD_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


class DocumentError(ValueError):
    """A document that cannot be read (a broken PDF); the message says why."""


@dataclasses.dataclass(frozen=True)
class Page:
    """A fetched page: the final URL after redirects, its body and content type."""

    url: str
    body: bytes
    content_type: str

    def decoded(self) -> str:
        """The body as text, in the charset the server declared (UTF-8 otherwise)."""
        match = re.search(r"charset=[\"']?([\w.:-]+)", self.content_type, re.I)
        try:
            return self.body.decode(match.group(1) if match else "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


_DROP = re.compile(r"<(script|style|noscript|nav|header|footer|aside|form|template)\b.*?</\1\s*>",
                   re.I | re.S)
_BREAK = re.compile(r"<(?:br|/p|/div|/li|/h[1-6]|/tr|/section|/article)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]+>")


def extract_article(page: Page) -> tuple[str, str]:
    """Returns a page's (title, article text), paragraphs on separate lines.

    A PDF's text comes from pypdf, Markdown loses its markup, HTML goes through trafilatura
    (comments and tables left out; a crude tag strip when it finds nothing). Plain text is kept
    as it is. The title is the document's first line or heading (a PDF's metadata title first).
    """
    kind = page.content_type.lower()
    if "pdf" in kind or page.body.startswith(b"%PDF-"):
        return _pdf(page)
    decoded = page.decoded()
    if "markdown" in kind or page.url.lower().endswith((".md", ".markdown")):
        decoded = markdown_text(decoded)
    if "html" not in kind and not decoded.lstrip().startswith("<"):
        first, _, rest = decoded.strip().partition("\n")
        return (text.clip(first, 200), rest.strip()) if rest.strip() else (page.url, first)
    title = _title(decoded) or page.url
    body = trafilatura.extract(page.body, include_comments=False, include_tables=False)
    body = body or strip_tags(decoded)
    first, _, rest = body.strip().partition("\n")
    if " ".join(first.split()).lower() == title.lower():  # the <h1> is often kept as line 1
        body = rest
    return title, body.strip()


def strip_tags(markup: str) -> str:
    """Crude HTML to text: drops scripts, navigation and footers, keeps paragraph breaks."""
    plain = _TAG.sub(" ", _BREAK.sub("\n", _DROP.sub(" ", markup)))
    return "\n".join(" ".join(line.split()) for line in html.unescape(plain).splitlines()
                     if line.strip())


def _title(markup: str) -> str:
    for pattern in (r"<h1\b[^>]*>(.*?)</h1\s*>", r"<title\b[^>]*>(.*?)</title\s*>"):
        match = re.search(pattern, markup, re.I | re.S)
        if match:
            title = " ".join(html.unescape(_TAG.sub(" ", match.group(1))).split())
            if title:
                return text.clip(title, 200)
    return ""




def markdown_text(markdown: str) -> str:
    """Markdown as plain paragraphs: the first heading becomes the first line (the title),
    later headings are dropped (they are not sentences), links keep their text, emphasis and
    list markers go."""
    out: list[str] = []
    for line in markdown.splitlines():
        heading = _MD_HEADING.match(line)
        if heading:
            if not out:
                out += [heading.group(1), ""]
            elif out[-1]:
                out.append("")
            continue
        line = _MD_MARKS.sub("", _MD_LINK.sub(r"\1", _MD_BULLET.sub("", line)))
        out.append(line.rstrip())
    return "\n".join(out).strip()


def _pdf(page: Page) -> tuple[str, str]:
    """A PDF's title (metadata, else its first line) and its text, paragraphs re-joined."""
    from pypdf import PdfReader  # the agents' extra
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(page.body))
        raw = "\n\n".join(p.extract_text() or "" for p in reader.pages)
        meta = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise DocumentError(f"unreadable PDF: {text.clip(str(exc), 150)}") from None
    paragraphs = [" ".join(line.split()) for line in text.lines(raw)] if raw.strip() else []
    title = " ".join(str(meta).split()) or (paragraphs[0] if paragraphs else page.url)
    if paragraphs and paragraphs[0] == title:
        paragraphs = paragraphs[1:]
    return text.clip(title, 200), "\n".join(paragraphs)
