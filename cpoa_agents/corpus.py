"""The sample corpus: original articles packaged with CPOA, and a local web server for them.

The articles in ``cpoa_agents/corpus/*.md`` (a ``# Title`` line, a blank line, paragraphs) were
written for CPOA and are dedicated to the public domain (CC0 1.0). :class:`CorpusServer` serves
them as ordinary web pages, with navigation and footer around the ``<article>``, so that the
demo's harvest goes through the real path: an HTTP fetch and article extraction.
"""

from __future__ import annotations

import dataclasses
import html
import pathlib
import re

from cpoa_agents.service import Handler, Request, Response, Service, error

CORPUS_DIR = pathlib.Path(__file__).with_name("corpus")
"""Where the packaged articles live (package data, next to this module)."""

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclasses.dataclass(frozen=True)
class Article:
    """One corpus article.

    Attributes:
        slug: The file name without ``.md``; names the article's page.
        title: The ``# Title`` line, without the ``#``.
        text: The paragraphs, separated by blank lines.
    """

    slug: str
    title: str
    text: str

    def paragraphs(self) -> list[str]:
        """The article's paragraphs, each on one line."""
        return [" ".join(p.split()) for p in re.split(r"\n\s*\n", self.text) if p.strip()]


def load_corpus(folder: str | pathlib.Path | None = None) -> list[Article]:
    """Reads every ``*.md`` article of a folder, sorted by slug.

    Args:
        folder: The folder to read; the packaged corpus when None.

    Returns:
        The articles.

    Raises:
        ValueError: A file does not start with ``# Title`` or has a name unfit for a URL.
    """
    root = pathlib.Path(folder) if folder is not None else CORPUS_DIR
    return [_read(path) for path in sorted(root.glob("*.md"))]


def _read(path: pathlib.Path) -> Article:
    if not _SLUG.fullmatch(path.stem):
        raise ValueError(f"{path.name}: a corpus file name must be a lower-case slug")
    first, _, rest = path.read_text(encoding="utf-8").partition("\n")
    if not first.startswith("# ") or not first[2:].strip() or not rest.strip():
        raise ValueError(f"{path.name}: expected '# Title', a blank line, then paragraphs")
    return Article(path.stem, first[2:].strip(), rest.strip())


class CorpusServer(Service):
    """Serves the corpus over HTTP: ``/`` (HTML index), ``/index.json``, ``/articles/<slug>.html``.

    Args:
        data_dir: The service's data folder (unused but kept for the Service interface).
        folder: The articles' folder; the packaged corpus when None.
    """

    name = "corpus"

    def __init__(self, data_dir: str | pathlib.Path,
                 folder: str | pathlib.Path | None = None) -> None:
        super().__init__(data_dir)
        self.articles = {article.slug: article for article in load_corpus(folder)}

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [*super().routes(), ("GET", r"/", self.index_page),
                ("GET", r"/index\.json", self.index_json),
                ("GET", r"/articles/[a-z0-9-]+\.html", self.article_page)]

    def url(self, slug: str) -> str:
        """The absolute URL of an article's page."""
        return f"{self.base_url}/articles/{slug}.html"

    def index_json(self, request: Request) -> Response:
        """The articles as a JSON list of {slug, title, url}."""
        return Response(200, [{"slug": a.slug, "title": a.title, "url": self.url(a.slug)}
                              for a in self.articles.values()])

    def index_page(self, request: Request) -> Response:
        """An HTML page linking every article."""
        items = "\n".join(f'<li><a href="/articles/{a.slug}.html">{html.escape(a.title)}</a></li>'
                          for a in self.articles.values())
        body = f"<h1>Sample library</h1>\n<ul>\n{items}\n</ul>"
        return _page("Sample library", body)

    def article_page(self, request: Request) -> Response:
        """One article as a full web page, with boilerplate around the ``<article>``."""
        slug = request.path.rsplit("/", 1)[-1].removesuffix(".html")
        article = self.articles.get(slug)
        if article is None:
            return error(404, f"no article {slug!r}", "slug")
        paragraphs = "\n".join(f"<p>{html.escape(p)}</p>" for p in article.paragraphs())
        related = "\n".join(f'<li><a href="/articles/{a.slug}.html">{html.escape(a.title)}</a>'
                            "</li>" for a in self.articles.values() if a.slug != slug)
        body = (f"<article>\n<h1>{html.escape(article.title)}</h1>\n{paragraphs}\n</article>\n"
                f'<aside class="related"><h2>More from the library</h2>\n<ul>\n{related}\n'
                "</ul></aside>")
        return _page(article.title, body)


def _page(title: str, main: str) -> Response:
    """Wraps ``main`` in a page with header, navigation and footer (extraction must drop them)."""
    page = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)} \u00b7 CPOA sample library</title>\n</head>\n<body>\n"
        '<header><nav><a href="/">Library home</a> | <a href="/index.json">Index (JSON)</a> | '
        "<span>Subscribe to our newsletter</span></nav></header>\n"
        f"<main>\n{main}\n</main>\n"
        "<footer><p>CPOA sample library. Articles written for CPOA, public domain (CC0).</p>"
        "<p>Cookie settings | Privacy | Contact</p></footer>\n</body>\n</html>\n")
    return Response(200, page, "text/html; charset=utf-8")

