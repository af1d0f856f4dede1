"""SCA, the snippet craftsman: a 2–3 sentence extractive snippet and a cover-art prompt.

The snippet is made of the brief's and the topic summary's sentences that best match the topic's
title and keywords, kept in their original order. A brief too short to quote (often just a title)
is completed with sentences built from the title and keywords, so a snippet always reads as prose.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from cpoa_agents import text, validate
from cpoa_agents.service import BadRequest, TaskAgent

MAX_BRIEF_CHARS = 20_000
"""Longest ``content_brief`` accepted."""
MAX_KEYWORDS = 20
SNIPPET_SENTENCES = 3
SNIPPET_MAX_CHARS = 600
"""Extracted sentences stop being added past this length (the first is always kept)."""
MIN_SENTENCE_WORDS = 5
"""Shorter fragments (titles, headings) are not quoted as sentences."""
SUMMARY_MAX_CHARS = 300


def craft(topic_id: str, brief: str, info: dict[str, Any]) -> dict[str, Any]:
    """Builds one snippet.

    Args:
        topic_id: The topic's id (the snippet id is ``snippet-<topic_id>``).
        brief: Text to quote from.
        info: Cleaned ``topic_info``: optional ``title_suggestion``, ``summary``, ``keywords``.

    Returns:
        The SCA result: ``status``, ``snippet_id``, ``topic_id``, ``title``, ``summary``,
        ``text_content``, ``cover_art_prompt``.
    """
    keywords = info.get("keywords") or _keywords(f"{brief}\n{info.get('summary', '')}")
    # Given keywords are ranked by TDA; counted ones only by frequency, so fewer make a title.
    title = info.get("title_suggestion") or _title_like(brief) or \
        text.title_case(keywords[:3 if info.get("keywords") else 2]) or _from_id(topic_id)
    pool = _pool(brief, info.get("summary", ""))
    chosen = _choose(pool, _scores(pool, f"{title} {' '.join(keywords)}"))
    sentences = [pool[i] for i in sorted(chosen)]  # quoted in their original order
    summary = pool[chosen[0]] if chosen else _overview(title, keywords)
    if not sentences:
        sentences.append(f"A short look at {title}.")
    if len(sentences) < 2 and keywords:
        sentences.append(f"It touches on {text.join_words(keywords[:4])}.")
    return {"status": "success", "snippet_id": f"snippet-{topic_id}", "topic_id": topic_id,
            "title": title, "summary": text.clip(summary, SUMMARY_MAX_CHARS),
            "text_content": " ".join(sentences),
            "cover_art_prompt": cover_art_prompt(title, keywords)}


def cover_art_prompt(title: str, keywords: Sequence[str]) -> str:
    """A descriptive image prompt from the snippet's title and keywords."""
    motifs = text.join_words(list(keywords[:4])) or title.lower()
    return (f"Square podcast cover art for \u201c{title}\u201d: a bold editorial illustration "
            f"of {motifs}, clean shapes, rich natural colours, soft light, no text or lettering")


def _pool(brief: str, summary: str) -> list[str]:
    """Quotable sentences of the brief, then of the summary, without repeats."""
    seen: dict[str, str] = {}
    for sentence in text.split_sentences(brief) + text.split_sentences(summary):
        if len(sentence.split()) >= MIN_SENTENCE_WORDS and sentence[-1] in _ENDINGS:
            seen.setdefault(" ".join(sentence.lower().split()), sentence)
    return list(seen.values())


def _scores(pool: Sequence[str], wanted: str) -> list[float]:
    """Each sentence's TF-IDF cosine similarity to the title and keywords."""
    weights = text.idf([text.terms(s) for s in pool])
    query = text.vector(collections.Counter(text.terms(wanted)), weights,
                        text.unseen_idf(len(pool)))
    return [text.cosine(query, text.vector(collections.Counter(text.terms(s)), weights))
            for s in pool]


def _choose(pool: Sequence[str], scores: Sequence[float]) -> list[int]:
    """Indexes of the best sentences, best first: at most three, about SNIPPET_MAX_CHARS."""
    chosen: list[int] = []
    size = 0
    for i in sorted(range(len(pool)), key=lambda i: (-scores[i], i))[:SNIPPET_SENTENCES]:
        if chosen and size + len(pool[i]) > SNIPPET_MAX_CHARS:
            break
        chosen.append(i)
        size += len(pool[i]) + 1
    return chosen


def _keywords(source: str) -> list[str]:
    """The most frequent content words of the text (when the request names none)."""
    counts = collections.Counter(text.terms(source))
    forms = text.surface_forms([source])
    return [forms.get(t, t) for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            if len(t) >= 3][:5]


def _title_like(brief: str) -> str:
    """The brief itself when it reads as a title (short, no closing punctuation), else ""."""
    brief = " ".join(brief.split())
    return brief if len(brief.split()) <= 12 and brief[-1] not in _ENDINGS else ""


def _from_id(topic_id: str) -> str:
    """"topic-tidal-power" → "Tidal Power"."""
    words = [w for w in topic_id.replace("_", "-").split("-") if w and w != "topic"]
    return " ".join(w.capitalize() for w in words) or topic_id


def _overview(title: str, keywords: Sequence[str]) -> str:
    if not keywords:
        return f"A short look at {title}."
    return f"A short look at {title}, touching on {text.join_words(list(keywords[:4]))}."


_ENDINGS = ".!?\"'\u201d\u2019)\u2026"


class SnippetAgent(TaskAgent):
    """``POST /craft_snippet``: a short snippet and cover-art prompt for one topic.

    Args:
        data_dir: The agent's data folder (task store).
    """

    name = "SCA"
    path = "/craft_snippet"

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Checks ``topic_id``, ``content_brief`` and ``topic_info``; names a bad field."""
        return {"topic_id": validate.text(body, "topic_id", max_chars=200),
                "content_brief": validate.text(body, "content_brief",
                                               max_chars=MAX_BRIEF_CHARS),
                "topic_info": _topic_info(validate.obj(body, "topic_info", required=False))}

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Returns the snippet (see :func:`craft`)."""
        return craft(request["topic_id"], request["content_brief"], request["topic_info"])


def _topic_info(info: dict[str, Any]) -> dict[str, Any]:
    """The fields SCA uses from ``topic_info`` (others, like relevance_score, are ignored)."""
    cleaned: dict[str, Any] = {}
    for field, limit in (("title_suggestion", 500), ("summary", MAX_BRIEF_CHARS)):
        value = info.get(field)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise BadRequest(f"topic_info.{field}: expected text of at most {limit} characters",
                             field=f"topic_info.{field}")
        if value and value.strip():
            cleaned[field] = " ".join(value.split())
    keywords = info.get("keywords")
    if keywords is not None:
        if not isinstance(keywords, list) or len(keywords) > MAX_KEYWORDS:
            raise BadRequest(f"topic_info.keywords: expected a list of at most {MAX_KEYWORDS} "
                             "words", field="topic_info.keywords")
        for i, word in enumerate(keywords):
            if not isinstance(word, str) or not word.strip() or len(word) > 100:
                raise BadRequest(f"topic_info.keywords[{i}]: expected a word",
                                 field=f"topic_info.keywords[{i}]")
        cleaned["keywords"] = list(dict.fromkeys(w.strip() for w in keywords))
    return cleaned
