"""The SQL of CPOA: the schema (db/schema.sql, packaged as cpoa/sql/schema.sql) and named queries."""

from __future__ import annotations

import functools
import importlib.resources
import re

_NAME = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_FRAGMENT = re.compile(r"@([a-z_]+)@")
_VERSION = re.compile(r"^INSERT INTO cpoa_schema_version \(version\) VALUES \((\d+)\)$",
                      re.MULTILINE)


def read(filename: str) -> str:
    """Returns the text of one packaged SQL file."""
    return importlib.resources.files(__package__).joinpath(filename).read_text("utf-8")


def parse(text: str) -> dict[str, str]:
    """Splits a queries file into {name: statement}; each block starts with ``-- name --``.

    ``@name@`` in a block stands for the block ``name`` (a fragment written once and used by
    several statements). Whole-line comments and indentation are dropped: a statement longer
    than psycopg's query cache holds (4 kB, ``MAX_CACHED_STATEMENT_LENGTH``) is parsed again on
    every call (make_transition, at 4.3 kB with indentation: worker CPU per transition +10-20 %
    in a bench/run.py A/B).
    """
    parts = _NAME.split(text)
    blocks = {name: _uncommented(body) for name, body in zip(parts[1::2], parts[2::2])}
    return {name: _FRAGMENT.sub(lambda used: blocks[used.group(1)], body)
            for name, body in blocks.items()}


def _uncommented(body: str) -> str:
    return "\n".join(line.strip() for line in body.strip().splitlines()
                     if not line.lstrip().startswith("--"))


@functools.cache
def queries() -> dict[str, str]:
    """Returns the named runtime statements, parsed once."""
    return parse(read("queries.sql"))


def schema() -> str:
    """Returns the DDL, safe to apply any number of times."""
    return read("schema.sql")


@functools.cache
def schema_version() -> int:
    """Returns the version the packaged schema writes to ``cpoa_schema_version``."""
    found = _VERSION.search(schema())
    if found is None:  # a broken package, not a runtime condition
        raise RuntimeError("schema.sql sets no cpoa_schema_version")
    return int(found.group(1))
