"""Short noun-like phrases taken verbatim from source sentences, for questions and titles.

A phrase is a run of two to four content words (no stop word inside, except a joining "of" or
"and" between two content words, as in "direction of magnetic field lines"), cut at punctuation.
Nothing here parses grammar: runs are scored by how many of the segment's keywords they hold
and how rare their words are, so the host asks about "light-sensitive proteins" rather than
about "light". Pure functions over strings, deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from cpoa_agents import text

MIN_WORDS, MAX_WORDS = 2, 4
"""Content words in a phrase: one word is a keyword, not a phrase; five is a clause."""
_JOINERS = frozenset({"of", "and"})
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*|[^\w\s]")
_SMALL = frozenset("a an and as at but by for from in of on or the to vs with".split())
_LEADERS = frozenset("""a an the their its this these those his her our your my of in on for with
from by at about into through across under over""".split())
"""Words that usually come right before a noun phrase: what follows them shows which words of
the text are nouns (a phrase's last word) and which are modifiers (the words before it)."""
_ARTICLES = frozenset("a an the their its this these those his her our your my which".split())
"""A word directly followed by one of these is taken for a verb ("reflects the")."""


class Lexicon:
    """Which words of a text head or modify a noun phrase, learnt from the text itself.

    A run of content words right after an article, possessive or preposition ("the *restless
    migratory hopping*") is taken as a noun phrase: its last word is a head, the others are
    modifiers. A phrase qualifies when its last word is a head and its other words are heads
    or modifiers, which keeps verbs out ("caged starlings shifted" does not qualify). Words
    seen right before an article, and past forms ending in "-ed", are never heads.

    Args:
        sentences: The text's sentences.
    """

    def __init__(self, sentences: Iterable[str]) -> None:
        self.heads: set[str] = set()
        self.modifiers: set[str] = set()
        verbs: set[str] = set()
        for sentence in sentences:
            tokens = [t.lower() for t in _TOKEN.findall(sentence)]
            verbs.update(w for w, after in zip(tokens, tokens[1:]) if after in _ARTICLES)
            run: list[str] | None = None
            for word in [*tokens, "."]:
                if run is not None and word[0].isalnum() and _content(word):
                    run.append(word)
                    continue
                if run:
                    self.heads.add(run[-1])
                    self.modifiers.update(run[:-1])
                run = [] if word in _LEADERS else None
        self.heads = {text.stem(w) for w in self.heads - verbs if not w.endswith("ed")}
        self.modifiers = {text.stem(w) for w in self.modifiers - verbs}

    def fits(self, phrase: str) -> bool:
        """True when the phrase looks like a noun phrase of this text (or nothing was learnt)."""
        if not self.heads:
            return True
        words = [text.stem(w.lower()) for w in phrase.split() if w not in _JOINERS]
        return words[-1] in self.heads and all(
            w in self.heads or w in self.modifiers for w in words[:-1])


def candidates(sentence: str, lexicon: Lexicon | None = None) -> list[str]:
    """All phrases of a sentence, in reading order (see the module's definition).

    Args:
        sentence: One sentence.
        lexicon: Keeps only noun-like phrases when given.

    Returns:
        Phrases as they are written (a capitalised first word of the sentence lower-cased
        unless it looks like a name).
    """
    runs: list[list[str]] = [[]]
    tokens = _TOKEN.findall(sentence)
    for i, token in enumerate(tokens):
        word = token.lower()
        if token[0].isalnum() and _content(word) and not word.endswith("ly"):
            runs[-1].append(_surface(token, i == 0))
        elif word in _JOINERS and runs[-1] and i + 1 < len(tokens) and \
                _content(tokens[i + 1].lower()):
            runs[-1].append(word)
        else:
            runs.append([])
    found = []
    for run in runs:
        while run and run[-1] in _JOINERS:
            run.pop()
        found.extend(_windows(run))
    return [p for p in dict.fromkeys(found) if lexicon is None or lexicon.fits(p)]


def _content(word: str) -> bool:
    return text.is_content_word(word) and not word.isdigit() and len(word) > 2


def _surface(token: str, first: bool) -> str:
    """A sentence's first word loses its capital unless it is an acronym or a name-like word."""
    if first and token[:1].isupper() and token[1:].islower():
        return token.lower()
    return token


def _windows(run: list[str]) -> list[str]:
    """Sub-runs of a run that start and end with a content word and fit the length limits."""
    out = []
    for start in range(len(run)):
        if run[start] in _JOINERS:
            continue
        for end in range(start + 1, len(run) + 1):
            words = run[start:end]
            content = sum(w not in _JOINERS for w in words)
            if words[-1] in _JOINERS or content < MIN_WORDS:
                continue
            if content > MAX_WORDS:
                break
            out.append(" ".join(words))
    return out


def best(sentences: Sequence[str], keywords: Collection[str], *, lexicon: Lexicon | None = None,
         weights: Mapping[str, float] | None = None, avoid: Collection[str] = ()) -> str:
    """The phrase of ``sentences`` that best names what they say.

    Args:
        sentences: Where to look, in order of preference (ties go to the earlier sentence).
        keywords: Stemmed terms that matter here (a phrase holding them scores higher).
        lexicon: Prefers noun-like phrases when given.
        weights: IDF per stemmed term (rarer words name a subject better); 1.0 when missing.
        avoid: Phrases (any case) not to return again, nor any phrase whose terms they
            already hold; their other terms count for less.

    Returns:
        The best phrase, or "" when no sentence has one.
    """
    avoided = [frozenset(text.terms(p)) for p in avoid]
    used_terms = frozenset().union(*avoided)
    scored = []
    for order, sentence in enumerate(sentences):
        for phrase in candidates(sentence, lexicon):
            terms = text.terms(phrase)
            if any(set(terms) <= a or a <= set(terms) for a in avoided if a):
                continue
            score = sum((2.0 if t in keywords else 0.0) + (weights or {}).get(t, 1.0)
                        - (0.8 if t in used_terms else 0.0) for t in terms)
            score -= 0.6 * max(0, len(terms) - 3)  # long runs read as clauses
            scored.append((-score, order, phrase))
    if not scored and lexicon is not None:  # nothing noun-like: any phrase beats none
        return best(sentences, keywords, weights=weights, avoid=avoid)
    return min(scored)[2] if scored else ""


def title(phrase: str) -> str:
    """Title case for a phrase: "magnetic field lines" → "Magnetic Field Lines"."""
    words = phrase.split()
    return " ".join(w if (i and w in _SMALL) or any(c.isupper() for c in w)
                    else w[:1].upper() + w[1:] for i, w in enumerate(words))
