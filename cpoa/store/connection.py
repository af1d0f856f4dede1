"""Connections: the connection string, driver errors turned into CPOA's, the LISTEN connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import psycopg
import psycopg_pool
from psycopg import conninfo as pg_conninfo

from cpoa import errors, logs
from cpoa.settings import DatabaseSettings

WAKE_CHANNEL = "cpoa_due"
EVENTS_CHANNEL = "cpoa_events"
"""A trigger notifies it of every history row: ``<workflow_id>:<event_id>`` (dashboards)."""
CONNECT_TIMEOUT_S = 10


def conninfo(database: DatabaseSettings, embedded_url: str = "") -> str:
    """Returns a libpq connection string for the configured (or embedded) server."""
    if database.embedded:
        return embedded_url
    extra = {"host": database.host, "port": database.port if database.host else None,
             "user": database.user, "password": database.password, "dbname": database.dbname}
    try:
        return pg_conninfo.make_conninfo(database.url, **{k: v for k, v in extra.items() if v})
    except psycopg.ProgrammingError:  # its message may quote the password: not shown
        raise errors.ConfigError("CPOA_DATABASE_URL: not a valid connection string",
                                 variable="CPOA_DATABASE_URL") from None


@contextlib.contextmanager
def wrap_db_errors(secrets: Iterable[str] = ()) -> Iterator[None]:
    """Turns driver errors into the CPOA tree, with no secret in the message."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise errors.DuplicateWorkflow(_clean(exc, secrets)) from exc
    except (psycopg.errors.SerializationFailure, psycopg.errors.LockNotAvailable,
            psycopg.errors.DeadlockDetected) as exc:
        raise errors.StoreBusy(_clean(exc, secrets)) from exc
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise errors.StoreError(_clean(exc, secrets)) from exc


def _clean(exc: BaseException, secrets: Iterable[str]) -> str:
    return logs.redact(f"database error: {type(exc).__name__}: {exc}".strip(), secrets)


class Listener:
    """LISTENs on one channel: the wake-up channel, so that an idle worker sleeps instead of
    polling, or :data:`EVENTS_CHANNEL`, which feeds the dashboard's live streams.

    Attributes:
        connections: How many times it has (re)connected; notifications sent while it was
            not connected are lost, so a caller that counts on them reads what it missed.
    """

    def __init__(self, dsn: str, secrets: Iterable[str], channel: str = WAKE_CHANNEL) -> None:
        self.dsn = dsn
        self.secrets = tuple(secrets)
        self.channel = channel
        self.connections = 0
        self.conn: psycopg.Connection | None = None

    def wait(self, timeout: float) -> bool:
        """Blocks until a notification or the timeout; True when woken by a notification.

        Raises:
            StoreError: the connection failed (the next call reconnects).
        """
        return bool(self.receive(timeout))

    def receive(self, timeout: float) -> list[str]:
        """Blocks until a notification or the timeout; returns the payloads that came (the
        first one and every one already received with it), oldest first.

        Raises:
            StoreError: the connection failed (the next call reconnects).
        """
        with wrap_db_errors(self.secrets):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.dsn, autocommit=True)
                    self.conn.execute(psycopg.sql.SQL("LISTEN {}").format(
                        psycopg.sql.Identifier(self.channel)))
                    self.connections += 1
                got = [n.payload for n in self.conn.notifies(timeout=max(0.0, timeout),
                                                             stop_after=1)]
                if got:  # drain what is already there, without waiting again
                    got += [n.payload for n in self.conn.notifies(timeout=0.0)]
                return got
            except psycopg.Error:
                self.close()
                raise

    def close(self) -> None:
        """Closes the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
