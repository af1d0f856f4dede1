"""The SQL of CPOA: the schema (db/schema.sql, packaged as cpoa/sql/schema.sql) and named queries."""

from __future__ import annotations

import functools
import importlib.resources
import re

_NAME = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def read(filename: str) -> str:
    """Returns the text of one packaged SQL file."""
    return importlib.resources.files(__package__).joinpath(filename).read_text("utf-8")


def parse(text: str) -> dict[str, str]:
    """Splits a queries file into {name: statement}; each block starts with ``-- name --``."""
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


@functools.cache
def queries() -> dict[str, str]:
    """Returns the named runtime statements, parsed once."""
    return parse(read("queries.sql"))


def schema() -> str:
    """Returns the DDL, safe to apply any number of times."""
    return read("schema.sql")
