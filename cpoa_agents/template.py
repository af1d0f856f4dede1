"""PSWA's template backend: a script of the requested format and length from harvested text.

:func:`weave` reads the sources (:mod:`cpoa_agents.material`), makes one segment per discovered
topic (or per run of paragraphs when there are none), fills the segments with quoted sentences
until the estimated length reaches ``target_minutes``, titles each segment with a phrase of its
sentences, and writes the lines (:mod:`cpoa_agents.dialogue`). When the sources run out first,
the wrap-up says so and ``script_data.length`` records it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa_agents import material as material_module
from cpoa_agents import phrases, text
from cpoa_agents.dialogue import HOST, Segment, Writer, pick
from cpoa_agents.material import Material, Sentence

FORMATS = ("conversation", "bulletin", "panel")
DEFAULT_MINUTES = 3
MINUTES_RANGE = (1, 30)
SHORT_SHARE = 0.9
"""Below this share of the target the script says the sources ran out."""
TITLE_SUFFIXES = (": A Conversation", ": What You Need to Know", ": An Explainer")
_SMALL_WORDS = frozenset("a an and as at but by for from in of on or the to vs with".split())
_FILL_ROUNDS = 4


def weave(request: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the template backend's ``script_data`` for a cleaned request (deterministic)."""
    seed = script_id(request, "template")
    fmt, target_s = request.get("format", FORMATS[0]), 60.0 * request.get(
        "target_minutes", DEFAULT_MINUTES)
    material = material_module.read(request["content"], request.get("sources", ()))
    keywords, fallback_titles, pools = _plans(request, material)
    writer = Writer(material, seed, fmt)
    leads, closing = _reserve(material, pools, len(writer.guests) or 1)
    goal, best = target_s, None
    for _ in range(_FILL_ROUNDS):  # host lines are written after choosing: correct and retry
        answers, _ = material_module.fill(pools, goal, lines_per_answer=2 if writer.guests else 1)
        segments = _segments(answers, keywords, fallback_titles, material, request["topic"])
        script = _compose(writer, request, segments, leads, closing, "")
        estimate = _estimate(script)
        if best is None or abs(estimate - target_s) < abs(best[2] - target_s):
            best = (segments, script, estimate)
        exhausted = sum(len(s) for seg in answers for s in seg) == sum(len(p) for p in pools)
        if abs(estimate - target_s) <= 0.03 * target_s or (exhausted and estimate < target_s):
            break
        goal += target_s - estimate  # over the target too: the closing lines were not counted
    segments, script, estimate = best
    note = ""
    if estimate < SHORT_SHARE * target_s:
        note = (f"Our sources ran out after about {max(1, round(estimate / 60))} minutes, short "
                f"of the {round(target_s / 60)} planned.")
        script = _compose(writer, request, segments, leads, closing, note)
        estimate = _estimate(script)
    return {"script_id": seed, "title": episode_title(request["topic"], seed), "format": fmt,
            "sources": material.sources, **script,
            "length": {"target_s": target_s, "estimated_s": round(estimate, 1),
                       "enough_material": not note, "note": note},
            **({"target_s": target_s} if not note else {})}


def _plans(request: Mapping[str, Any], material: Material) -> tuple[
        list[frozenset[str]], list[str], list[list[Sentence]]]:
    """Each segment's keywords, fallback title and candidate sentences (best first)."""
    topics = request.get("topics") or []
    if topics:
        keywords = [frozenset(text.terms(" ".join([t["title_suggestion"], *t["keywords"]])))
                    for t in topics]
        return keywords, [t["title_suggestion"] for t in topics], \
            material_module.assign(material, keywords)
    minutes = request.get("target_minutes", DEFAULT_MINUTES)
    count = max(1, min(max(2, min(6, round(minutes))), len(material.sentences) // 3))
    size = max(1, -(-len(material.sentences) // count))
    groups = [material.sentences[i:i + size] for i in range(0, len(material.sentences), size)]
    keywords = [_distinctive(g, material) for g in groups] or [frozenset()]
    pools = [sorted(g, key=lambda s: (-material_module.score(s, k, material.weights), s.index))
             for g, k in zip(groups, keywords)] or [[]]
    return keywords, [f"Part {n}" for n in range(1, len(pools) + 1)], pools


def _distinctive(group: Sequence[Sentence], material: Material) -> frozenset[str]:
    """The terms frequent in a run of sentences and rare elsewhere (its keywords)."""
    here = collections.Counter(t for s in group for t in s.terms)
    ranked = sorted(here, key=lambda t: (-here[t] * material.weights.get(t, 1.0), t))
    return frozenset(ranked[:6])


def _reserve(material: Material, pools: list[list[Sentence]],
             guests: int) -> tuple[list[list[Sentence]], list[Sentence] | None]:
    """Takes the intro's opening sentences (one per guest) and the closing sentence out of the
    pools: the first sentences of the first sources, and the last sentence of the first."""
    leads: list[list[Sentence]] = []
    for source in range(len(material.sources)):
        first = next((s for s in material.sentences if s.source == source), None)
        if first is not None and len(leads) < guests:
            leads.append([first])
    last = [s for s in material.sentences if s.source == 0 and [s] not in leads]
    closing = [last[-1]] if len(last) > 2 else None
    taken = {s.index for group in [*leads, closing or []] for s in group}
    for pool in pools:
        pool[:] = [s for s in pool if s.index not in taken]
    return leads, closing


def _segments(answers: list[list[list[Sentence]]], keywords: Sequence[frozenset[str]],
              fallback_titles: Sequence[str], material: Material, topic: str) -> list[Segment]:
    """Segments with answers, each titled by a phrase of its sentences (unique)."""
    segments: list[Segment] = []
    used = [topic]
    for groups, terms, fallback in zip(answers, keywords, fallback_titles):
        if not groups:
            continue
        ranked = sorted((s for g in groups for s in g),
                        key=lambda s: -material_module.score(s, terms, material.weights))
        phrase = phrases.best([s.text for s in ranked], terms, lexicon=material.lexicon,
                              weights=material.weights, avoid=used)
        title = phrases.title(phrase) if phrase else fallback
        used.append(phrase or fallback)
        segments.append(Segment(title, groups, phrase))
    return segments


def _compose(writer: Writer, request: Mapping[str, Any], segments: list[Segment],
             leads: list[list[Sentence]], closing: list[Sentence] | None,
             note: str) -> dict[str, Any]:
    writer.turn = 0
    topic = text.clip(request["topic"], 150).rstrip(".!?")
    persona = text.clip(request.get("persona") or "", 150).rstrip(".")
    if not segments:
        segments = [_fallback(request)]
        body = [{"segment_title": segments[0].title, "lines": [
            {"speaker": HOST, "text": f"What is there to know about {topic}?"},
            {"speaker": writer.guests[0] if writer.guests else HOST,
             "text": request.get("topics", [{}])[0].get("summary") if request.get("topics")
             else text.clip(request["content"], 300)}]}]
    else:
        body = [writer.segment(i, segments) for i in range(len(segments))]
    return {"segments": [writer.intro(topic, persona, segments, leads), *body,
                         writer.outro(segments, closing, note)]}


def _fallback(request: Mapping[str, Any]) -> Segment:
    topics = request.get("topics") or []
    return Segment(topics[0]["title_suggestion"] if topics else "The Topic", [])


def _estimate(script: Mapping[str, Any]) -> float:
    lines = [line for segment in script["segments"] for line in segment["lines"]]
    return material_module.seconds(sum(len(line["text"]) for line in lines), len(lines),
                                   len(script["segments"]))


def script_id(request: Mapping[str, Any], backend: str) -> str:
    """A stable id of everything that shapes the script."""
    canonical = json.dumps([backend, request["topic"], request["content"], request["topics"],
                            request.get("persona", ""), request.get("format", FORMATS[0]),
                            request.get("target_minutes", DEFAULT_MINUTES),
                            request.get("sources", [])], sort_keys=True)
    return "script-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def episode_title(topic: str, seed: str) -> str:
    """The topic in title case (acronyms and names kept), with a varied subtitle."""
    words = text.clip(topic.split("\n")[0], 80).split()
    title = " ".join(w if any(c.isupper() for c in w) or (i and w in _SMALL_WORDS)
                     else re.sub(r"(?<![\w'])[a-z]", lambda m: m[0].upper(), w)
                     for i, w in enumerate(words))
    return title if title.endswith(("?", "!", "\u2026")) else \
        re.sub(r"(?<![A-Z])\.$", "", title) + pick(TITLE_SUFFIXES, seed, "title")
