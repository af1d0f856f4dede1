"""The named-query file's parser (cpoa.sql.parse): blocks, dropped comments, fragments."""

from __future__ import annotations

from cpoa import sql


def test_parse__blocks_by_name_without_whole_line_comments():
    """Each ``-- name --`` starts a block; whole-line comments are dropped."""
    parsed = sql.parse("-- one --\n-- a comment\nSELECT 1;\n\n-- two --\nSELECT 2; -- kept\n")
    assert parsed == {"one": "SELECT 1;", "two": "SELECT 2; -- kept"}


def test_parse__a_fragment_is_written_where_it_is_named():
    """``@name@`` stands for the block ``name`` in every block that uses it."""
    parsed = sql.parse("-- piece --\nSELECT x FROM t\n\n"
                       "-- a --\nWITH p AS (@piece@) SELECT * FROM p;\n\n"
                       "-- b --\nSELECT count(*) FROM (@piece@) q;\n")
    assert parsed["a"] == "WITH p AS (SELECT x FROM t) SELECT * FROM p;"
    assert parsed["b"] == "SELECT count(*) FROM (SELECT x FROM t) q;"


def test_queries__the_step_writes_lock_the_row_first():
    """record_progress and make_transition both begin with the locked_step fragment, pasted."""
    queries = sql.queries()
    for name in ("record_progress", "make_transition"):
        assert "@" not in queries[name]
        assert queries["locked_step"] in queries[name]
        assert "FOR UPDATE" in queries[name].split("moved AS")[0]


def test_queries__every_statement_fits_psycopg_s_query_cache():
    """A statement longer than psycopg caches is parsed again on every call: make_transition
    at 4.3 kB (with its indentation) cost 10-20 % more worker CPU per transition."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH
    sizes = {name: len(text.encode()) for name, text in sql.queries().items()}
    assert max(sizes.values()) <= MAX_CACHED_STATEMENT_LENGTH, sizes


def test_parse__indentation_is_dropped():
    """Leading spaces carry no meaning in SQL: they are dropped, line by line."""
    assert sql.parse("-- one --\nSELECT 1\n    FROM t\n        WHERE x;\n") == {
        "one": "SELECT 1\nFROM t\nWHERE x;"}
