"""Test plugins: a real PostgreSQL (configured or embedded) and real HTTP agents."""

from __future__ import annotations

pytest_plugins = ["tests.fix_db", "tests.fix_agents", "tests.fix_gateway", "tests.fix_browser"]
