"""Configuration from the environment (contract §6): defaults, overrides, clear errors."""

from __future__ import annotations

import pytest

from cpoa import attempt, errors, settings, steps

AGENT_DEFAULTS = {
    "WCHA": ("http://localhost:5003", 10.0, 300.0),
    "TDA": ("http://localhost:5000", 5.0, 180.0),
    "SCA": ("http://localhost:5002", 3.0, 180.0),
    "PSWA": ("http://localhost:5004", 5.0, 600.0),
    "VFA": ("http://localhost:5005", 5.0, 300.0),
    "IGA": ("http://localhost:5007", 5.0, 240.0),
}


def test_from_env__database_defaults_to_embedded():
    """With no database variable the embedded server is used, port 5432, pool 1..5."""
    database = settings.from_env({}).database
    assert database.embedded
    assert (database.port, database.pool_min, database.pool_max) == (5432, 1, 5)
    assert (database.url, database.host, database.user, database.password, database.dbname) == (
        "", "", "", "", "")


def test_from_env__service_defaults():
    """Retry count 3, backoff factor 0.5, lock timeout 3600 s and the ASF default URLs."""
    config = settings.from_env({})
    assert config.retry_count == 3
    assert config.retry_backoff_factor == 0.5
    assert config.idempotency_lock_timeout_s == 3600.0
    assert config.asf_notification_url == "http://localhost:5006/asf/internal/notify_new_audio"
    assert config.asf_ui_update_url == "http://localhost:5006/asf/internal/send_ui_update"


@pytest.mark.parametrize("name", sorted(AGENT_DEFAULTS))
def test_from_env__agent_defaults(name):
    """Each polled agent has its default port, polling interval and polling timeout."""
    url, interval, timeout = AGENT_DEFAULTS[name]
    agent = settings.from_env({}).agent(name)
    assert (agent.name, agent.base_url, agent.poll_interval_s, agent.poll_timeout_s) == (
        name, url, interval, timeout)


@pytest.mark.parametrize(("variable", "value", "read"), [
    ("POSTGRES_HOST", "db.example", lambda s: s.database.host),
    ("POSTGRES_PORT", "6543", lambda s: s.database.port),
    ("POSTGRES_USER", "cpoa", lambda s: s.database.user),
    ("POSTGRES_PASSWORD", "pw", lambda s: s.database.password),
    ("POSTGRES_DB", "podcasts", lambda s: s.database.dbname),
    ("CPOA_DATABASE_URL", "postgresql://u@h/d", lambda s: s.database.url),
    ("DB_POOL_MIN_CONN", "2", lambda s: s.database.pool_min),
    ("DB_POOL_MAX_CONN", "9", lambda s: s.database.pool_max),
    ("ASF_NOTIFICATION_URL", "http://asf:1/n", lambda s: s.asf_notification_url),
    ("CPOA_ASF_SEND_UI_UPDATE_URL", "https://asf:1/u", lambda s: s.asf_ui_update_url),
    ("CPOA_SERVICE_RETRY_COUNT", "5", lambda s: s.retry_count),
    ("CPOA_SERVICE_RETRY_BACKOFF_FACTOR", "0.25", lambda s: s.retry_backoff_factor),
    ("IDEMPOTENCY_LOCK_TIMEOUT_SECONDS", "60", lambda s: s.idempotency_lock_timeout_s),
])
def test_from_env__reads_variable(variable, value, read):
    """Each variable of §6 overrides its default, converted to the field's type."""
    got = read(settings.from_env({variable: value}))
    expected = type(got)(value) if isinstance(got, (int, float)) else value
    assert got == expected


@pytest.mark.parametrize("name", sorted(AGENT_DEFAULTS))
def test_from_env__reads_agent_variables(name):
    """<AGENT>_SERVICE_URL (trailing slash dropped) and both polling variables are read."""
    agent = settings.from_env({
        f"{name}_SERVICE_URL": "https://agents.example:8443/",
        f"CPOA_{name}_POLLING_INTERVAL_SECONDS": "0.5",
        f"CPOA_{name}_POLLING_TIMEOUT_SECONDS": "42",
    }).agent(name)
    assert (agent.base_url, agent.poll_interval_s, agent.poll_timeout_s) == (
        "https://agents.example:8443", 0.5, 42.0)


def test_from_env__max_in_flight_unset_is_no_limit():
    """CPOA_<AGENT>_MAX_IN_FLIGHT: unset or blank is no limit; a whole number >= 1 is read."""
    config = settings.from_env({"CPOA_VFA_MAX_IN_FLIGHT": "3", "CPOA_TDA_MAX_IN_FLIGHT": " "})
    assert config.agent("VFA").max_in_flight == 3
    assert config.agent("TDA").max_in_flight is None and config.agent("IGA").max_in_flight is None


def test_from_env__rate_limit_unset_is_no_limit_and_the_burst_defaults_to_one():
    """CPOA_<AGENT>_RATE_LIMIT: unset is no limit; a positive number of submits per second
    (a fraction too: 0.5 is 30 a minute) is read; CPOA_<AGENT>_RATE_BURST defaults to 1."""
    config = settings.from_env({"CPOA_PSWA_RATE_LIMIT": "0.5", "CPOA_VFA_RATE_LIMIT": "5",
                                "CPOA_VFA_RATE_BURST": "3"})
    assert (config.agent("PSWA").rate_limit, config.agent("PSWA").rate_burst) == (0.5, 1)
    assert (config.agent("VFA").rate_limit, config.agent("VFA").rate_burst) == (5.0, 3)
    assert config.agent("IGA").rate_limit is None


def test_from_env__blank_value_means_default():
    """An empty or blank variable counts as unset."""
    config = settings.from_env({"CPOA_SERVICE_RETRY_COUNT": "  ", "TDA_SERVICE_URL": ""})
    assert config.retry_count == 3
    assert config.agent("TDA").base_url == "http://localhost:5000"


def test_from_env__configured_server_is_not_embedded():
    """Any of URL, host, user or database name selects a configured server."""
    for variable in ("CPOA_DATABASE_URL", "POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_DB"):
        value = "postgresql://h/d" if variable == "CPOA_DATABASE_URL" else "x"
        assert not settings.from_env({variable: value}).database.embedded, variable


BAD_VALUES = [
    ("POSTGRES_PORT", "fivefour"),
    ("POSTGRES_PORT", "-1"),
    ("POSTGRES_PORT", "70000"),
    ("DB_POOL_MIN_CONN", "one"),
    ("DB_POOL_MIN_CONN", "-1"),
    ("DB_POOL_MAX_CONN", "0"),
    ("DB_POOL_MAX_CONN", "2.5"),
    ("CPOA_SERVICE_RETRY_COUNT", "three"),
    ("CPOA_SERVICE_RETRY_COUNT", "-3"),
    ("CPOA_SERVICE_RETRY_BACKOFF_FACTOR", "fast"),
    ("CPOA_SERVICE_RETRY_BACKOFF_FACTOR", "-0.5"),
    ("CPOA_SERVICE_RETRY_BACKOFF_FACTOR", "nan"),
    ("IDEMPOTENCY_LOCK_TIMEOUT_SECONDS", "an hour"),
    ("IDEMPOTENCY_LOCK_TIMEOUT_SECONDS", "-1"),
    ("IDEMPOTENCY_LOCK_TIMEOUT_SECONDS", "inf"),
    ("CPOA_TDA_POLLING_INTERVAL_SECONDS", "soon"),
    ("CPOA_TDA_POLLING_INTERVAL_SECONDS", "-5"),
    ("CPOA_TDA_POLLING_INTERVAL_SECONDS", "0"),
    ("CPOA_VFA_POLLING_TIMEOUT_SECONDS", "-300"),
    ("CPOA_DATABASE_URL", "mysql://u:pw@h/d"),
    ("CPOA_DATABASE_URL", "h/d"),
    ("WCHA_SERVICE_URL", "ftp://localhost:5003"),
    ("PSWA_SERVICE_URL", "localhost:5004"),
    ("IGA_SERVICE_URL", "http://"),
    ("ASF_NOTIFICATION_URL", "file:///tmp/notify"),
    ("CPOA_ASF_SEND_UI_UPDATE_URL", "ws://asf/ui"),
    ("CPOA_VFA_MAX_IN_FLIGHT", "two"),
    ("CPOA_VFA_MAX_IN_FLIGHT", "0"),
    ("CPOA_PSWA_MAX_IN_FLIGHT", "-1"),
    ("CPOA_IGA_MAX_IN_FLIGHT", "1.5"),
    ("CPOA_PSWA_RATE_LIMIT", "five"),
    ("CPOA_PSWA_RATE_LIMIT", "0"),
    ("CPOA_PSWA_RATE_LIMIT", "-2"),
    ("CPOA_PSWA_RATE_LIMIT", "nan"),
    ("CPOA_PSWA_RATE_LIMIT", "1e9"),
    ("CPOA_VFA_RATE_BURST", "0"),
    ("CPOA_VFA_RATE_BURST", "2.5"),
    ("CPOA_VFA_RATE_BURST", "100000"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_from_env__bad_value_names_variable(variable, value):
    """A non-number, negative, out-of-range or unknown-scheme value is a ConfigError naming it."""
    with pytest.raises(errors.ConfigError) as info:
        settings.from_env({variable: value})
    assert info.value.variable == variable
    assert variable in str(info.value)


def test_from_env__pool_max_below_min_names_max():
    """DB_POOL_MAX_CONN below DB_POOL_MIN_CONN is refused, naming DB_POOL_MAX_CONN."""
    with pytest.raises(errors.ConfigError) as info:
        settings.from_env({"DB_POOL_MIN_CONN": "4", "DB_POOL_MAX_CONN": "2"})
    assert info.value.variable == "DB_POOL_MAX_CONN" and "DB_POOL_MAX_CONN" in str(info.value)
    equal = settings.from_env({"DB_POOL_MIN_CONN": "3", "DB_POOL_MAX_CONN": "3"})
    assert equal.database.pool_max == 3


def test_from_env__bad_database_url_does_not_echo_password():
    """The error for a URL with an unknown scheme does not repeat the URL's password."""
    with pytest.raises(errors.ConfigError) as info:
        settings.from_env({"CPOA_DATABASE_URL": "mysql://u:hunter2@h/d"})
    assert "hunter2" not in str(info.value)


def test_settings__password_not_in_repr():
    """Neither POSTGRES_PASSWORD nor a password inside CPOA_DATABASE_URL shows in repr()."""
    config = settings.from_env({"POSTGRES_PASSWORD": "hunter2",
                                "CPOA_DATABASE_URL": "postgresql://u:s%40cret@h/d"})
    for text in (repr(config), str(config), repr(config.database)):
        assert "hunter2" not in text and "s%40cret" not in text and "s@cret" not in text
    assert set(config.database.secrets) >= {"hunter2", "s%40cret", "s@cret"}


def test_from_env__libpq_key_value_dsn_accepted_and_hidden():
    """A libpq key=value CPOA_DATABASE_URL is accepted and its password kept out of repr()."""
    config = settings.from_env({"CPOA_DATABASE_URL": "host=h dbname=d password='p w0rd'"})
    assert not config.database.embedded
    assert "p w0rd" in config.database.secrets
    assert "w0rd" not in repr(config)


def test_settings__replace_returns_changed_copy():
    """replace() changes one field on a copy and leaves the original as it was."""
    config = settings.from_env({})
    shorter = config.replace(lease_ttl_s=1.0)
    assert shorter.lease_ttl_s == 1.0 and config.lease_ttl_s != 1.0


def test_from_env__reads_process_environment(monkeypatch):
    """Without an explicit mapping the process environment is read."""
    monkeypatch.setenv("CPOA_SERVICE_RETRY_COUNT", "7")
    assert settings.from_env().retry_count == 7


def test_review_settings__parsed_and_bad_values_name_the_variable():
    """CPOA_REVIEW_SCRIPTS is a yes/no, CPOA_REVIEW_TIMEOUT_SECONDS a positive number."""
    from cpoa import errors, settings as settings_module

    parsed = settings_module.from_env({"CPOA_REVIEW_SCRIPTS": "yes",
                                       "CPOA_REVIEW_TIMEOUT_SECONDS": "90"})
    assert (parsed.review_scripts, parsed.review_timeout_s) == (True, 90.0)
    assert settings_module.from_env({}).review_timeout_s == 7 * 24 * 3600.0
    for variable, value in (("CPOA_REVIEW_SCRIPTS", "maybe"),
                            ("CPOA_REVIEW_TIMEOUT_SECONDS", "0")):
        try:
            settings_module.from_env({variable: value})
        except errors.ConfigError as exc:
            assert exc.variable == variable and str(exc).startswith(variable)
        else:
            raise AssertionError(f"{variable}={value} accepted")


def test_from_env__callbacks_are_off_unless_a_base_url_is_set():
    """No CPOA_CALLBACK_BASE_URL: no callbacks; set: read without its trailing slash."""
    assert settings.from_env({}).callback_base_url == ""
    config = settings.from_env({"CPOA_CALLBACK_BASE_URL": "http://gw.example:8080/"})
    assert config.callback_base_url == "http://gw.example:8080"


@pytest.mark.parametrize("value", ["gw.example:8080", "ftp://gw.example", "http://"])
def test_from_env__bad_callback_base_url_names_the_variable(value):
    """A callback base URL that is not http(s) is a configuration error naming it."""
    with pytest.raises(errors.ConfigError, match="CPOA_CALLBACK_BASE_URL") as caught:
        settings.from_env({"CPOA_CALLBACK_BASE_URL": value})
    assert caught.value.variable == "CPOA_CALLBACK_BASE_URL"


def test_from_env__callback_secret_is_a_secret_and_must_be_long_enough():
    """CPOA_CALLBACK_SECRET is kept out of repr and listed among the secrets to redact; a
    short one is refused without being shown."""
    value = "k" * 32
    config = settings.from_env({"CPOA_CALLBACK_SECRET": value})
    assert config.callback_secret == value and value in config.secrets
    assert value not in repr(config)
    with pytest.raises(errors.ConfigError, match="CPOA_CALLBACK_SECRET") as caught:
        settings.from_env({"CPOA_CALLBACK_SECRET": "tooshort"})
    assert "tooshort" not in str(caught.value)


def test_review_timeout__above_a_year_refused_naming_the_variable():
    """A review deadline beyond a year (e.g. 1e12 s: "timestamp out of range" at every
    scripting -> awaiting_review) is refused naming CPOA_REVIEW_TIMEOUT_SECONDS; a year is
    accepted."""
    from cpoa import defaults

    year = str(int(defaults.REVIEW_TIMEOUT_MAX_S))
    assert settings.from_env({"CPOA_REVIEW_TIMEOUT_SECONDS": year}).review_timeout_s == float(
        year)
    for value in (str(int(defaults.REVIEW_TIMEOUT_MAX_S) + 1), "1e12"):
        with pytest.raises(errors.ConfigError) as info:
            settings.from_env({"CPOA_REVIEW_TIMEOUT_SECONDS": value})
        assert info.value.variable == "CPOA_REVIEW_TIMEOUT_SECONDS"
        assert str(info.value).startswith("CPOA_REVIEW_TIMEOUT_SECONDS")


def test_bulk_batch_size__parsed_once_and_bad_values_name_the_variable():
    """CPOA_BULK_BATCH_SIZE is read by settings (not by the CLI from os.environ): a whole
    number from 1 to BULK_BATCH_MAX, refused naming the variable otherwise."""
    from cpoa import defaults

    assert settings.from_env({}).bulk_batch_size == defaults.BULK_BATCH_SIZE
    assert settings.from_env({"CPOA_BULK_BATCH_SIZE": "25"}).bulk_batch_size == 25
    for value in ("0", "many", str(defaults.BULK_BATCH_MAX + 1)):
        with pytest.raises(errors.ConfigError) as info:
            settings.from_env({"CPOA_BULK_BATCH_SIZE": value})
        assert info.value.variable == "CPOA_BULK_BATCH_SIZE"


def test_from_env__progress_event_interval_defaults_to_a_second_and_allows_zero():
    """CPOA_PROGRESS_EVENT_INTERVAL_SECONDS: 1 s by default, 0 allowed (every change), a
    negative value or a word is an error naming it; the steps' pacing carries it."""
    assert settings.from_env({}).progress_event_interval_s == 1.0
    config = settings.from_env({"CPOA_PROGRESS_EVENT_INTERVAL_SECONDS": "0"})
    assert config.progress_event_interval_s == 0.0
    podcast = steps.STEPS["podcast"]["synthesizing"]
    assert attempt.timing(config, podcast).progress_every_s == 0.0
    for value in ("-1", "soon"):
        with pytest.raises(errors.ConfigError, match="CPOA_PROGRESS_EVENT_INTERVAL_SECONDS"):
            settings.from_env({"CPOA_PROGRESS_EVENT_INTERVAL_SECONDS": value})
