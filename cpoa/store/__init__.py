"""The only package that talks to PostgreSQL (psycopg, psycopg_pool).

- :mod:`cpoa.store.postgres`: :class:`PostgresStore`, one method per business operation: the
  workflows' own writes here, with :mod:`cpoa.store.reads` (what people and monitors read) and
  :mod:`cpoa.store.upkeep` (the UI event relay and prune) mixed in;
- :mod:`cpoa.store.rows`: rows to and from domain objects, the parameters of ``record_progress`` and ``make_transition``;
- :mod:`cpoa.store.connection`: connection strings, driver errors turned into the CPOA error
  tree, and the LISTEN connection.

The SQL itself is in :mod:`cpoa.sql` (``queries.sql``, and ``schema.sql`` from db/).
"""

from cpoa.store.connection import (
    CONNECT_TIMEOUT_S,
    EVENTS_CHANNEL,
    WAKE_CHANNEL,
    Listener,
    conninfo,
    wrap_db_errors,
)
from cpoa.store.postgres import PostgresStore
from cpoa.store.rows import TASK_NAMES

__all__ = ["CONNECT_TIMEOUT_S", "EVENTS_CHANNEL", "TASK_NAMES", "WAKE_CHANNEL", "Listener",
           "PostgresStore", "conninfo", "wrap_db_errors"]
