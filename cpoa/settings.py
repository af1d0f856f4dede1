"""Configuration: the environment variables of the agent contract §6, validated once."""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from cpoa import defaults, errors

_CONNINFO_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")

POLLED_AGENTS = ("WCHA", "TDA", "SCA", "PSWA", "VFA", "IGA")
"""Agents driven by submit + poll; ASF is notified with one request."""


@dataclasses.dataclass(frozen=True)
class AgentSettings:
    """Where an agent lives and how long CPOA waits for it.

    Args:
        name: The agent's short name, e.g. ``"PSWA"``.
        base_url: Scheme, host and port; endpoint paths are appended.
        poll_interval_s: Pause between two status polls.
        poll_timeout_s: Longest a step may take, counted from its first submit.
        max_in_flight: Tasks submitted to the agent and not finished, across every worker,
            at most (``CPOA_<AGENT>_MAX_IN_FLIGHT``); None: no limit.
        rate_limit: Submits per second to the agent, across every worker, at most
            (``CPOA_<AGENT>_RATE_LIMIT``); None: no limit.
        rate_burst: Submits that may go at once within that rate (``CPOA_<AGENT>_RATE_BURST``).
    """

    name: str
    base_url: str
    poll_interval_s: float
    poll_timeout_s: float
    max_in_flight: int | None = None
    rate_limit: float | None = None
    rate_burst: int = defaults.RATE_BURST


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """How to reach PostgreSQL; ``url`` and ``host`` both empty means the embedded server."""

    url: str = dataclasses.field(default="", repr=False)
    host: str = ""
    port: int = defaults.DB_PORT
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    dbname: str = ""
    pool_min: int = defaults.DB_POOL_MIN_CONN
    pool_max: int = defaults.DB_POOL_MAX_CONN

    @property
    def embedded(self) -> bool:
        """True when no server is configured and CPOA starts its own."""
        return not (self.url or self.host or self.user or self.dbname)

    def display(self, embedded_data_dir: str = "") -> str:
        """Says which server this is, without its password (``user@host:port/dbname``)."""
        if self.embedded:
            return f"embedded PostgreSQL in {embedded_data_dir or 'the per-user data folder'}"
        if "://" in self.url:
            parts = urllib.parse.urlsplit(self.url)
            netloc = parts.netloc.rpartition("@")[2]
            user = f"{parts.username}@" if parts.username else ""
            return urllib.parse.urlunsplit((parts.scheme, user + netloc, parts.path, "", ""))
        if self.url:
            return _CONNINFO_PASSWORD.sub("password=***", self.url)
        return f"{self.user or '(default user)'}@{self.host}:{self.port}/{self.dbname}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log or an error message."""
        found = [self.password] if self.password else []
        if "://" in self.url:
            password = urllib.parse.urlsplit(self.url).password
            if password:
                found += [password, urllib.parse.unquote(password)]
        else:
            found += [m.strip("'") for m in _CONNINFO_PASSWORD.findall(self.url)]
        return tuple(found)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything CPOA reads from the environment; build it with :func:`from_env`."""

    database: DatabaseSettings
    agents: Mapping[str, AgentSettings]
    asf_notification_url: str
    asf_ui_update_url: str
    asf_notify_timeout_s: float = defaults.ASF_NOTIFY_TIMEOUT_S
    retry_count: int = defaults.SERVICE_RETRY_COUNT
    retry_backoff_factor: float = defaults.SERVICE_RETRY_BACKOFF_FACTOR
    idempotency_lock_timeout_s: float = defaults.IDEMPOTENCY_LOCK_TIMEOUT_S
    lease_ttl_s: float = defaults.LEASE_TTL_S
    max_recovery_attempts: int = defaults.MAX_RECOVERY_ATTEMPTS
    max_response_bytes: int = defaults.MAX_RESPONSE_BYTES
    sweep_interval_s: float = defaults.SWEEP_INTERVAL_S
    worker_concurrency: int = defaults.WORKER_CONCURRENCY
    embedded_data_dir: str = ""
    api_token: str = dataclasses.field(default="", repr=False)
    """CPOA_API_TOKEN: when set, every mutating gateway call needs it as a bearer token."""
    review_scripts: bool = False
    """CPOA_REVIEW_SCRIPTS: podcasts started without a ``review`` field wait for a reviewer."""
    review_timeout_s: float = defaults.REVIEW_TIMEOUT_S
    bulk_batch_size: int = defaults.BULK_BATCH_SIZE
    """CPOA_REVIEW_TIMEOUT_SECONDS: a script unreviewed this long fails its workflow."""
    callback_base_url: str = ""
    """CPOA_CALLBACK_BASE_URL: the gateway's base URL as agents reach it; when set, every
    submit carries an ``X-Callback-URL`` on it. Empty: no callbacks, polling only."""
    callback_secret: str = dataclasses.field(default="", repr=False)
    """CPOA_CALLBACK_SECRET: signs the callback URLs; empty: one generated and stored in the
    database on first use (table cpoa_secrets)."""
    progress_event_interval_s: float = defaults.PROGRESS_EVENT_INTERVAL_S
    """CPOA_PROGRESS_EVENT_INTERVAL_SECONDS: least time between two generation_progress UI
    events of one task (0: one per change)."""

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log or an error message."""
        return (*self.database.secrets,
                *(s for s in (self.api_token, self.callback_secret) if s))

    def agent(self, name: str) -> AgentSettings:
        """Returns the settings of one polled agent by short name."""
        return self.agents[name]

    def replace(self, **changes: object) -> Settings:
        """Returns a copy with some fields changed (tests shorten leases this way)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _asf(reader: EnvReader) -> dict[str, Any]:
    """ASF's settings: where it is notified and sent UI events, and how long it is tried."""
    asf = f"http://localhost:{defaults.AGENT_PORTS['ASF']}"
    return {
        "asf_notification_url": reader.url("ASF_NOTIFICATION_URL",
                                           f"{asf}/asf/internal/notify_new_audio"),
        "asf_ui_update_url": reader.url("CPOA_ASF_SEND_UI_UPDATE_URL",
                                        f"{asf}/asf/internal/send_ui_update"),
        "asf_notify_timeout_s": reader.number("CPOA_ASF_NOTIFY_TIMEOUT_SECONDS",
                                              defaults.ASF_NOTIFY_TIMEOUT_S, positive=True),
    }


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Reads and validates the configuration.

    Args:
        env: The environment to read; ``os.environ`` by default.

    Returns:
        The validated settings.

    Raises:
        ConfigError: naming the first variable whose value is unusable.
    """
    reader = EnvReader(os.environ if env is None else env)
    return Settings(
        database=_database(reader),
        agents={name: _agent(reader, name) for name in POLLED_AGENTS},
        **_asf(reader),
        retry_count=reader.integer("CPOA_SERVICE_RETRY_COUNT", defaults.SERVICE_RETRY_COUNT,
                                   minimum=1),
        retry_backoff_factor=reader.number("CPOA_SERVICE_RETRY_BACKOFF_FACTOR",
                                           defaults.SERVICE_RETRY_BACKOFF_FACTOR),
        idempotency_lock_timeout_s=reader.number("IDEMPOTENCY_LOCK_TIMEOUT_SECONDS",
                                                 defaults.IDEMPOTENCY_LOCK_TIMEOUT_S),
        lease_ttl_s=reader.number("CPOA_LEASE_TTL_SECONDS", defaults.LEASE_TTL_S, positive=True),
        max_recovery_attempts=reader.integer("CPOA_MAX_RECOVERY_ATTEMPTS",
                                             defaults.MAX_RECOVERY_ATTEMPTS, minimum=1),
        max_response_bytes=reader.integer("CPOA_MAX_RESPONSE_BYTES",
                                          defaults.MAX_RESPONSE_BYTES, minimum=1024),
        sweep_interval_s=reader.number("CPOA_SWEEP_INTERVAL_SECONDS", defaults.SWEEP_INTERVAL_S,
                                       positive=True),
        worker_concurrency=reader.integer("CPOA_WORKER_CONCURRENCY",
                                          defaults.WORKER_CONCURRENCY, minimum=1),
        embedded_data_dir=reader.text("CPOA_EMBEDDED_DATA_DIR", ""),
        api_token=reader.text("CPOA_API_TOKEN", ""),
        **_review(reader),
        callback_base_url=reader.optional_url("CPOA_CALLBACK_BASE_URL").rstrip("/"),
        callback_secret=_callback_secret(reader),
        progress_event_interval_s=reader.number("CPOA_PROGRESS_EVENT_INTERVAL_SECONDS",
                                                defaults.PROGRESS_EVENT_INTERVAL_S),
    )


def _review(reader: EnvReader) -> dict[str, object]:
    """The review gate's and bulk actions' settings (CPOA_REVIEW_SCRIPTS,
    CPOA_REVIEW_TIMEOUT_SECONDS, CPOA_BULK_BATCH_SIZE)."""
    return {"bulk_batch_size": reader.integer("CPOA_BULK_BATCH_SIZE", defaults.BULK_BATCH_SIZE,
                                              minimum=1, maximum=defaults.BULK_BATCH_MAX),
            "review_scripts": reader.flag("CPOA_REVIEW_SCRIPTS", False),
            "review_timeout_s": reader.number("CPOA_REVIEW_TIMEOUT_SECONDS",
                                              defaults.REVIEW_TIMEOUT_S, positive=True,
                                              maximum=defaults.REVIEW_TIMEOUT_MAX_S)}


def _callback_secret(reader: EnvReader) -> str:
    value = reader.text("CPOA_CALLBACK_SECRET", "")
    if value and len(value) < defaults.CALLBACK_SECRET_MIN_CHARS:  # the value is not shown
        raise errors.ConfigError(
            f"CPOA_CALLBACK_SECRET: shorter than {defaults.CALLBACK_SECRET_MIN_CHARS} characters",
            variable="CPOA_CALLBACK_SECRET")
    return value


def _agent(reader: EnvReader, name: str) -> AgentSettings:
    interval, timeout = defaults.POLLING_S[name]
    return AgentSettings(
        name=name,
        base_url=reader.url(f"{name}_SERVICE_URL",
                            f"http://localhost:{defaults.AGENT_PORTS[name]}").rstrip("/"),
        poll_interval_s=reader.number(f"CPOA_{name}_POLLING_INTERVAL_SECONDS", interval,
                                      positive=True),
        poll_timeout_s=reader.number(f"CPOA_{name}_POLLING_TIMEOUT_SECONDS", timeout,
                                     positive=True),
        max_in_flight=reader.integer(f"CPOA_{name}_MAX_IN_FLIGHT", 0, minimum=1) or None,
        rate_limit=reader.number(f"CPOA_{name}_RATE_LIMIT", 0.0, positive=True,
                                 maximum=defaults.RATE_LIMIT_MAX) or None,
        rate_burst=reader.integer(f"CPOA_{name}_RATE_BURST", defaults.RATE_BURST, minimum=1,
                                  maximum=defaults.RATE_BURST_MAX),
    )


def _database(reader: EnvReader) -> DatabaseSettings:
    url = reader.text("CPOA_DATABASE_URL", "")
    is_url = "://" in url
    try:
        parts = urllib.parse.urlsplit(url) if is_url else None
        scheme = parts.scheme if parts else ""
        _ = parts and parts.port  # a bad port or [IPv6 host raises here
    except ValueError:  # the message could quote the URL, password included: not shown
        raise errors.ConfigError("CPOA_DATABASE_URL: not a valid URL",
                                 variable="CPOA_DATABASE_URL") from None
    if url and (scheme not in ("postgresql", "postgres") if is_url else "=" not in url):
        raise errors.ConfigError(
            "CPOA_DATABASE_URL: expected a postgresql:// URL or a libpq key=value string",
            variable="CPOA_DATABASE_URL")
    pool_min = reader.integer("DB_POOL_MIN_CONN", defaults.DB_POOL_MIN_CONN, minimum=0)
    pool_max = reader.integer("DB_POOL_MAX_CONN", defaults.DB_POOL_MAX_CONN, minimum=1)
    if pool_max < pool_min:
        raise errors.ConfigError(
            f"DB_POOL_MAX_CONN: {pool_max} is below DB_POOL_MIN_CONN ({pool_min})",
            variable="DB_POOL_MAX_CONN")
    return DatabaseSettings(
        url=url,
        host=reader.text("POSTGRES_HOST", ""),
        port=reader.integer("POSTGRES_PORT", defaults.DB_PORT, minimum=1, maximum=65535),
        user=reader.text("POSTGRES_USER", ""),
        password=reader.text("POSTGRES_PASSWORD", ""),
        dbname=reader.text("POSTGRES_DB", ""),
        pool_min=pool_min,
        pool_max=pool_max,
    )


class EnvReader:
    """Reads typed values from an environment, naming the variable when one is bad."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, default: str) -> str:
        value = self.env.get(name, "").strip()
        return value or default

    def number(self, name: str, default: float, *, positive: bool = False,
               maximum: float | None = None) -> float:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise errors.ConfigError(f"{name}: {raw!r} is not a number", variable=name) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise errors.ConfigError(f"{name}: {raw!r} is not a finite number", variable=name)
        if value < 0 or (positive and value == 0):
            kind = "positive" if positive else "zero or more"
            raise errors.ConfigError(f"{name}: {raw!r} must be {kind}", variable=name)
        if maximum is not None and value > maximum:
            raise errors.ConfigError(f"{name}: {raw!r} is more than the maximum {maximum:g}",
                                     variable=name)
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0,
                maximum: int | None = None) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise errors.ConfigError(f"{name}: {raw!r} is not a whole number",
                                     variable=name) from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
            raise errors.ConfigError(f"{name}: {raw!r} must be {bound}", variable=name)
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name, "").lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return raw in ("1", "true", "yes", "on")
        raise errors.ConfigError(f"{name}: {raw!r} is not yes or no: give 1, true, yes, on or "
                                 "0, false, no, off", variable=name)

    def optional_url(self, name: str) -> str:
        """An http(s) URL, or "" when the variable is unset or empty."""
        return self.url(name, "") if self.text(name, "") else ""

    def url(self, name: str, default: str) -> str:
        value = self.text(name, default)
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise errors.ConfigError(f"{name}: {value!r} is not an http(s) URL", variable=name)
        return value
