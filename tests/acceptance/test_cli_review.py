"""`cpoa start --review`, `cpoa review` and `cpoa fork` as a user runs them (subprocesses)."""

from __future__ import annotations

import json

from cpoa.testing.cli import cli_env, run_cli


def test_cli__review_edit_approve_conflict_and_fork(dsn, agent, tmp_path):
    """Start with --review stops at the gate; an edited script is approved; a second approval
    exits 1 naming the gate; a bad edit exits 2 naming the field; fork re-voices."""
    env = cli_env(dsn, agent.url)
    started = run_cli(env, "start", "podcast", "--topic", "tides", "--review", "--wait")
    assert started.returncode == 0, started.stderr
    workflow_id = started.stdout.split()[0]
    assert "awaiting_review" in started.stdout
    script = json.loads(run_cli(env, "status", workflow_id, "--json").stdout)["outputs"]["script"]
    script["segments"][0]["lines"][0]["text"] = ""
    (tmp_path / "bad.json").write_text(json.dumps(script))
    bad = run_cli(env, "review", workflow_id, "--approve", "--script", str(tmp_path / "bad.json"))
    assert bad.returncode == 2
    assert "script.segments[0].lines[0].text" in bad.stderr
    script["segments"][0]["lines"][0]["text"] = "Edited from the command line."
    (tmp_path / "good.json").write_text(json.dumps(script))
    stale = run_cli(env, "review", workflow_id, "--approve", "--revision", "2")
    assert stale.returncode == 1 and "revision 1, not 2" in stale.stderr
    approved = run_cli(env, "review", workflow_id, "--approve", "--revision", "1", "--script",
                       str(tmp_path / "good.json"))
    assert (approved.returncode, approved.stdout.strip()) == (0, "synthesizing")
    late = run_cli(env, "review", workflow_id, "--reject", "--notes", "too late")
    assert late.returncode == 1 and "awaiting_review" in late.stderr
    assert run_cli(env, "worker", "--until-idle").returncode == 0
    forked = run_cli(env, "fork", workflow_id, "--from", "synthesizing", "--voice", "en+f4",
                     "--idempotency-key", "k1")
    assert forked.returncode == 0, forked.stderr
    fork_id = forked.stdout.strip()
    again = run_cli(env, "fork", workflow_id, "--from", "synthesizing", "--voice", "en+f4",
                    "--idempotency-key", "k1")
    assert (again.returncode, again.stdout.strip()) == (0, fork_id)
    assert run_cli(env, "worker", "--until-idle").returncode == 0
    status = run_cli(env, "status", fork_id)
    assert f"forked from: {workflow_id}" in status.stdout
    assert "completed" in status.stdout
    unreached = run_cli(env, "fork", fork_id, "--from", "scripting")
    assert unreached.returncode == 2 and "from_state" in unreached.stderr


def test_cli__bulk_cancel_dry_run_changes_nothing(dsn, agent):
    """`cpoa bulk cancel --dry-run` lists the matching workflows and changes none; without
    --dry-run it cancels them."""
    env = cli_env(dsn, agent.url)
    ids = [run_cli(env, "start", "podcast", "--topic", f"t{i}").stdout.strip() for i in range(3)]
    empty = run_cli(env, "bulk", "cancel")
    assert empty.returncode == 2 and "all: an empty filter" in empty.stderr
    dry = run_cli(env, "bulk", "cancel", "--state", "fetching", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert sorted(c["workflow_id"] for c in json.loads(dry.stdout)["changed"]) == sorted(ids)
    listed = run_cli(env, "list", "--state", "fetching", "--json")
    assert len(json.loads(listed.stdout)) == 3
    done = run_cli(env, "bulk", "cancel", "--kind", "podcast", "--batch-size", "2")
    assert done.returncode == 0 and "cancel: 3 of 3" in done.stdout
    assert len(json.loads(run_cli(env, "list", "--state", "cancelled", "--json").stdout)) == 3
    everything = run_cli(env, "bulk", "cancel", "--all", "--dry-run")
    assert everything.returncode == 0 and "would cancel: 0 of 3" in everything.stdout
    bad = run_cli({**env, "CPOA_BULK_BATCH_SIZE": "0"}, "bulk", "cancel", "--all")
    assert bad.returncode == 2 and "CPOA_BULK_BATCH_SIZE" in bad.stderr
    small = run_cli({**env, "CPOA_BULK_BATCH_SIZE": "1"}, "bulk", "retry", "--all", "--json")
    assert (small.returncode, json.loads(small.stdout)["matched"]) == (0, 3), small.stderr
