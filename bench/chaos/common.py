"""Shared plumbing of the fault harness: a fresh database per scenario, timing, JSON lines."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Mapping

from cpoa.testing import databases


@dataclasses.dataclass
class Context:
    """What every scenario gets: an administrative DSN and a scratch folder.

    Attributes:
        server_dsn: Connection string of a server where databases may be created and dropped.
        scratch: A folder the scenario may fill; removed after the run.
        quick: True for the short version (the test suite's); False for the full figures.
    """

    server_dsn: str
    scratch: pathlib.Path
    quick: bool = False

    def database(self) -> contextlib.AbstractContextManager[str]:
        """A fresh database with the schema applied; dropped afterwards."""
        return databases.database(self.server_dsn, schema=True, prefix="cpoa_chaos_")


def server(dsn: str | None) -> contextlib.AbstractContextManager[str]:
    """The given server, CPOA_TEST_DATABASE_URL, or an embedded one in a throwaway folder."""
    return databases.database_server(dsn, prefix="cpoa-chaos-pg-")



def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return round(ordered[index], 3)


def non_default_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of a worker environment that change a CPOA setting from its default.

    Each is tried alone against an empty environment; URLs, the database and credentials are
    left out. Every scenario prints these with its figures, so no figure measured with a
    shortened lease or interval passes for one with the defaults.
    """
    from cpoa import settings as settings_module
    base = settings_module.from_env({})
    changed = {}
    for name, value in sorted(env.items()):
        if not name.startswith(TUNING_PREFIXES) or name.endswith("_URL") or "PASSWORD" in name:
            continue
        try:
            if settings_module.from_env({name: value}) != base:
                changed[name] = value
        except Exception:  # noqa: BLE001 -- not a setting CPOA reads alone
            continue
    return _collapse_polling(changed)


TUNING_PREFIXES = ("CPOA_", "DB_POOL_", "IDEMPOTENCY_")


def _collapse_polling(changed: dict[str, str]) -> dict[str, str]:
    """``CPOA_<AGENT>_POLLING_…`` set alike for every agent, shown once as ``<AGENT>``."""
    from cpoa.settings import POLLED_AGENTS
    for what in ("INTERVAL", "TIMEOUT"):
        names = [f"CPOA_{a}_POLLING_{what}_SECONDS" for a in POLLED_AGENTS]
        values = {changed.get(n) for n in names}
        if len(values) == 1 and None not in values:
            for n in names:
                del changed[n]
            changed[f"CPOA_<AGENT>_POLLING_{what}_SECONDS"] = values.pop()
    return changed
