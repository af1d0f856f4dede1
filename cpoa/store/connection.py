"""Connections: the connection string, driver errors turned into CPOA's, the LISTEN connection."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg import conninfo as pg_conninfo

from cpoa import defaults, errors, logs
from cpoa.settings import DatabaseSettings

WAKE_CHANNEL = "cpoa_due"
EVENTS_CHANNEL = "cpoa_events"
"""A trigger notifies it of every history row: ``<workflow_id>:<event_id>`` (dashboards)."""
CONNECT_TIMEOUT_S = 10
LIVENESS_KEY_BITS = 62
"""A liveness key is a random non-negative bigint (its two halves read back as oids)."""


def keepalive_kwargs() -> dict[str, Any]:
    """libpq's TCP keepalives: a connection to a server that vanished without closing it
    (a machine gone, a cut cable) fails within about idle + interval * count seconds instead
    of hanging until the kernel gives up (minutes)."""
    return {"keepalives": 1, "keepalives_idle": int(defaults.TCP_KEEPALIVE_IDLE_S),
            "keepalives_interval": int(defaults.TCP_KEEPALIVE_INTERVAL_S),
            "keepalives_count": defaults.TCP_KEEPALIVE_COUNT,
            "tcp_user_timeout": int(defaults.TCP_USER_TIMEOUT_S * 1000)}


def server_keepalive_options(dsn: str) -> str:
    """The connection's ``options`` with the server's side of the keepalives added: the
    server ends the session of a client that vanished (and so releases its advisory locks)
    within the same bound. Options already in ``dsn`` are kept."""
    given = pg_conninfo.conninfo_to_dict(dsn).get("options") or ""
    ours = (f"-c tcp_keepalives_idle={int(defaults.TCP_KEEPALIVE_IDLE_S)}"
            f" -c tcp_keepalives_interval={int(defaults.TCP_KEEPALIVE_INTERVAL_S)}"
            f" -c tcp_keepalives_count={defaults.TCP_KEEPALIVE_COUNT}"
            f" -c tcp_user_timeout={int(defaults.TCP_USER_TIMEOUT_S * 1000)}")
    return f"{given} {ours}".strip()


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

    With ``liveness``, its connection also vouches for its process: it holds a session-level
    advisory lock on a random key for as long as it is open. The process's leases carry that
    key; when the process dies, PostgreSQL ends the session, the lock goes, and the leases are
    recoverable at once (``cpoa_lease_live`` in schema.sql). Each (re)connection takes a new
    key, so leases taken under a lost connection are never vouched for again.

    Attributes:
        connections: How many times it has (re)connected; notifications sent while it was
            not connected are lost, so a caller that counts on them reads what it missed.
        liveness_key: The key held now; None while not connected (or without ``liveness``).
    """

    def __init__(self, dsn: str, secrets: Iterable[str], channel: str = WAKE_CHANNEL, *,
                 liveness: bool = False) -> None:
        self.dsn = dsn
        self.secrets = tuple(secrets)
        self.channel = channel
        self.liveness = liveness
        self.connections = 0
        self.conn: psycopg.Connection | None = None
        self.liveness_key: int | None = None
        self._lock = threading.RLock()  # a worker's claim loop may connect it too

    def connect(self) -> None:
        """Connects (if not connected), LISTENs and, with ``liveness``, takes a new key.

        Raises:
            StoreError: the connection failed.
        """
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            return
        with wrap_db_errors(self.secrets):
            try:
                self.conn = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                    options=server_keepalive_options(self.dsn), **keepalive_kwargs())
                self.conn.execute(psycopg.sql.SQL("LISTEN {}").format(
                    psycopg.sql.Identifier(self.channel)))
                if self.liveness:
                    key = secrets.randbits(LIVENESS_KEY_BITS)
                    self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    self.liveness_key = key
                self.connections += 1
            except psycopg.Error:
                self.close()
                raise

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
        self.connect()
        with wrap_db_errors(self.secrets):
            try:
                got = [n.payload for n in self.conn.notifies(timeout=max(0.0, timeout),
                                                             stop_after=1)]
                if got:  # drain what is already there, without waiting again
                    got += [n.payload for n in self.conn.notifies(timeout=0.0)]
                return got
            except psycopg.Error:
                self.close()
                raise

    def close(self) -> None:
        """Closes the connection (and gives up the liveness key with it)."""
        with self._lock:
            self.liveness_key = None
            if self.conn is not None:
                self.conn.close()
                self.conn = None
