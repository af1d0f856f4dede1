"""TDA, topic discovery: distinctive keyword clusters found by TF-IDF over sentences.

Every sentence of the text is a TF-IDF document. The most salient terms (heavy in many
sentences, heavier still in article titles) seed topics; a topic gathers the sentences that
contain its seed, takes its keywords from their centroid and its summary from the sentence
closest to that centroid. Seeds already covered by an earlier topic are skipped, so topics
differ. Without ``content`` the packaged corpus, ranked against the query, is the text.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

from cpoa_agents import corpus, text, validate
from cpoa_agents.service import TaskAgent

MAX_CONTENT_CHARS = 200_000
"""Longest ``content`` accepted."""
MAX_TOPICS = 50
DEFAULT_TOPICS = 5
CORPUS_ARTICLES = 4
"""Most corpus articles read when the request has no content."""
MAX_KEYWORDS = 6
MIN_KEYWORDS = 3
SUMMARY_MAX_CHARS = 300
SUMMARY_MIN_WORDS = 8
"""A summary shorter than this is used only when the topic has no longer sentence."""
TITLE_BONUS = 0.5
"""Extra salience per article title that holds the term (titles name what matters)."""
QUERY_SHARE = 0.7
"""Share of the relevance score from similarity to the query; the rest is salience."""


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence with its terms and unit TF-IDF vector."""

    text: str
    terms: tuple[str, ...]
    vector: text.Vector


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The text prepared for topic discovery."""

    sentences: list[Sentence]
    index: dict[str, list[int]]
    salience: dict[str, float]
    idf: dict[str, float]
    forms: dict[str, str]
    phrases: collections.Counter[tuple[str, str]]


def discover(query: str, content: str, limit: int) -> list[dict[str, Any]]:
    """Finds up to ``limit`` topics in ``content``, most relevant to ``query`` first.

    Args:
        query: What the listener asked about.
        content: Plain text, paragraphs separated by blank lines or line breaks; a short line
            without closing punctuation counts as a title.
        limit: Most topics returned.

    Returns:
        TopicObjects (``topic_id``, ``title_suggestion``, ``summary``, ``keywords``,
        ``relevance_score``) with unique ids; the same input always gives the same topics.
    """
    analysis = analyse(content)
    topics, covered, summaries, member_sets = [], set(), set(), set()
    for seed in _seeds(analysis):
        if len(topics) == limit:
            break
        members = tuple(analysis.index[seed])
        if seed in covered or members in member_sets:
            continue
        topic = _topic(analysis, seed, members, summaries)
        covered.update(topic["_terms"][:3])
        member_sets.add(members)
        summaries.add(topic["summary"])
        topics.append(topic)
    return _finish(topics, query, analysis)


def analyse(content: str) -> Analysis:
    """Splits content into sentences and computes IDF, salience, word forms and phrases."""
    raw, titles = [], []
    blocks = text.blocks(content)
    for block in blocks:
        lines = text.lines(block)
        # A title is a block's short unpunctuated first line (or the whole block, when there
        # is more text to title): its words weigh more, it is never a summary.
        if _is_title(lines[0]) and (len(lines) > 1 or len(blocks) > 1):
            titles.append(set(text.terms(lines[0])))  # a set: one bonus per title
            lines = lines[1:]
        raw.extend(s for s in text.split_sentences("\n".join(lines)) if text.terms(s))
    term_lists = [tuple(text.terms(s)) for s in raw]
    idf = text.idf(term_lists)
    sentences = [Sentence(s, t, text.vector(collections.Counter(t), idf))
                 for s, t in zip(raw, term_lists)]
    index: dict[str, list[int]] = collections.defaultdict(list)
    salience: dict[str, float] = collections.defaultdict(float)
    for i, sentence in enumerate(sentences):
        for term, weight in sentence.vector.items():
            index[term].append(i)
            salience[term] += weight
    in_titles = collections.Counter(term for title in titles for term in title)
    for term in salience:
        salience[term] *= 1 + TITLE_BONUS * in_titles[term]
    return Analysis(sentences, dict(index), dict(salience), idf,
                    text.surface_forms([content]), _phrases(raw))


def _is_title(line: str) -> bool:
    return not line.endswith(tuple(".!?:;,\u2026")) and len(line.split()) <= 20


def _phrases(sentences: Sequence[str]) -> collections.Counter[tuple[str, str]]:
    """Counts adjacent pairs of content words ("tidal stream"), the material of titles."""
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    for sentence in sentences:
        words = text.tokenize(sentence)
        for a, b in itertools.pairwise(words):
            if text.is_content_word(a) and text.is_content_word(b):
                pairs[(text.stem(a), text.stem(b))] += 1
    return pairs


def _seeds(analysis: Analysis) -> list[str]:
    """Candidate seed terms, most salient first; recurring ones unless the text is tiny."""
    min_df = 2 if len(analysis.sentences) >= 4 else 1
    candidates = [t for t in analysis.salience
                  if len(t) >= 3 and len(analysis.index[t]) >= min_df]
    return sorted(candidates, key=lambda t: (-analysis.salience[t], t))


def _topic(analysis: Analysis, seed: str, members: Sequence[int],
           used_summaries: set[str]) -> dict[str, Any]:
    centroid: dict[str, float] = collections.defaultdict(float)
    for i in members:
        for term, weight in analysis.sentences[i].vector.items():
            centroid[term] += weight
    # A keyword is heavy in the topic's sentences and recurs in the text: one-off words of a
    # single member sentence ("creators") would otherwise crowd out the real vocabulary.
    def weight(term: str) -> float:
        recurring = len(analysis.index[term]) >= 2
        return centroid[term] * math.sqrt(analysis.salience[term]) * (1.0 if recurring else 0.25)
    others = sorted((t for t in centroid if t != seed), key=lambda t: (-weight(t), t))
    terms = [seed, *others[:MAX_KEYWORDS - 1]]
    for term in _seeds(analysis):  # a topic from one short sentence still gets 3 keywords
        if len(terms) >= MIN_KEYWORDS:
            break
        if term not in terms:
            terms.append(term)
    return {"_terms": terms, "_centroid": dict(centroid), "_salience": analysis.salience[seed],
            "title_suggestion": _title(analysis, terms),
            "summary": _summary(analysis, members, centroid, used_summaries),
            "keywords": list(dict.fromkeys(analysis.forms.get(t, t) for t in terms))}


def _title(analysis: Analysis, terms: Sequence[str]) -> str:
    """"Tidal Stream and Turbines" from a recurring phrase, else "Honey, Bees and Hives"."""
    seed = terms[0]
    phrases = [pair for pair, count in analysis.phrases.items()
               if count >= 2 and seed in pair and pair[0] != pair[1]]
    if not phrases:
        return text.title_case([analysis.forms.get(t, t) for t in terms[:3]])
    # Prefer a phrase made of the topic's own keywords, then the commoner phrase.
    pair = min(phrases, key=lambda p: (not set(p) <= set(terms), -analysis.phrases[p], p))
    phrase = " ".join(analysis.forms.get(t, t) for t in pair).title()
    extra = next((t for t in terms if t not in pair), "")
    return text.title_case([phrase, analysis.forms.get(extra, extra)]) if extra else phrase


def _summary(analysis: Analysis, members: Sequence[int], centroid: dict[str, float],
             used: set[str]) -> str:
    """The member sentence closest to the centroid that no earlier topic used."""
    def closeness(i: int) -> tuple[bool, bool, bool, float, int]:
        sentence = analysis.sentences[i].text
        return (sentence in used, len(sentence) > SUMMARY_MAX_CHARS,
                len(sentence.split()) < SUMMARY_MIN_WORDS,
                -text.cosine(analysis.sentences[i].vector, centroid), i)
    best = min(members, key=closeness)
    return text.clip(analysis.sentences[best].text, SUMMARY_MAX_CHARS)


def _finish(topics: list[dict[str, Any]], query: str,
            analysis: Analysis) -> list[dict[str, Any]]:
    """Scores topics against the query, gives them unique ids, sorts and cleans them."""
    wanted = text.vector(collections.Counter(text.terms(query)), analysis.idf,
                         text.unseen_idf(len(analysis.sentences)))
    closeness = [text.cosine(wanted, t["_centroid"]) for t in topics]
    top_close = max(closeness, default=0.0) or 1.0
    top_salience = max((t["_salience"] for t in topics), default=0.0) or 1.0
    ids: set[str] = set()
    finished = []
    for topic, close in zip(topics, closeness):
        score = QUERY_SHARE * close / top_close + (1 - QUERY_SHARE) * topic["_salience"] / \
            top_salience
        finished.append({"topic_id": _unique(f"topic-{text.slugify(topic['keywords'][0])}", ids),
                         "title_suggestion": topic["title_suggestion"],
                         "summary": topic["summary"], "keywords": topic["keywords"],
                         "relevance_score": round(min(1.0, max(0.0, score)), 4)})
    return sorted(finished, key=lambda t: (-t["relevance_score"], t["topic_id"]))


def _unique(candidate: str, taken: set[str]) -> str:
    name, n = candidate, 2
    while name in taken:
        name, n = f"{candidate}-{n}", n + 1
    taken.add(name)
    return name


def corpus_text(query: str) -> str:
    """The packaged corpus articles most relevant to ``query``, as content blocks.

    Up to CORPUS_ARTICLES related articles (see :func:`cpoa_agents.text.related`).
    """
    articles = corpus.load_corpus()
    chosen = text.related(text.rank(query, [(a.title, a.text) for a in articles]),
                          CORPUS_ARTICLES)
    return "\n\n".join(text.article_block(articles[i].title, articles[i].paragraphs())
                       for i in chosen)


class TopicAgent(TaskAgent):
    """``POST /discover_topics``: up to ``limit`` topics of ``content`` (or of the corpus).

    Args:
        data_dir: The agent's data folder (task store).
    """

    name = "TDA"
    path = "/discover_topics"

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Checks ``query``, ``content`` and ``limit``; raises BadRequest naming the field."""
        return {"query": validate.text(body, "query", max_chars=1000),
                "content": validate.text(body, "content", max_chars=MAX_CONTENT_CHARS,
                                         required=False),
                "limit": validate.integer(body, "limit", 1, MAX_TOPICS, DEFAULT_TOPICS)}

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Returns ``{status, discovered_topics, source}`` (source: content or corpus)."""
        content = request["content"] or corpus_text(request["query"])
        return {"status": "success",
                "discovered_topics": discover(request["query"], content, request["limit"]),
                "source": "content" if request["content"] else "corpus"}
