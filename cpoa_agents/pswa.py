"""PSWA, the script weaver: a deterministic host-and-guest dialogue from harvested text (§3).

The template backend builds an intro, one segment per discovered topic (the content's sentences
that best match the topic's keywords, as guest answers to host questions) and an outro. An
optional LLM backend (:mod:`cpoa_agents.llm`) writes the script instead and falls back to the
template when its answer is not a valid script.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cpoa_agents import llm, service, validate

logger = logging.getLogger(__name__)

HOST, GUEST = "Host", "Guest"
TOPIC_MAX_CHARS, PERSONA_MAX_CHARS, CONTENT_MAX_CHARS, MAX_TOPICS = 1000, 1000, 50_000, 50
"""Request limits: characters of topic, persona and content (contract §3); number of topics."""
TARGET_WORDS = 480
"""Spoken words aimed at for the whole episode: about three minutes at 160 words a minute."""
MIN_SEGMENT_WORDS = 50
"""Smallest word budget of one topic segment, however many topics there are."""
ANSWER_SHARE = 0.8
"""Share of a segment's budget spent on guest answers; host questions take the rest."""
ANSWER_MAX_WORDS = 60
SENTENCE_WORDS = (6, 45)
"""Shortest and longest sentence worth reading aloud; shorter ones are headings or fragments."""
QUESTIONS = ("What should listeners understand about {k}?", "Why do we keep hearing about {k}?",
             "What's the story on the {k} front?", "Can you unpack {k} for us?",
             "When it comes to {k}, what's really going on?",
             "How would you explain {k} to a newcomer?", "What stood out to you about {k}?")
REACTIONS = ("Interesting. ", "That's a useful way to put it. ", "", "Fair point. ", "Got it. ")
OPENERS = ("", "Right. ", "Good question. ", "Sure. ", "")
COMMA_OPENERS = ("Well, ", "So, ", "Honestly, ")
"""Used only before a common first word, which can be lower-cased without losing a name."""
LEADS = ("Next up: {t}.", "Let's move on to {t}.", "Now, our next theme: {t}.")
TITLE_SUFFIXES = (": A Conversation", ": What You Need to Know", ": An Explainer")
FAREWELLS = ("It's a story that keeps moving, so stay curious and look at the sources yourself.",
             "Just that the details matter, and they are worth a second look.",
             "Keep asking questions. That's the best way to make sense of all this.")
STOP_WORDS = frozenset("""a about above after again against all also am an and any are as at be
because been before being below between both but by can could did do does doing down during each
few for from further had has have having he her here hers him his how i if in into is it its itself
just let me more most my no nor not now of off on once only or other our ours out over own same she
should so some such than that the their theirs them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your
yours new one two said says like many much may might must per via even still year years often
however well make made get first last time way people according""".split())
_DANGLING = frozenset("this that these those it its they their such but however also".split())
_SMALL_WORDS = frozenset("a an and as at but by for from in of on or the to vs with".split())
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st vs e.g i.e inc ltd jr sr no fig u.s u.k".split())
_BOUNDARY = re.compile(r"([.!?]+[\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_ENDS_SENTENCE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclasses.dataclass(frozen=True)
class _Sentence:
    index: int
    text: str
    stems: frozenset[str]
    words: int


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What one segment is about and which sentences it may draw from."""

    title: str
    keywords: tuple[str, ...]
    pool: tuple[_Sentence, ...]
    summary: str = ""


class ScriptAgent(service.TaskAgent):
    """PSWA: ``POST /weave_script`` → ``script_data`` of Host/Guest segments.

    Args:
        data_dir: Where the agent keeps its task database.
        llm_url: Base URL of an OpenAI-compatible API; ``None`` reads ``PSWA_LLM_URL``, ``""``
            turns the LLM backend off.
        llm_model: Model name (``PSWA_LLM_MODEL``); required with a URL.
        llm_api_key: Bearer token (``PSWA_LLM_API_KEY``); never logged.
        llm_fallback: On an unusable LLM answer, write the template script (``True``) or fail
            the task naming the reason (``False``).
        env: Where ``PSWA_LLM_*`` are read (default ``os.environ``).

    Raises:
        cpoa.errors.ConfigError: The LLM settings are incomplete or malformed.
    """

    name = "PSWA"
    path = "/weave_script"

    def __init__(self, data_dir: Any, *, llm_url: str | None = None,
                 llm_model: str | None = None, llm_api_key: str | None = None,
                 llm_fallback: bool = True, env: Mapping[str, str] | None = None) -> None:
        # Configuration first: a bad setting must fail before any file or thread exists.
        self.llm = llm.configure(llm_url, llm_model, llm_api_key, env=env)
        self.llm_fallback = llm_fallback
        super().__init__(data_dir)

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Returns the cleaned request or raises BadRequest naming the field."""
        topics = validate.array(body, "topics", max_items=MAX_TOPICS, required=False)
        return {"topic": validate.text(body, "topic", max_chars=TOPIC_MAX_CHARS),
                "content": validate.text(body, "content", max_chars=CONTENT_MAX_CHARS),
                "topics": [_topic(t, f"topics[{i}]") for i, t in enumerate(topics)],
                "persona": validate.text(body, "persona", max_chars=PERSONA_MAX_CHARS,
                                         required=False)}

    def run(self, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        """Writes the script with the LLM when configured, else (or as fallback) the template.

        Raises:
            llm.LLMError: The LLM answer was unusable and fallback is off.
        """
        if self.llm is None:
            return _result(weave(request), "template")
        script_id = _script_id(request, f"llm:{self.llm.model}")
        try:
            return _result(llm.write_script(self.llm, request, script_id), "llm")
        except llm.LLMError as exc:
            if not self.llm_fallback:
                raise
            logger.warning("llm script unusable, using template",
                           extra={"agent": self.name, "task_id": task_id, "reason": str(exc)})
            return {**_result(weave(request), "template"), "llm_error": str(exc)[:500]}


def weave(request: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the template backend's ``script_data`` for a cleaned request (deterministic)."""
    seed = _script_id(request, "template")
    sentences = _document(request["content"])
    plans = [_Plan(t["title_suggestion"], tuple(t["keywords"]) or (t["title_suggestion"],),
                   tuple(sentences), t["summary"]) for t in request["topics"]]
    plans = plans or _paragraph_plans(sentences, request["topic"])
    intro, outro = _intro(request, plans), _outro(plans, seed)
    budget = max(MIN_SEGMENT_WORDS, (TARGET_WORDS - _words(intro) - _words(outro)) // len(plans))
    used: set[int] = set()
    middle = [_segment(plan, i, len(plans), budget, used, seed, request["content"])
              for i, plan in enumerate(plans)]
    return {"script_id": seed, "title": _episode_title(request["topic"], seed),
            "segments": [intro, *middle, outro]}


def _result(script_data: dict[str, Any], backend: str) -> dict[str, Any]:
    words = sum(_words(segment) for segment in script_data["segments"])
    return {"status": "success", "script_data": script_data, "word_count": words,
            "backend": backend}


def _topic(value: Any, where: str) -> dict[str, Any]:
    """Cleans one TopicObject; errors name ``topics[i].<field>``."""
    if not isinstance(value, dict):
        raise service.BadRequest(f"{where}: expected an object", field=where)
    try:
        keywords = validate.array(value, "keywords", max_items=MAX_TOPICS)
        if not all(isinstance(k, str) for k in keywords):
            raise service.BadRequest("keywords: expected a list of text", field="keywords")
        summary = value.get("summary") or ""
        if not isinstance(summary, str):
            raise service.BadRequest("summary: expected text", field="summary")
        return {"topic_id": validate.text(value, "topic_id", max_chars=200),
                "title_suggestion": validate.text(value, "title_suggestion", max_chars=300),
                "summary": summary.strip()[:2000],
                "keywords": [k.strip() for k in keywords if k.strip()],
                "relevance_score": validate.number(value, "relevance_score", -1e9, 1e9, 0.0)}
    except service.BadRequest as exc:
        raise service.BadRequest(f"{where}.{exc}", field=f"{where}.{exc.field}") from None


def _document(content: str) -> list[_Sentence]:
    """Splits content into the sentences worth speaking, numbered in reading order."""
    sentences: list[_Sentence] = []
    seen: set[str] = set()  # scraped pages repeat themselves; a script must not
    for paragraph in re.split(r"\n\s*\n", content):
        for text in _split_sentences(" ".join(paragraph.split())):
            text = re.sub(r"\s*\[\d+\]", "", text)  # citation marks do not read aloud
            words = len(text.split())
            if (SENTENCE_WORDS[0] <= words <= SENTENCE_WORDS[1] and _ENDS_SENTENCE.search(text)
                    and "http" not in text and text.lower() not in seen):
                seen.add(text.lower())
                sentences.append(_Sentence(len(sentences), text, _stems(text), words))
    return sentences


def _split_sentences(paragraph: str) -> list[str]:
    parts = _BOUNDARY.split(paragraph) + [""]  # pairs of (text, the punctuation ending it)
    sentences, current = [], ""
    for i in range(0, len(parts), 2):
        current += parts[i] + parts[i + 1]
        last = (current.split() or [""])[-1].lower().rstrip(".")
        if i + 2 < len(parts) and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            current += " "  # "Dr. Smith", "J. Doe": not a sentence end
            continue
        sentences.append(current.strip())
        current = ""
    return [s for s in sentences if s]


def _stems(text: str) -> frozenset[str]:
    """The content words of a text, stemmed (see :func:`_stem`)."""
    return frozenset(_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS)


def _stem(word: str) -> str:
    """Drops a possessive or plural ending, so "panels" and "panel's" match "panel"."""
    word = word.split("'")[0]
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _words(segment: Mapping[str, Any]) -> int:
    return sum(len(line["text"].split()) for line in segment["lines"])


def _clip_words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words[:limit]) + ("..." if len(words) > limit else "")


def _pick(options: Sequence[str], seed: str, *keys: object) -> str:
    """A deterministic choice: the same script always picks the same phrasing."""
    digest = hashlib.sha256("\0".join([seed, *map(str, keys)]).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def _script_id(request: Mapping[str, Any], backend: str) -> str:
    canonical = json.dumps([backend, request["topic"], request["content"], request["topics"],
                            request.get("persona", "")], sort_keys=True)
    return "script-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _paragraph_plans(sentences: list[_Sentence], topic: str) -> list[_Plan]:
    """Two or three segments from consecutive paragraphs, titled by their distinctive words."""
    count = 3 if len(sentences) >= 9 else 2 if len(sentences) >= 2 else 1
    everywhere = _word_counts(sentences)
    taken = set(_stems(topic))  # the episode topic's words say nothing about one part
    plans = []
    for n, group in enumerate(_split_groups(sentences, count), 1):
        here = _word_counts(group)
        # Words frequent here and rare elsewhere name this part best.
        ranked = sorted((w for w in here if _stem(w) not in taken),
                        key=lambda w: (-here[w] ** 2 / everywhere[w], -len(w), w))
        keywords = ranked[:4]
        taken.update(_stem(w) for w in keywords[:2])
        title = " and ".join(w.title() for w in keywords[:2]) or f"Part {n}"
        plans.append(_Plan(title, tuple(keywords) or (title,), tuple(group)))
    return plans


def _split_groups(sentences: list[_Sentence], count: int) -> list[list[_Sentence]]:
    """Cuts the sentences into ``count`` runs of about equal length, in reading order."""
    size = max(1, -(-len(sentences) // count))
    return [sentences[i:i + size] for i in range(0, len(sentences), size)] or [[]]


def _word_counts(sentences: list[_Sentence]) -> collections.Counter[str]:
    return collections.Counter(w.split("'")[0] for s in sentences
                               for w in _WORD.findall(s.text.lower())
                               if len(w) > 3 and w.isalpha() and w not in STOP_WORDS)


def _line(speaker: str, text: str) -> dict[str, str]:
    return {"speaker": speaker, "text": text}


def _intro(request: Mapping[str, Any], plans: list[_Plan]) -> dict[str, Any]:
    persona = _clip_words(request.get("persona", ""), 20).rstrip(".")
    me = f"I'm your host, {persona}" if persona else "I'm your host"
    topic = _clip_words(request["topic"], 20)
    about = (f"today's question is: {topic}" if topic.endswith("?")
             else f"today we're digging into {topic.rstrip('.!')}.")
    host = f"Welcome to the show. {me}, and {about} Joining me is our guest, who has been " \
           f"following this closely."
    guest = f"Thanks for having me. There's a lot to cover, {_span(plans)}."
    return {"segment_title": "Introduction", "lines": [_line(HOST, host), _line(GUEST, guest)]}


def _span(plans: list[_Plan]) -> str:
    """Names the first and last topic (titles with commas make a spoken list of all unclear)."""
    # Inside a sentence "The Solar Boom" reads "the Solar Boom".
    first, last = (re.sub(r"^(The|An?) (?=\S)", lambda m: m[0].lower(), plan.title)
                   for plan in (plans[0], plans[-1]))
    return f"from {first} to {last}" if len(plans) > 1 else f"starting with {first}"


def _outro(plans: list[_Plan], seed: str) -> dict[str, Any]:
    host = f"That's all we have time for. We covered a lot of ground, {_span(plans)}. Any " \
           f"final thoughts for our listeners?"
    farewell = _pick(FAREWELLS, seed, "farewell") + " Thanks for having me."
    return {"segment_title": "Wrap-up", "lines": [
        _line(HOST, host), _line(GUEST, farewell),
        _line(HOST, "And thank you all for listening. Until next time.")]}


def _segment(plan: _Plan, number: int, total: int, budget: int, used: set[int], seed: str,
             content: str) -> dict[str, Any]:
    """One topic's exchanges: a host question, then a guest answer from the content."""
    answers = (_answers(_select(plan, budget, used), plan)
               or [(plan.keywords[0], _fallback(plan, used, content))])
    lines = []
    for j, (keyword, answer) in enumerate(answers):
        lines.append(_line(HOST, _question(plan, keyword, number, total, j, seed)))
        lines.append(_line(GUEST, _adapt(answer, seed, number, j)))
    return {"segment_title": plan.title, "lines": lines}


def _score(sentence: _Sentence, keywords: list[frozenset[str]], title: frozenset[str]) -> float:
    """Keyword overlap: a keyword counts fully when all its words appear, partly otherwise."""
    hits = sum(len(k & sentence.stems) / len(k) for k in keywords if k)
    # "That predictability is..." needs the sentence before it: prefer self-contained ones.
    dangling = sentence.text.split()[0].lower().strip(",") in _DANGLING
    return (hits + 0.5 * len(title & sentence.stems)) * (0.6 if dangling else 1.0)


def _select(plan: _Plan, budget: int, used: set[int]) -> list[_Sentence]:
    """The most relevant unused sentences that fill the answer budget, in reading order."""
    keywords, title = [_stems(k) for k in plan.keywords], _stems(plan.title)
    scored = [(-_score(s, keywords, title), s.index, s) for s in plan.pool if s.index not in used]
    ranked = [s for score, _, s in sorted(scored) if score < 0]
    target, chosen, words = budget * ANSWER_SHARE, list[_Sentence](), 0
    for s in ranked:
        if words >= 0.85 * target:
            break
        if not chosen or words + s.words <= target:
            chosen.append(s)
            words += s.words
    used.update(s.index for s in chosen)  # a later segment must not repeat these
    return sorted(chosen, key=lambda s: s.index)


def _answers(chosen: list[_Sentence], plan: _Plan) -> list[tuple[str, str]]:
    """Groups adjacent sentences into answers, each with the keyword the host asks about."""
    groups: list[list[_Sentence]] = []
    for s in chosen:
        if (groups and groups[-1][-1].index + 1 == s.index
                and sum(g.words for g in groups[-1]) + s.words <= ANSWER_MAX_WORDS):
            groups[-1].append(s)
        else:
            groups.append([s])
    asked: list[str] = []
    for group in groups:
        asked.append(_keyword_for(group, plan, asked))
    return [(k, " ".join(s.text for s in group)) for k, group in zip(asked, groups)]


def _keyword_for(group: list[_Sentence], plan: _Plan, asked: list[str]) -> str:
    """The keyword these sentences match best, preferring one the host has not asked about."""
    stems = frozenset().union(*(s.stems for s in group))
    return min(plan.keywords, key=lambda k: (-len(_stems(k) & stems) / max(1, len(_stems(k))),
                                             k in asked, plan.keywords.index(k)))


def _fallback(plan: _Plan, used: set[int], content: str) -> str:
    """An answer when no sentence matches: the summary, an unused sentence, or the opening."""
    unused = next((s for s in plan.pool if s.index not in used), None)
    if plan.summary or unused is None:
        return plan.summary or _clip_words(content, 40)
    used.add(unused.index)
    return unused.text


def _question(plan: _Plan, keyword: str, number: int, total: int, exchange: int,
              seed: str) -> str:
    # Rotating from a per-segment start keeps consecutive questions different.
    start = QUESTIONS.index(_pick(QUESTIONS, seed, "question", number))
    ask = QUESTIONS[(start + exchange) % len(QUESTIONS)].format(k=keyword)
    if exchange:
        return _pick(REACTIONS, seed, "reaction", number, exchange) + ask
    lead = ("First up: {t}." if number == 0 else "Finally: {t}." if number == total - 1
            else _pick(LEADS, seed, "lead", number))
    return f"{lead.format(t=plan.title)} {ask}"


def _adapt(answer: str, seed: str, number: int, exchange: int) -> str:
    """Gives the guest a spoken opener; only a common first word is lower-cased after one."""
    first, _, rest = answer.partition(" ")
    openers = OPENERS + COMMA_OPENERS if first.lower() in STOP_WORDS - {"i"} else OPENERS
    opener = _pick(openers, seed, "opener", number, exchange)
    return opener + (f"{first.lower()} {rest}" if opener.endswith(", ") else answer)


def _episode_title(topic: str, seed: str) -> str:
    """The topic in title case (acronyms and names kept), with a varied subtitle."""
    words = _clip_words(topic.split("\n")[0], 10).split()
    title = " ".join(w if any(c.isupper() for c in w) or (i and w in _SMALL_WORDS)
                     else re.sub(r"(?<![\w'])[a-z]", lambda m: m[0].upper(), w)
                     for i, w in enumerate(words))
    return title if title.endswith(("?", "!", "...")) else \
        re.sub(r"(?<![A-Z])\.$", "", title) + _pick(TITLE_SUFFIXES, seed, "title")
