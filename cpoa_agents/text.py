"""Plain-text analysis for the reference agents: tokens, sentences and TF-IDF, no downloads.

Everything here is a pure, deterministic function over strings (stdlib only), so WCHA, TDA, SCA
and PSWA rank and summarise the same way on every machine. Terms are lower-cased words with a
light plural folding (:func:`stem`), so "volcanoes" finds "volcano"; stop words never count.
"""

from __future__ import annotations

import collections
import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

STOP_WORDS = frozenset("""
a about above after again against ago all almost along already also although always am among
an and another any anyone anything are around as at away back be became because become becomes
been before being below beneath best better between beyond both but by came can cannot could
did do does doing done down during each either else enough even ever every few first for from
further get gets getting give given gives go goes going gone got had has have having he her here
hers herself him himself his how however i if in including indeed instead into is it its itself
just keep keeps kept know known last later least less let like likely made make makes making
many may me might more most mostly much must my myself near nearly neither never next no nor not
nothing now of off often on once one only onto or other others otherwise our ours ourselves out
over own part per perhaps quite rather really said same say says see seem seems seen several
shall she should simply since so some something sometimes soon still such take takes than that
the their theirs them themselves then there therefore these they thing things this those though
through thus to together too took toward towards two under unless until up upon us use used
uses using usually very via was way ways we well went were what whatever when where whether
which while who whole whom whose why will with within without would yet you your yours yourself
yourselves
able actually add added approach area began begin bring brings case cases certain change changes
clear come comes common day days different difficult early easily easy especially example fact
far find finds found good great greatest help helps high idea important kind large larger
largest late lead little long longer lot lots main matter mean means need needs new number old
order particular place point possible problem question questions real reason reasons recent
result results right set show showed shows small sort start starts sure tell tells tend tends
true try turn turns type various week weeks work works worth year years
""".split())
"""English function words and generic fillers that never make a keyword (about 400 words)."""

ABBREVIATIONS = frozenset("""
al approx apr aug ave cf co corp dec dept dr e.g eg etc feb fig figs gen gov i.e ie inc jan jr jul
jun lt ltd mar mr mrs ms mt nov oct p.m a.m prof rev sen sep sept sgt sr st vol vols vs
""".split())
"""Words that end with a full stop without ending a sentence (lower case, without the stop)."""

RELATED_SHARE = 0.5
"""A document ranks as related when it scores at least half as well as the best one: a
passing mention ("tidal flats" in an article on birds) does not make an article on-topic."""

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_BOUNDARY = re.compile(r"([.!?\u2026]+)([\"'\u201d\u2019)\]]*)\s+")
_CLOSERS = ".!?:;\"'\u201d\u2019)\u2026"
_WORD_FOR_SLUG = re.compile(r"[^a-z0-9]+")


# -- tokens ---------------------------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    """Splits text into lower-case words (any script); numbers-only tokens are dropped.

    Args:
        text: Any text.

    Returns:
        The words in order; an apostrophe inside a word is kept ("don't"), a trailing
        possessive "'s" is removed.
    """
    words = []
    for match in _WORD.finditer(unicodedata.normalize("NFKC", text)):
        word = match.group().lower().replace("\u2019", "'")
        if word.endswith("'s"):
            word = word[:-2]
        if word and not word.isdigit():
            words.append(word)
    return words


def stem(word: str) -> str:
    """Folds common English plurals onto the singular ("bees" → "bee", "colonies" → "colony").

    A deliberately light rule set: it never merges unrelated words, it only misses some pairs.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "oes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "ous")):
        return word[:-1]
    return word


def is_content_word(word: str) -> bool:
    """True for a word that can carry meaning: two letters or more, and neither the word nor
    its singular is a stop word ("places" goes with "place")."""
    return len(word) >= 2 and word not in STOP_WORDS and stem(word) not in STOP_WORDS


def terms(text: str) -> list[str]:
    """The content words of ``text``, stemmed, in order (the unit of every TF-IDF here)."""
    return [stem(w) for w in tokenize(text) if is_content_word(w)]


def surface_forms(texts: Iterable[str]) -> dict[str, str]:
    """Maps each term to the word form it appears as most often (ties: alphabetically first).

    Keywords are shown in this form, so a reader sees "bees" rather than the stem "bee" when
    the text mostly says "bees".
    """
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for text in texts:
        for word in tokenize(text):
            if is_content_word(word):
                counts[stem(word)][word] += 1
    return {term: min(forms.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            for term, forms in counts.items()}


# -- sentences ------------------------------------------------------------------------------

def blocks(text: str) -> list[str]:
    """Splits text at blank lines into non-empty blocks (articles or paragraphs)."""
    return [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]


def lines(block: str) -> list[str]:
    """The block's logical lines: a soft-wrapped line continuing a sentence is re-joined."""
    joined: list[str] = []
    for raw in block.splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        if joined and not joined[-1].endswith(tuple(_CLOSERS)) and line[0].islower():
            joined[-1] += " " + line
        else:
            joined.append(line)
    return joined


def split_sentences(text: str) -> list[str]:
    """Splits text into sentences.

    A line break after a heading-like line, and every blank line, ends a sentence. A full stop
    ends one only before whitespace and a capital, digit or opening quote, and not after an
    abbreviation ("e.g.", "Dr.") or an initial ("J. Smith"); "3.14" never splits.

    Args:
        text: Plain text, possibly several paragraphs.

    Returns:
        The sentences, whitespace-normalised, in order.
    """
    sentences = []
    for block in blocks(text):
        for line in lines(block):
            sentences.extend(_split_line(line))
    return sentences


def _split_line(line: str) -> list[str]:
    parts, start = [], 0
    for match in _BOUNDARY.finditer(line):
        following = line[match.end():match.end() + 2]
        if not _starts_sentence(following) or _is_abbreviation(line[start:match.start()],
                                                               match.group(1)):
            continue
        parts.append(line[start:match.end()].strip())
        start = match.end()
    if line[start:].strip():
        parts.append(line[start:].strip())
    return parts


def _starts_sentence(following: str) -> bool:
    if not following:
        return False
    first = following[0]
    if first in "\"'\u201c\u2018([" and len(following) > 1:
        first = following[1]
    return first.isupper() or first.isdigit()


def _is_abbreviation(before: str, stop: str) -> bool:
    if stop != ".":
        return False
    word = before.rsplit(None, 1)[-1] if before.strip() else ""
    word = word.lstrip("\"'(\u201c\u2018[").lower()
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or bool(
        re.fullmatch(r"(?:\w\.)+\w", word))


# -- TF-IDF ---------------------------------------------------------------------------------

Vector = dict[str, float]


def idf(documents: Sequence[Iterable[str]]) -> dict[str, float]:
    """Smoothed inverse document frequency, ``ln((1 + N) / (1 + df)) + 1``, per term.

    Args:
        documents: Each document's terms (repeats do not matter).
    """
    df: collections.Counter[str] = collections.Counter()
    for document in documents:
        df.update(set(document))
    n = len(documents)
    return {term: math.log((1 + n) / (1 + count)) + 1.0 for term, count in sorted(df.items())}


def unseen_idf(n_documents: int) -> float:
    """The IDF of a term that no document has (the largest possible)."""
    return math.log(1 + n_documents) + 1.0


def vector(counts: Mapping[str, float], weights: Mapping[str, float],
           default: float = 1.0) -> Vector:
    """A unit-length TF-IDF vector with sublinear term frequency, ``(1 + ln tf) * idf``.

    Args:
        counts: Term → (possibly weighted) count.
        weights: IDF per term.
        default: IDF of a term missing from ``weights``.
    """
    raw = {t: (1.0 + math.log(c)) * weights.get(t, default) for t, c in counts.items() if c > 0}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    return {t: v / norm for t, v in raw.items()} if norm else {}


def cosine(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Cosine similarity of two vectors (plain dot product when both are unit length)."""
    if len(a) > len(b):
        a, b = b, a
    dot = sum(v * b.get(t, 0.0) for t, v in a.items())
    norm_a = math.sqrt(sum(v * v for v in a.values()))
    norm_b = math.sqrt(sum(v * v for v in b.values()))
    return dot / (norm_a * norm_b) if norm_a and norm_b else 0.0


def weighted_counts(title: str, body: str, title_weight: float = 3.0) -> dict[str, float]:
    """Term counts of a document whose title words count ``title_weight`` times."""
    counts: dict[str, float] = dict(collections.Counter(terms(body)))
    for term in terms(title):
        counts[term] = counts.get(term, 0.0) + title_weight
    return counts


def rank(query: str, documents: Sequence[tuple[str, str]], *,
         title_weight: float = 3.0) -> list[tuple[int, float]]:
    """Ranks (title, body) documents by TF-IDF cosine relevance to ``query``.

    Args:
        query: The words to look for.
        documents: (title, body) pairs.
        title_weight: How many times a title word counts.

    Returns:
        (index, score) pairs, best first; ties keep the documents' order. Scores are in [0, 1].
    """
    counts = [weighted_counts(title, body, title_weight) for title, body in documents]
    weights = idf(counts)
    default = unseen_idf(len(documents))
    wanted = vector(collections.Counter(terms(query)), weights, default)
    scores = [(i, round(cosine(wanted, vector(c, weights, default)), 6))
              for i, c in enumerate(counts)]
    return sorted(scores, key=lambda pair: (-pair[1], pair[0]))


def related(ranked: Sequence[tuple[int, float]], limit: int, *,
            share: float = RELATED_SHARE) -> list[int]:
    """Picks the documents worth keeping from a :func:`rank` result.

    Args:
        ranked: (index, score) pairs, best first.
        limit: Most documents kept.
        share: A document is related when it scores at least this share of the best one.

    Returns:
        Up to ``limit`` indexes of related documents, best first; when no document scores
        above zero, the first ``limit`` anyway, so there is always something to read.
    """
    best = ranked[0][1] if ranked else 0.0
    chosen = [i for i, score in ranked if score > 0 and score >= share * best]
    return (chosen or [i for i, _ in ranked])[:limit]


# -- presentation ---------------------------------------------------------------------------

def slugify(text: str, fallback_prefix: str = "x") -> str:
    """A lower-case ASCII slug ("Tidal Power!" → "tidal-power"); never empty.

    Text with no ASCII letters or digits (e.g. only CJK) gets ``<prefix>-<8 hex digits>`` from a
    hash, so the slug stays stable and distinct.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = _WORD_FOR_SLUG.sub("-", ascii_text.lower()).strip("-")
    if slug:
        return slug[:60].rstrip("-")
    return f"{fallback_prefix}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def title_case(words: Sequence[str]) -> str:
    """Joins words as a readable title: "Honey, Bees and Hives"."""
    return join_words([w[:1].upper() + w[1:] for w in words if w])


def clip(text: str, limit: int) -> str:
    """Shortens text to at most ``limit`` characters at a word boundary, adding "…"."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(",;:-") + "\u2026"


def article_block(title: str, paragraphs: Iterable[str]) -> str:
    """One article in the harvested-content format: the title, then its paragraphs.

    Title and paragraphs are separated by blank lines (so does each article from the next), so
    readers that split on blank lines and readers that split on lines both see whole
    paragraphs; the title is a short line without closing punctuation.
    """
    shown = [" ".join(p.split()) for p in paragraphs if p.strip()]
    return "\n\n".join([" ".join(title.split()), *shown])


def join_words(words: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
