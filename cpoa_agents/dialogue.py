"""The template script's lines: what the host says around the quoted sentences, per format.

Guest lines (and every line of a bulletin after its opening) are source sentences, quoted
verbatim and tagged with the source they came from. Host lines are built from phrases of those
sentences (:mod:`cpoa_agents.phrases`): a question names a phrase of the answer it gets, and a
follow-up refers back to a phrase of the answer just given. Phrasing is chosen by a hash of the
script, so the same request always gives the same script.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

from cpoa_agents import phrases, text
from cpoa_agents.material import Material, Sentence

HOST = "Host"
GUESTS = {"conversation": ("Guest",), "panel": ("Guest 1", "Guest 2"), "bulletin": ()}
OPENERS = ("Let's start with {t}.", "First, {t}.", "We begin with {t}.")
BRIDGES = ("From {p} to {t}.", "That covers {p}. Next, {t}.", "Let's leave {p} there and turn "
           "to {t}.", "Another thread in the sources is {t}.", "Now for something related: {t}.",
           "Moving on from {p}, there's {t}.")
ASKS = ("What do the sources say about {q}?", "Where does {q} come into it?",
        "Tell us about {q}.", "What should we know about {q}?", "Why does {q} matter here?",
        "How would you describe {q}?")
LOOK_BACKS = ("You mentioned {p}. What else should we know there?",
              "Staying with {p} for a moment: is there more to it?",
              "Before we move on from {p}, anything to add?")
FOLLOW_UPS = ("You mentioned {p}. What about {q}?", "Staying with {p}: where does {q} come in?",
              "Before we move on from {p}, tell us about {q}.",
              "So {p} is part of the picture. How does {q} fit?",
              "That point about {p} makes me wonder about {q}.",
              "If {p} is one piece, is {q} another?",
              "And beyond {p}? I'm curious about {q}.")
CLOSERS = ("Before we go: what's the one thing listeners should take away?",
           "A last thought before we wrap up?", "Where does all this leave us?")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment's title, the phrase it was made from, and its answers (groups of adjacent
    source sentences)."""

    title: str
    answers: list[list[Sentence]]
    phrase: str = ""

    @property
    def name(self) -> str:
        """The title as said inside a sentence (the phrase as the source writes it)."""
        return self.phrase or self.title


class Writer:
    """Writes the lines of one script.

    Args:
        material: The sources and sentences.
        seed: Makes the phrasing choices (the script id).
        fmt: ``conversation``, ``panel`` or ``bulletin``.
    """

    def __init__(self, material: Material, seed: str, fmt: str) -> None:
        self.material, self.seed, self.fmt = material, seed, fmt
        self.guests = GUESTS[fmt]
        self.turn = 0  # which guest answers next (panel)

    def pick(self, options: Sequence[str], key: str, step: int = 0) -> str:
        """The ``step``-th option after a start drawn for this script and key, so consecutive
        steps never repeat a phrasing (see :func:`pick`)."""
        return options[(options.index(pick(options, self.seed, key)) + step) % len(options)]

    def quote(self, speaker: str, group: Sequence[Sentence], prefix: str = "") -> dict[str, Any]:
        """A line quoting source sentences, with the source's index and the quoted text."""
        quoted = " ".join(s.text for s in group)
        return {"speaker": speaker, "text": f"{prefix}{quoted}", "source": group[0].source,
                "quote": quoted}

    def phrase(self, group: Sequence[Sentence], avoid: Sequence[str]) -> str:
        """The phrase of an answer worth naming, or "" when it has none."""
        keywords = frozenset().union(*(s.terms for s in group))
        return phrases.best([s.text for s in group], keywords, lexicon=self.material.lexicon,
                            weights=self.material.weights, avoid=avoid)

    def segment(self, number: int, segments: Sequence[Segment]) -> dict[str, Any]:
        """One segment's lines: host questions and guest answers, or a bulletin's reading."""
        seg = segments[number]
        if number == 0:
            lead = self.pick(OPENERS, "open").format(t=seg.name)
        else:
            lead = self.pick(BRIDGES, "bridge", number).format(p=segments[number - 1].name,
                                                               t=seg.name)
        if not self.guests:
            lines = [self.quote(HOST, g, f"{lead} " if i == 0 else "")
                     for i, g in enumerate(seg.answers)]
            return {"segment_title": seg.title, "lines": lines}
        lines, asked = [], [seg.name]
        for j, group in enumerate(seg.answers):
            q = self.phrase(group, asked)
            if j == 0:
                host = f"{lead} {self.pick(ASKS, 'ask', number).format(q=q or seg.name)}"
                about = [seg.name, q or seg.name]
            elif q:
                host = self.pick(FOLLOW_UPS, f"follow{number}", j).format(p=asked[-1], q=q)
                about = [asked[-1], q]
            else:
                host = self.pick(LOOK_BACKS, f"back{number}", j).format(p=asked[-1])
                about = [asked[-1]]
            lines.append({"speaker": HOST, "text": _capital(host), "about": list(dict.fromkeys(
                about))})
            lines.append(self.quote(self.next_guest(), group))
            asked.append(self.phrase(group, [*asked, q]) or q or asked[-1])
        return {"segment_title": seg.title, "lines": lines}

    def next_guest(self) -> str:
        """The guest whose turn it is (they alternate on a panel)."""
        guest = self.guests[self.turn % len(self.guests)]
        self.turn += 1
        return guest

    def intro(self, topic: str, persona: str, segments: Sequence[Segment],
              leads: Sequence[list[Sentence]]) -> dict[str, Any]:
        """Says what the episode covers; each guest answers with an opening source sentence."""
        covers = text.join_words([s.name for s in segments])
        if not self.guests:
            host = f"This is a briefing on {topic}. Coming up: {covers}."
            return {"segment_title": "Introduction", "lines": [{"speaker": HOST, "text": host}]}
        me = f"I'm your host, {persona}" if persona else "I'm your host"
        who = ("our guest, who has been following this closely" if len(self.guests) == 1
               else "two guests who have been reading up on it")
        host = (f"Welcome to the show. {me}, and today we're digging into {topic}. We'll cover "
                f"{covers}. Joining me is {who}.")
        greetings = ("Thanks for having me.", "Glad to be here.")
        lines = [{"speaker": HOST, "text": host}]
        for guest, greeting, lead in zip(self.guests, greetings, leads):
            lines.append(self.quote(guest, lead, f"{greeting} "))
        return {"segment_title": "Introduction", "lines": lines}

    def outro(self, segments: Sequence[Segment], closing: list[Sentence] | None,
              note: str) -> dict[str, Any]:
        """Sums up the segments, lets a guest close with a source sentence, names the sources."""
        covered = text.join_words([s.name for s in segments])
        titles = [s["title"] for s in self.material.sources if s["title"]]
        thanks = "Thanks for listening."
        if titles:
            thanks += f" This episode drew on {text.join_words([f'“{t}”' for t in titles])}."
        thanks = f"{thanks} {note}".strip()
        if not self.guests or closing is None:
            recap = {"speaker": HOST, "text": f"That was our look at {covered}. {thanks}"}
            return {"segment_title": "Wrap-up", "lines": [recap]}
        ask = self.pick(CLOSERS, "closer")
        return {"segment_title": "Wrap-up", "lines": [
            {"speaker": HOST, "text": f"We've covered a lot: {covered}. {ask}"},
            self.quote(self.guests[0], closing),
            {"speaker": HOST, "text": thanks}]}


def pick(options: Sequence[str], seed: str, *keys: object) -> str:
    """A deterministic choice: the same script always picks the same phrasing."""
    digest = hashlib.sha256("\0".join([seed, *map(str, keys)]).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _capital(line: str) -> str:
    return line[:1].upper() + line[1:]
