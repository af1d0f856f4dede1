"""The editorial commands of ``cpoa``: ``review`` a script awaiting review, ``fork`` a new
workflow from a finished one, and ``bulk`` retry, cancel or fork by filter.

Exit codes as every command's (:mod:`cpoa.cli`): 0 ok, 1 the operation failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cpoa import bulk, commands, defaults, errors, inputs, machine, options
from cpoa.engine import Engine


def command_review(engine: Engine, args: argparse.Namespace) -> int:
    script = _read_script(args.script) if args.script else None
    state = engine.review(args.workflow_id, approve=args.approve, script=script, notes=args.notes,
                          expected_revision=args.revision)
    commands.output(args, {"workflow_id": args.workflow_id, "state": state}, state)
    return 0


def _read_script(path: str) -> Any:
    """The edited script of ``cpoa review --script FILE`` (JSON; ``-`` is stdin)."""
    try:
        with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as file:
            document = json.load(file)
    except (OSError, ValueError) as exc:
        raise errors.InvalidInput(f"script: cannot read {path} as JSON: {exc}",
                                  field="script") from None
    if isinstance(document, dict) and isinstance(document.get("script_data"), dict):
        return document["script_data"]  # a whole PSWA result is fine too
    return document


def command_fork(engine: Engine, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    source = engine.store.get_workflow(inputs.workflow_id(args.workflow_id))
    voice = {k: v for k, v in (("voice_name", args.voice), ("speaking_rate", args.speaking_rate))
             if v is not None}
    if voice:  # merged into the source's by the fork itself
        changes["voice_params"] = voice
    for name in ("persona", "cover_prompt"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    new_id = engine.fork(source.workflow_id, args.from_state, changes,
                         idempotency_key=args.idempotency_key)
    commands.output(args, {"workflow_id": str(new_id), "forked_from": str(source.workflow_id)},
                    str(new_id))
    return 0


def command_bulk(engine: Engine, args: argparse.Namespace) -> int:
    where = bulk.Filter.checked(
        state=args.state, kind=args.kind, failed_step=args.failed_step,
        started_after=inputs.instant(args.started_after, "started_after"),
        started_before=inputs.instant(args.started_before, "started_before"),
        all_workflows=args.all_workflows, include_forks=args.include_forks)
    changes: dict[str, Any] = {}
    if args.voice:
        changes["voice_params"] = {"voice_name": args.voice}
    for name in ("persona", "cover_prompt"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    report = bulk.run(engine, args.action, where, dry_run=args.dry_run,
                      batch_size=args.batch_size or engine.settings.bulk_batch_size,
                      from_state=args.from_state,
                      params=changes or None)
    verb = f"would {args.action}" if report.dry_run else f"{args.action}"
    text = [f"{verb}: {len(report.changed)} of {report.matched} matching workflow(s)"]
    text += [f"  {c['workflow_id']}  {c['from']} -> {c['to']}"
             + (f"  new {c['new_workflow_id']}" if c.get("new_workflow_id") else "")
             for c in report.changed]
    text += [f"  refused {r['workflow_id']}: {r['error']}" for r in report.refused]
    commands.output(args, report.as_json(), "\n".join(text))
    return 0


# -- the parsers -----------------------------------------------------------------------------

def configure_review_parsers(sub: argparse._SubParsersAction) -> None:
    review = commands.add(sub, "review", help="approve or reject the script of a workflow "
                                              "awaiting review (exit 1 if another reviewer acted "
                                              "first)")
    review.add_argument("workflow_id")
    decision = review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", action="store_true", help="go on to the voices")
    decision.add_argument("--reject", dest="approve", action="store_false",
                          help="PSWA writes a new script from --notes")
    review.add_argument("--script", metavar="FILE", help="with --approve: the edited script "
                        "(JSON, as in `cpoa status ID --json` outputs.script; - for stdin)")
    review.add_argument("--notes", help="what to change (required with --reject)")
    review.add_argument("--revision", type=int, metavar="N",
                        help="the script revision reviewed (`cpoa status --json`: "
                             "outputs.script_revision, 1 when absent); refused (exit 1) when "
                             "the script has changed since")
    review.add_argument("--json", action="store_true", help="print one JSON document")
    review.set_defaults(handler=command_review)
    fork = commands.add(sub, "fork", help="a new workflow from a finished one, from a state on")
    fork.add_argument("workflow_id")
    fork.add_argument("--from", dest="from_state", required=True, metavar="STATE",
                      help="where the fork starts, e.g. synthesizing (the context before it "
                           "is copied; those steps are not run again)")
    fork.add_argument("--voice", help="voice_params.voice_name, e.g. en+f4")
    fork.add_argument("--speaking-rate", type=float)
    fork.add_argument("--persona")
    fork.add_argument("--cover-prompt", help="IGA's prompt for the cover art")
    fork.add_argument("--idempotency-key", metavar="KEY",
                      help="the same key again prints the same fork instead of a new one")
    fork.add_argument("--json", action="store_true", help="print one JSON document")
    fork.set_defaults(handler=command_fork)


def configure_bulk_parser(sub: argparse._SubParsersAction) -> None:
    states = sorted({s for k in machine.KINDS for s in machine.states(k)})
    bulking = commands.add(sub, "bulk", help="retry, cancel or fork every workflow matching a "
                                             "filter, in batches")
    bulking.add_argument("action", choices=bulk.ACTIONS)
    bulking.add_argument("--state", choices=states)
    bulking.add_argument("--kind", choices=sorted(machine.KINDS))
    bulking.add_argument("--failed-step", choices=states, help="the state they failed in")
    bulking.add_argument("--started-after", metavar="TIME",
                         help="ISO 8601 with its UTC offset, e.g. 2026-12-01T00:00:00+00:00")
    bulking.add_argument("--started-before", metavar="TIME")
    bulking.add_argument("--all", dest="all_workflows", action="store_true",
                         help="every workflow: required when no filter is given (exit 2)")
    bulking.add_argument("--include-forks", action="store_true",
                         help="fork only: fork forks too (skipped by default)")
    bulking.add_argument("--from", dest="from_state", metavar="STATE",
                         help="fork only: where the forks start")
    bulking.add_argument("--voice", help="fork only: voice_params.voice_name")
    bulking.add_argument("--persona", help="fork only")
    bulking.add_argument("--cover-prompt", help="fork only")
    bulking.add_argument("--dry-run", action="store_true",
                         help="list what would change and change nothing")
    bulking.add_argument(
        "--batch-size", type=options.positive_int, metavar="N",
        help="workflows per batch "
             f"[env CPOA_BULK_BATCH_SIZE, default {defaults.BULK_BATCH_SIZE}]")
    bulking.add_argument("--json", action="store_true", help="print one JSON document")
    bulking.set_defaults(handler=command_bulk)
