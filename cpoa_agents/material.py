"""What a script is made of: the harvested text's sources and sentences, and how much of it fits.

The content PSWA receives holds articles as a title line followed by paragraphs (see
:func:`cpoa_agents.text.article_block`). :func:`read` numbers every speakable sentence with the
source it came from; :func:`fill` picks, for each segment, the sentences its guest lines will
quote until the spoken length reaches the target, and says when the sources run out first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa_agents import audio, phrases, text

SENTENCE_WORDS = (6, 45)
"""Shortest and longest sentence worth reading aloud; shorter ones are headings or fragments."""
CHARS_PER_S = 19.0
"""Speaking speed of the reference voices (espeak-ng at 175 words a minute and Piper's joe
both measure 18.5–19.2 characters a second on the sample corpus)."""
HOST_LINE_CHARS = 90
"""Length assumed for a host line while choosing material (they are written afterwards)."""
FIXED_CHARS = 700
"""Characters of intro and outro besides their quoted sentences."""
ANSWER_MAX_WORDS = 55
"""Adjacent sentences join one answer while it stays under this many words."""
_DANGLING = frozenset("this that these those it its they their such but however also".split())
_TITLE_LINE = re.compile(r"[^.!?:;]\s*$")


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One speakable sentence: its reading-order index, its source's index, its terms."""

    index: int
    source: int
    text: str
    terms: frozenset[str]


@dataclasses.dataclass
class Material:
    """The harvested text, ready to be quoted."""

    sentences: list[Sentence]
    sources: list[dict[str, str]]
    lexicon: phrases.Lexicon
    weights: dict[str, float]


def read(content: str, sources: Sequence[Mapping[str, Any]] = ()) -> Material:
    """Splits content into sources (at title lines) and their speakable sentences.

    Args:
        content: Harvested text.
        sources: ``{url, title}`` of each article in order (WCHA's ``articles``); used when it
            matches the titles found in the content.
    """
    sentences: list[Sentence] = []
    titles: list[str] = []
    seen: set[str] = set()  # scraped pages repeat themselves; a script must not
    for block in text.blocks(content):
        if "\n" not in block and len(block.split()) <= 16 and _TITLE_LINE.search(block):
            titles.append(" ".join(block.split()))
            continue
        for sentence in text.split_sentences(block):
            sentence = re.sub(r"\s*\[\d+\]", "", sentence)  # citation marks do not read aloud
            if _speakable(sentence) and sentence.lower() not in seen:
                seen.add(sentence.lower())
                sentences.append(Sentence(len(sentences), max(0, len(titles) - 1), sentence,
                                          frozenset(text.terms(sentence))))
    found = [{"title": t, "url": ""} for t in titles] or [{"title": "", "url": ""}]
    if len(sources) == len(found):
        found = [{"title": str(s.get("title") or f["title"]), "url": str(s.get("url") or "")}
                 for s, f in zip(sources, found)]
    weights = text.idf([s.terms for s in sentences]) if sentences else {}
    return Material(sentences, found, phrases.Lexicon(s.text for s in sentences), weights)


def _speakable(sentence: str) -> bool:
    words = len(sentence.split())
    return (SENTENCE_WORDS[0] <= words <= SENTENCE_WORDS[1] and "http" not in sentence
            and sentence.rstrip("\"'\u201d\u2019)]").endswith((".", "!", "?")))


def seconds(chars: int, turns: int, segments: int) -> float:
    """Estimated episode length: speech at :data:`CHARS_PER_S` plus VFA's documented pauses."""
    pauses = max(0, turns - segments) * audio.TURN_PAUSE_S + \
        max(0, segments - 1) * audio.SEGMENT_PAUSE_S
    return chars / CHARS_PER_S + pauses + audio.LEAD_S + audio.TAIL_S


def assign(material: Material, keywords: Sequence[frozenset[str]]) -> list[list[Sentence]]:
    """Gives every sentence to the segment whose keywords it matches best, best first.

    A sentence matching no segment goes with the nearest earlier sentence of its source that
    does (it is likely to continue that thought), else to the first segment.
    """
    pools: list[list[tuple[float, Sentence]]] = [[] for _ in keywords]
    last_by_source: dict[int, int] = {}
    for sentence in material.sentences:
        scores = [score(sentence, k, material.weights) for k in keywords]
        top = max(range(len(keywords)), key=lambda i: (scores[i], -i))
        if scores[top] <= 0:
            top = last_by_source.get(sentence.source, 0)
        last_by_source[sentence.source] = top
        pools[top].append((scores[top], sentence))
    return [[s for _, s in sorted(pool, key=lambda p: (-p[0], p[1].index))] for pool in pools]


def score(sentence: Sentence, keywords: frozenset[str], weights: Mapping[str, float]) -> float:
    """Keyword overlap weighted by rarity; a sentence leaning on the one before counts less."""
    hits = sum(weights.get(t, 1.0) for t in keywords & sentence.terms)
    dangling = sentence.text.split()[0].lower().strip(",") in _DANGLING
    return hits * (0.6 if dangling else 1.0)


def fill(pools: list[list[Sentence]], target_s: float, *, fixed_chars: int = FIXED_CHARS,
         lines_per_answer: int = 2) -> tuple[list[list[list[Sentence]]], float]:
    """Takes answers round-robin across segments until the estimate reaches the target.

    Args:
        pools: Each segment's candidate sentences, best first.
        target_s: Seconds aimed at.
        fixed_chars: Characters of the lines that are not answers.
        lines_per_answer: Spoken lines per answer (a host question and the answer).

    Returns:
        Per segment, its answers (groups of adjacent sentences) in reading order; and the
        estimated length in seconds.
    """
    chosen: list[list[Sentence]] = [[] for _ in pools]
    cursor = [0] * len(pools)
    chars, turns = fixed_chars, 5
    estimate = seconds(chars, turns, len(pools) + 2)
    while estimate < target_s and any(c < len(p) for c, p in zip(cursor, pools)):
        for i, pool in enumerate(pools):
            if cursor[i] >= len(pool) or estimate >= target_s:
                continue
            sentence = pool[cursor[i]]
            cursor[i] += 1
            chosen[i].append(sentence)
            chars += len(sentence.text) + 1 + HOST_LINE_CHARS * (lines_per_answer - 1)
            turns += lines_per_answer
            estimate = seconds(chars, turns, sum(bool(c) for c in chosen) + 2)
    return [group(sorted(c, key=lambda s: s.index)) for c in chosen], estimate


def group(sentences: list[Sentence]) -> list[list[Sentence]]:
    """Joins adjacent sentences of one source into answers of at most ANSWER_MAX_WORDS."""
    groups: list[list[Sentence]] = []
    for s in sentences:
        last = groups[-1] if groups else []
        if (last and last[-1].index + 1 == s.index and last[-1].source == s.source
                and sum(len(g.text.split()) for g in last) + len(s.text.split())
                <= ANSWER_MAX_WORDS):
            last.append(s)
        else:
            groups.append([s])
    return groups
