"""A non-editable install carries the schema: one source (db/schema.sql), packaged as data."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

import pytest

from cpoa.testing.cli import ROOT


@pytest.mark.slow
def test_wheel__packages_the_canonical_schema(tmp_path):
    """The built wheel holds cpoa/sql/schema.sql byte for byte equal to db/schema.sql."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), ROOT], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("cpoa-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        packaged = archive.read("cpoa/sql/schema.sql")
        assert b"-- name --" not in packaged
        assert archive.read("cpoa/sql/queries.sql")
    assert packaged == (pathlib.Path(ROOT) / "db" / "schema.sql").read_bytes()
