"""The fault harness's fault scenarios in their quick versions (`python -m bench.chaos.run --quick`):
database faults, an agent outage, bad agent replies, bad requests, secrets; and one small
reproducer for each engine bug those scenarios found (fixed; they guard against a return)."""

from __future__ import annotations

import pathlib
import tempfile
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.chaos.harness import quick
from cpoa import errors
from cpoa.testing.cli import cli_env, run_cli
from cpoa.testing.agent import Reply
from tests.fix_agents import drive, step_task, wait_until


@pytest.fixture
def scratch() -> Iterator[pathlib.Path]:
    """A short-named scratch folder (an embedded server's socket lives in it)."""
    with tempfile.TemporaryDirectory(prefix="cpoa-chaos-") as folder:
        yield pathlib.Path(folder)


# -- the scenarios ---------------------------------------------------------------------------

POOL_STALL = (
    "engine bug: after a backend cut or a restart the pool hands out its dead connections one "
    "per call, and the worker pauses 0.5, 1, 2, 4 s… between them, so it stalls for seconds "
    "(see test_store__one_failure_after_the_backends_are_cut)")


@pytest.mark.slow
def test_db_faults__quick__workers_ride_out_cut_backends_and_a_restart(server_dsn, scratch):
    """A worker subprocess whose backends are cut twice and whose server is restarted stays
    alive, completes every workflow, and logs "database unavailable" once per outage and
    thread (never per row), soon making progress again."""
    result = quick("db_faults", server_dsn)
    assert result["completed"] == result["workflows"], result["states"]
    assert result["worker_alive"] and result["worker_exit"] == 0
    outages = result["outages"]
    assert [o["kind"] for o in outages] == ["terminate", "terminate", "restart"]
    assert all(o["unfinished_workflows"] > 0 for o in outages)  # each fault hit mid-run
    assert all(o["db_outage_logs"] <= result["outage_threads"] for o in outages)
    assert outages[-1]["db_outage_logs"] >= 1 and outages[-1]["recover_s"] is not None
    assert result["ok"], result


@pytest.mark.slow
def test_agent_outage__quick__short_waits_long_fails_then_retry_completes(server_dsn, scratch):
    """PSWA down longer than its polling interval but shorter than its timeout: workflows wait
    and complete; down longer than the timeout: they fail naming PSWA and the timeout, and
    retry completes them once PSWA is back, with no step's work done twice."""
    result = quick("agent_outage", server_dsn)
    assert result["ok"], result
    short, long = result["short_outage"], result["long_outage"]
    assert short["states"] == {"completed": result["workflows"] // 2}
    assert short["outage_seen_max_s"] < result["poll_timeout_s"]
    assert short["refused_workflows"] >= 1 and short["transient_retries"]["max"] >= 1
    assert long["failed"] == long["reasons_matching"] == result["workflows"] // 2
    assert (f"PSWA task did not finish within its {result['poll_timeout_s']:g} s polling "
            "timeout") in long["reason"]
    assert long["time_to_fail_s"]["min"] >= result["poll_timeout_s"]
    assert long["retried_completed"] == long["failed"]
    assert result["duplicate_pswa_work"] == 0 and result["step_crashes"] == 0


BAD_REPLY_BUGS = {
    "OverflowError": "a Retry-After of inf, 1e20 or 3e11 overflows the next poll time "
                     "(attempt._open) and fails the workflow as an internal error",
    "TypeError": "a task status that is a list or an object is looked up in a frozenset "
                 "(client._task_reply): unhashable, an internal error",
    "StoreError": "a reply with U+0000 or a lone surrogate in a kept string cannot be stored "
                  "(jsonb): advance raises, the lease is held, and the workflow is quarantined "
                  "much later for a crash it did not have",
    "RecursionError": "a deeply nested value kept from a reply (PSWA script_data, VFA "
                      "segments) overflows dataclasses.asdict in store._one_task: advance "
                      "raises and the worker drops the exception silently",
}


def test_bad_replies__quick__no_exception_and_a_reason_for_each(server_dsn, scratch):
    """500 generated replies (wrong types, missing fields, bad JSON, non-UTF-8, deep nesting,
    oversize and gzip-bomb bodies, odd statuses, malformed HTTP) each end as succeeded, open,
    transient or failed with a reason naming the field or the problem; sampled end to end
    through advance, beside healthy workflows that all complete untouched."""
    result = quick("bad_replies", server_dsn)
    assert result["replies"] == 500
    by_category = result["by_category"]
    assert set(by_category) == set(result["categories"])
    for good in ("valid", "extra_fields", "content_type"):
        assert set(by_category[good]) <= {"succeeded", "open"}, (good, by_category[good])
    assert result["bystanders"] == result["bystanders_clean"] > 0
    assert result["db_samples"] >= 10 and result["db_results"].get("mismatch", 0) == 0
    assert result["escaped_exceptions"] == {} and result["db_exceptions"] == {}
    assert result["ok"], result


@pytest.mark.slow
def test_bad_requests__quick__refused_naming_the_field_and_hostile_text_inert(server_dsn,
                                                                             scratch):
    """Invalid start_workflow arguments and ids raise InvalidInput naming the field, the CLI
    exits 2 naming it, nothing is written; SQL and script strings are stored and sent
    verbatim and every table still exists."""
    result = quick("bad_requests", server_dsn)
    assert result["ok"], result
    assert result["api_refused_naming_field"] == result["api_cases"] >= 80
    assert result["cli_exit_2_naming_field"] == result["cli_cases"] >= 5
    assert result["rows_written_by_bad_requests"] == {}
    assert result["stored_verbatim"] == result["hostile_workflows"]
    assert result["hostile_states"] == ["completed"]
    assert result["tables_present"] == result["tables_expected"]


SECRET_BUGS = (
    "engine bug: a malformed CPOA_DATABASE_URL (an unencoded % in the password, a broken "
    "[IPv6] host, an unterminated quote) is not a ConfigError: cpoa crashes with a Python "
    "traceback (exit 1), and psycopg's 'invalid percent-encoded token' message in it carries "
    "the password")
MALFORMED_RUNS = {"url_password_not_encoded", "url_malformed_host", "keyvalue_unterminated"}


@pytest.mark.slow
def test_secrets__quick__the_password_never_appears(server_dsn, scratch):
    """DEBUG-level CLI runs with the password in a URL, in POSTGRES_PASSWORD, with agent
    errors and failing connections never print the password, plain or percent-encoded."""
    result = quick("secrets", server_dsn)
    assert result["lines_scanned"] > 100 and result["debug_records"] > 0
    assert result["agent_error_logs"] > 0 and result["bad_exits"] == []
    assert result["crashes"] == [] and result["leaks"] == []
    assert result["ok"], result


# -- reproducers of the engine bugs found ----------------------------------------------------

def _harvest_reply(result_json: bytes) -> Reply:
    return Reply(200, b'{"task_id": "t1", "status": "SUCCESS", "result": ' + result_json + b"}",
                 headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("text", [b'"a\\u0000b"', b'"a\\ud800b"'], ids=["nul", "surrogate"])
def test_advance__text_postgres_cannot_store_settles_the_step(engine, agent, text):
    """A harvest whose content holds U+0000 or a lone surrogate is settled by advance (the
    step fails naming result.content, or the text is cleaned), instead of advance raising."""
    workflow_id = engine.start_workflow("podcast", {"topic": "t"})
    agent.script("POST", "/harvest", _harvest_reply(
        b'{"status": "success", "content": ' + text + b"}"))
    state = engine.advance(workflow_id)
    assert state in ("analyzing", "failed")
    if state == "failed":
        assert "result.content" in engine.get_workflow(workflow_id)["error"]


def test_advance__deeply_nested_script_extra_is_stored_or_refused(engine, agent):
    """A script whose script_data carries an extra field nested 650 deep (1.3 kB of JSON)
    is stored or fails the step; advance never raises."""
    nested: list = []
    inner = nested
    for _ in range(650):
        inner.append([])
        inner = inner[0]
    agent.set_result("/weave_script", {"status": "success", "script_data": {
        "script_id": "s", "title": "T", "extra": nested, "segments": [
            {"segment_title": "", "lines": [{"speaker": "a", "text": "b"}]}]}})
    workflow_id = engine.start_workflow("podcast", {"topic": "t"})
    assert drive(engine, workflow_id) in ("completed", "failed")


@pytest.mark.parametrize("retry_after", ["inf", "1e20", "3e11"])
def test_advance__absurd_retry_after_is_still_transient(engine, agent, store, retry_after):
    """A 503 with an absurd Retry-After is a transient answer: the step stays open (its next
    poll capped at its deadline) instead of failing the workflow as an internal error."""
    workflow_id = engine.start_workflow("podcast", {"topic": "t"})
    agent.script("POST", "/harvest", Reply(503, {"error": "busy"},
                                           headers={"Retry-After": retry_after}))
    state = engine.advance(workflow_id)  # capped, or ignored when not finite: never an error
    assert state in ("fetching", "analyzing"), engine.get_workflow(workflow_id)["error"]
    task = step_task(store, workflow_id, "fetching")
    assert task.status in ("submitted", "succeeded") or task.error_details_json["transient"]


@pytest.mark.parametrize("status", [["SUCCESS"], {"s": 1}], ids=["list", "object"])
def test_advance__a_task_status_of_the_wrong_type_fails_naming_it(engine, agent, status):
    """A reply whose task status is a list or an object fails the step naming 'status',
    not as an internal error."""
    workflow_id = engine.start_workflow("podcast", {"topic": "t"})
    agent.script("POST", "/harvest", Reply(200, {"task_id": "t1", "status": status}))
    assert drive(engine, workflow_id) == "failed"
    error = engine.get_workflow(workflow_id)["error"]
    assert "'status'" in error and "internal error" not in error, error


def test_store__one_failure_after_the_backends_are_cut(store, db):
    """After pg_terminate_backend cuts every pooled connection, at most one store call fails:
    the pool drops all its broken connections at once, not one per call."""
    with store.pool.connection(), store.pool.connection(), store.pool.connection():
        pass  # three connections now idle in the pool
    others = ("FROM pg_stat_activity WHERE datname = current_database() "
              "AND pid <> pg_backend_pid()")
    db.execute(f"SELECT pg_terminate_backend(pid) {others}")
    wait_until(lambda: db.execute(f"SELECT count(*) AS n {others}").fetchone()["n"] == 0)
    failures = 0
    for _ in range(4):
        try:
            store.count_unfinished()
        except errors.StoreError:
            failures += 1
    assert failures <= 1


PASSWORD = "Zq8-s3cr%t_pw"
"""Holds a ``%``: a URL must carry it percent-encoded, and a user who forgets is the test."""
ENCODED = urllib.parse.quote(PASSWORD, safe="")


@pytest.mark.slow
@pytest.mark.parametrize("url", [
    f"postgresql://cpoa:{PASSWORD}@127.0.0.1:1/cpoa",
    f"postgresql://cpoa:{ENCODED}@[::1/cpoa",
    f"host=127.0.0.1 port=1 password='{PASSWORD}",
], ids=["unencoded-percent", "broken-ipv6", "unterminated-quote"])
def test_cli__malformed_database_url_is_a_usage_error(agent, url):
    """A malformed CPOA_DATABASE_URL is a configuration error naming the variable (exit 2),
    with no traceback and no password in the output."""
    started = time.monotonic()
    result = run_cli(cli_env(url, agent.url), "-vv", "list", timeout=60)
    output = result.stdout + result.stderr
    assert time.monotonic() - started < 60
    assert PASSWORD not in output
    assert not any(line.startswith("Traceback") for line in result.stderr.splitlines())
    assert result.returncode == 2 and "CPOA_DATABASE_URL" in result.stderr
