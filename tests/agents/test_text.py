"""The reference agents' text toolkit: tokens, sentences, TF-IDF ranking (pure functions)."""

from __future__ import annotations

import math

import pytest

from cpoa_agents import text


def test_tokenize__lowercases_unicode_words_and_drops_numbers() -> None:
    """Words in any script are kept lower-cased; numbers-only tokens and underscores go."""
    assert text.tokenize("In 1966 the Café Naïve sold 3 CO2 kits, 東京 too_far") == [
        "in", "the", "café", "naïve", "sold", "co2", "kits", "東京", "too", "far"]


def test_tokenize__keeps_inner_apostrophes_and_drops_possessives() -> None:
    """"don't" stays one word and "bird's" (either apostrophe) becomes "bird"."""
    assert text.tokenize("Don't touch the bird's nest or the bee\u2019s") == [
        "don't", "touch", "the", "bird", "nest", "or", "the", "bee"]


@pytest.mark.parametrize(("word", "expected"), [
    ("bees", "bee"), ("colonies", "colony"), ("volcanoes", "volcano"), ("boxes", "box"),
    ("classes", "class"), ("analysis", "analysis"), ("famous", "famous"), ("gas", "gas"),
    ("tidal", "tidal"), ("hives", "hive")])
def test_stem__folds_plurals_only(word: str, expected: str) -> None:
    """Plural endings fold onto the singular; words that merely end in s are left alone."""
    assert text.stem(word) == expected


def test_terms__drop_stop_words_and_stem() -> None:
    """Content terms skip function words and fold plurals."""
    assert text.terms("The bees are in their hives and they make honey") == [
        "bee", "hive", "honey"]


def test_stop_words__is_a_frozenset_of_common_words() -> None:
    """The list is immutable, lower-case and holds the usual function words."""
    assert isinstance(text.STOP_WORDS, frozenset) and len(text.STOP_WORDS) >= 150
    assert {"the", "and", "of", "which", "however"} <= text.STOP_WORDS
    assert all(w == w.lower() for w in text.STOP_WORDS)


def test_split_sentences__respects_abbreviations_decimals_and_initials() -> None:
    """"Dr.", "e.g.", "U.S.", initials and 3.14 do not end a sentence; ! and ? do."""
    sample = ("Dr. Smith measured 3.14 metres, e.g. the width of a gate. Then he left! "
              "Did J. R. Hartley write it? The U.S. Navy agreed.")
    assert text.split_sentences(sample) == [
        "Dr. Smith measured 3.14 metres, e.g. the width of a gate.", "Then he left!",
        "Did J. R. Hartley write it?", "The U.S. Navy agreed."]


def test_split_sentences__title_lines_and_paragraphs_stand_alone() -> None:
    """A heading line and each paragraph end a sentence; soft-wrapped lines are re-joined."""
    sample = ("Tidal Power\n\nThe sea rises\nand falls. It is predictable.\n\n"
              "\u201cYes,\u201d she said.")
    assert text.split_sentences(sample) == [
        "Tidal Power", "The sea rises and falls.", "It is predictable.",
        "\u201cYes,\u201d she said."]


def test_split_sentences__lower_case_after_stop_does_not_split() -> None:
    """A full stop followed by a lower-case word (an abbreviation we do not know) stays."""
    assert text.split_sentences("It costs approx. ten pounds. Fine.") == [
        "It costs approx. ten pounds.", "Fine."]


def test_idf__rarer_terms_weigh_more() -> None:
    """A term in one document out of three outweighs a term in all three."""
    weights = text.idf([["tide", "sea"], ["sea"], ["sea", "wind"]])
    assert weights["tide"] > weights["sea"]
    assert weights["sea"] == pytest.approx(1.0)


def test_vector__is_unit_length_and_cosine_is_symmetric() -> None:
    """Vectors are normalised; cosine of a vector with itself is 1 and order does not matter."""
    weights = text.idf([["tide", "sea"], ["sea", "wind"]])
    a = text.vector({"tide": 2, "sea": 1}, weights)
    b = text.vector({"sea": 1, "wind": 1}, weights)
    assert math.isclose(sum(v * v for v in a.values()), 1.0)
    assert text.cosine(a, a) == pytest.approx(1.0)
    assert text.cosine(a, b) == pytest.approx(text.cosine(b, a))
    assert text.cosine(a, {}) == 0.0


def test_rank__on_topic_documents_first_and_titles_count_more() -> None:
    """The document about the query ranks first; a title match beats a passing mention."""
    documents = [("Bees on the roof", "Hives need water and shelter from the wind."),
                 ("Tidal power", "Turbines turn in the tidal stream between islands."),
                 ("Coastal walks", "A walk past the harbour, where tidal flats shine.")]
    ranked = text.rank("tidal power turbines", documents)
    assert [i for i, _ in ranked] == [1, 2, 0]
    assert ranked[0][1] > ranked[1][1] > 0 == ranked[2][1]


def test_rank__ties_keep_document_order() -> None:
    """Documents unrelated to the query keep their original order (deterministic)."""
    ranked = text.rank("volcano", [("a", "one"), ("b", "two"), ("c", "three")])
    assert ranked == [(0, 0.0), (1, 0.0), (2, 0.0)]


def test_related__keeps_documents_near_the_best_score() -> None:
    """Documents under half the best score are dropped, then the limit applies."""
    assert text.related([(2, 0.4), (0, 0.3), (1, 0.1)], 5) == [2, 0]
    assert text.related([(2, 0.4), (0, 0.3), (1, 0.25)], 2) == [2, 0]


def test_related__nothing_related_keeps_the_first_ones() -> None:
    """When every score is zero, the first documents are kept so there is content."""
    assert text.related([(0, 0.0), (1, 0.0), (2, 0.0)], 2) == [0, 1]


def test_surface_forms__shows_the_most_common_form() -> None:
    """A term is shown as the word the text uses most ("bees", not the stem "bee")."""
    assert text.surface_forms(["bees and bees, one bee"])["bee"] == "bees"


@pytest.mark.parametrize(("value", "expected"), [
    ("Tidal Power!", "tidal-power"), ("  Café  crème ", "cafe-creme"), ("a--b", "a-b")])
def test_slugify__ascii_slugs(value: str, expected: str) -> None:
    """Slugs are lower-case ASCII words joined by hyphens."""
    assert text.slugify(value) == expected


def test_slugify__non_latin_text_gets_a_stable_hash_slug() -> None:
    """Text without ASCII letters still yields a stable, non-empty, distinct slug."""
    assert text.slugify("東京") == text.slugify("東京") != text.slugify("大阪")
    assert text.slugify("東京", "topic").startswith("topic-")


def test_clip__cuts_at_a_word_boundary() -> None:
    """Long text is cut before the limit at a space and marked with an ellipsis."""
    assert text.clip("one two three four", 12) == "one two\u2026"
    assert text.clip("short", 12) == "short"


def test_title_case__joins_words_readably() -> None:
    """Keywords become "A, B and C" with capitals."""
    assert text.title_case(["honey", "bees", "hives"]) == "Honey, Bees and Hives"
    assert text.title_case(["tides"]) == "Tides"


def test_article_block__title_then_paragraphs_separated_by_blank_lines() -> None:
    """The harvested-content format splits back into the title and the paragraphs."""
    block = text.article_block("Tidal  Power", ["First  paragraph.", "", "Second one."])
    assert block == "Tidal Power\n\nFirst paragraph.\n\nSecond one."
    assert text.blocks(block) == ["Tidal Power", "First paragraph.", "Second one."]
