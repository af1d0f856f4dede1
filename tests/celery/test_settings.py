"""The pure parts of the Celery integration: configuration, due times, optional import."""

from __future__ import annotations

import datetime
import subprocess
import sys
import uuid

import pytest

from cpoa import defaults, errors, models
from cpoa.testing.cli import ROOT, cli_env

celery_tasks = pytest.importorskip("cpoa.celery_tasks", reason="the [celery] extra is missing")

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def workflow(**fields: object) -> models.Workflow:
    """A podcast workflow row with some fields set."""
    row = {"workflow_id": uuid.uuid4(), "kind": "podcast", "state": "scripting",
           "trigger_event_details_json": {}, "context_data_json": {}, "warnings": []}
    return models.Workflow(**{**row, **fields})


def later(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


def test_import__cpoa_does_not_import_celery():
    """`import cpoa` (the engine, the API) works without loading Celery."""
    code = "import sys, cpoa, cpoa.cli; sys.exit('celery' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_settings__defaults_for_a_redis_broker():
    """No variables: the local Redis is broker and backend, with a visibility timeout above
    the longest countdown."""
    config = celery_tasks.settings_from_env({})
    assert config.broker_url == config.result_backend == defaults.CELERY_BROKER_URL
    assert config.transport_options["visibility_timeout"] > config.max_countdown_s
    assert config.advances_per_run == defaults.CELERY_ADVANCES_PER_RUN


def test_settings__options_override_and_other_brokers_get_none():
    """The JSON options are merged over CPOA's Redis defaults; an AMQP broker gets only them."""
    config = celery_tasks.settings_from_env({
        "CPOA_CELERY_BROKER_URL": "amqp://guest:guest@mq:5672//",
        "CPOA_CELERY_RESULT_BACKEND": "disabled",
        "CPOA_CELERY_BROKER_TRANSPORT_OPTIONS": '{"confirm_publish": true}'})
    assert config.transport_options == {"confirm_publish": True}
    assert config.result_backend is None
    redis = celery_tasks.settings_from_env({
        "CPOA_CELERY_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 120}'})
    assert redis.transport_options["visibility_timeout"] == 120
    assert redis.transport_options["unacked_restore_interval"] == defaults.CELERY_RESTORE_INTERVAL_S


@pytest.mark.parametrize("name, value", [
    ("CPOA_CELERY_BROKER_URL", "localhost:6379"),
    ("CPOA_CELERY_BROKER_URL", "redis://:s3cret@host:port/0"),
    ("CPOA_CELERY_RESULT_BACKEND", "redis://:s3cret@host:99999/0"),
    ("CPOA_CELERY_RESULT_BACKEND", "localhost"),
    ("CPOA_CELERY_BROKER_TRANSPORT_OPTIONS", "{'visibility_timeout': 1}"),
    ("CPOA_CELERY_BROKER_TRANSPORT_OPTIONS", "[1, 2]"),
    ("CPOA_CELERY_MAX_COUNTDOWN_SECONDS", "soon"),
    ("CPOA_CELERY_MAX_COUNTDOWN_SECONDS", "0"),
    ("CPOA_CELERY_MAX_COUNTDOWN_SECONDS", "nan"),
    ("CPOA_CELERY_MAX_COUNTDOWN_SECONDS", "400"),  # not below the visibility timeout
    ("CPOA_CELERY_ADVANCES_PER_RUN", "2.5"),
    ("CPOA_CELERY_ADVANCES_PER_RUN", "-1"),
])
def test_settings__bad_value_names_the_variable(name, value):
    """A bad value is a ConfigError naming its variable, and never shows a password."""
    env = {"CPOA_CELERY_BROKER_URL": "redis://:s3cret@127.0.0.1:6379/0", name: value}
    with pytest.raises(errors.ConfigError) as raised:
        celery_tasks.settings_from_env(env)
    assert raised.value.variable == name
    assert str(raised.value).startswith(f"{name}: ")
    assert "s3cret" not in str(raised.value)


def test_make_app__tasks_are_acked_late_and_retried_forever():
    """Both tasks are registered under the contract's names, ack late, come back when their
    worker dies, and may re-enqueue themselves without limit."""
    app = celery_tasks.make_app({})
    for name in celery_tasks.TASK_NAMES.values():
        task = app.tasks[name]
        assert (task.acks_late, task.reject_on_worker_lost, task.max_retries) == (True, True, None)
    assert celery_tasks.cpoa_orchestrate_snippets_task.name == "cpoa_orchestrate_snippets_task"


@pytest.mark.parametrize("fields, expected", [
    ({"state": "completed", "next_run_at": None}, None),
    ({"next_run_at": later(-3)}, 0.0),
    ({"next_run_at": later(2.5)}, 2.5),
    ({"next_run_at": None}, defaults.CELERY_MAX_COUNTDOWN_S),
    ({"next_run_at": later(0), "lease_owner": "w", "lease_expires_at": later(0.4)}, 0.4),
    ({"next_run_at": later(0), "lease_owner": "w", "lease_expires_at": later(200)},
     defaults.CELERY_HELD_RECHECK_S),
    ({"next_run_at": later(9), "lease_owner": "w", "lease_expires_at": later(-1)}, 0.0),
])
def test_due_in__from_schedule_and_lease(fields, expected):
    """Terminal: None; due or lease expired: 0; scheduled: the time left; a lease held by
    another process: looked at again soon, or when it expires."""
    assert celery_tasks.due_in(workflow(**fields), NOW) == pytest.approx(expected)


def test_worker__bad_cpoa_variable_stops_it_at_start():
    """`celery -A cpoa.celery_tasks worker` with a bad engine variable exits 1 naming it,
    before it takes any task."""
    env = cli_env("postgresql://127.0.0.1:1/none", "http://127.0.0.1:1",
                  CPOA_TDA_POLLING_INTERVAL_SECONDS="soon")
    worker = subprocess.run([sys.executable, "-m", "celery", "-A", "cpoa.celery_tasks", "worker",
                             "--pool=solo", "--without-mingle", "--without-gossip"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert worker.returncode == 1
    assert "cpoa: CPOA_TDA_POLLING_INTERVAL_SECONDS: 'soon' is not a number" in worker.stderr
