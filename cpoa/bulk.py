"""Bulk actions: retry, cancel or fork every workflow matching a filter, in bounded batches.

The matching workflows are read by id in batches of ``batch_size`` (keyset, as of the run's
start: a workflow started meanwhile, such as a fork this run made, is not picked up). Each is
then changed on its own, with the single-workflow operation and its row lock and
compare-and-set, so a workflow that changed meanwhile is refused and reported, never changed
twice. A dry run reads the same batches, says what would change, and changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from cpoa import defaults, editorial, errors, machine

logger = logging.getLogger(__name__)

ACTIONS = ("retry", "cancel", "fork")


FILTER_FIELDS = ("state", "kind", "failed_step", "started_after", "started_before")
"""The fields that narrow a filter; at least one is needed, or ``all_workflows``."""


@dataclasses.dataclass(frozen=True)
class Filter:
    """Which workflows a bulk action applies to; None matches anything.

    Attributes:
        state: Their state.
        kind: ``podcast`` or ``snippets``.
        failed_step: The state they failed in.
        started_after: Started at or after this instant.
        started_before: Started before this instant.
        all_workflows: Every workflow is meant (``--all``, ``"all": true``): required when
            no other field narrows the filter.
        include_forks: A bulk fork forks forks too (by default it skips them; a retry or
            cancel always includes them).
    """

    state: str | None = None
    kind: str | None = None
    failed_step: str | None = None
    started_after: datetime.datetime | None = None
    started_before: datetime.datetime | None = None
    all_workflows: bool = False
    include_forks: bool = False

    @classmethod
    def checked(cls, **fields: Any) -> Filter:
        """Builds a filter from caller input.

        Raises:
            InvalidInput: naming the bad field; an empty filter without ``all_workflows``
                names ``all``.
        """
        if not fields.get("all_workflows") and all(fields.get(n) is None for n in FILTER_FIELDS):
            raise errors.InvalidInput(
                "all: an empty filter matches every workflow; give one of "
                f"{', '.join(FILTER_FIELDS)}, or all to mean every workflow", field="all")
        known = {s for kind in machine.KINDS for s in machine.states(kind)}
        for name in ("state", "failed_step"):
            if fields.get(name) is not None and fields[name] not in known:
                raise errors.InvalidInput(f"{name}: unknown state {fields[name]!r}", field=name)
        if fields.get("kind") is not None and fields["kind"] not in machine.KINDS:
            raise errors.InvalidInput(f"kind: unknown workflow kind {fields['kind']!r}",
                                      field="kind")
        for name in ("started_after", "started_before"):
            value = fields.get(name)
            if value is not None and (not isinstance(value, datetime.datetime)
                                      or value.tzinfo is None):
                raise errors.InvalidInput(f"{name}: expected a time with its UTC offset",
                                          field=name)
        return cls(**fields)


@dataclasses.dataclass
class Report:
    """What a bulk action changed, or would change (``dry_run``)."""

    action: str
    dry_run: bool
    matched: int = 0
    changed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    refused: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run(engine: Any, action: str, where: Filter, *, dry_run: bool,
        batch_size: int = defaults.BULK_BATCH_SIZE, from_state: str | None = None,
        params: Mapping[str, Any] | None = None) -> Report:
    """Applies ``action`` to every workflow matching ``where``, batch by batch.

    Args:
        engine: The :class:`cpoa.engine.Engine` whose store and operations are used.
        action: ``retry``, ``cancel`` or ``fork`` (with ``from_state`` and ``params``).
        dry_run: Only say what would change.
        batch_size: Workflows read (and changed) per batch.

    Raises:
        InvalidInput: an unknown action, or a fork without ``from_state``.
    """
    if action not in ACTIONS:
        raise errors.InvalidInput(f"action: expected one of {', '.join(ACTIONS)}",
                                  field="action")
    if action == "fork" and not from_state:
        raise errors.InvalidInput("from_state: a bulk fork needs the state to fork from",
                                  field="from_state")
    report = Report(action, dry_run)
    if action != "fork":  # forks are skipped by a fork only
        where = dataclasses.replace(where, include_forks=True)
    as_of, after = engine.store.db_now(), None
    while rows := engine.store.bulk_batch(where, as_of=as_of, after=after, limit=batch_size):
        for row in rows:
            report.matched += 1
            _one(engine, report, row, from_state, params)
        after = rows[-1]["workflow_id"]
        logger.info("bulk batch", extra={"action": f"bulk_{action}", "dry_run": dry_run,
                                         "matched": report.matched})
    return report


def _one(engine: Any, report: Report, row: Mapping[str, Any], from_state: str | None,
         params: Mapping[str, Any] | None) -> None:
    """Changes (or, in a dry run, predicts) one workflow; a refusal is reported, not raised.

    A database error on one workflow (StoreError, StoreBusy: a lock not granted, a failed
    write) is reported as its refusal too, and the run goes on with the next one: the
    report lists what was and was not done instead of stopping halfway without one."""
    workflow_id = row["workflow_id"]
    try:
        change = (_predict if report.dry_run else _apply)(engine, report.action, row,
                                                          from_state, params)
    except (errors.InvalidTransition, errors.InvalidInput, errors.StaleState,
            errors.StoreError) as exc:
        if isinstance(exc, errors.StoreError):
            logger.warning("bulk %s of %s failed: %s", report.action, workflow_id, exc,
                           extra={"action": f"bulk_{report.action}"})
        report.refused.append({"workflow_id": str(workflow_id), "state": row["state"],
                               "error": str(exc)})
        return
    report.changed.append({"workflow_id": str(workflow_id), "from": row["state"], **change})


def _predict(engine: Any, action: str, row: Mapping[str, Any], from_state: str | None,
             params: Mapping[str, Any] | None) -> dict[str, Any]:
    if action == "fork":
        source, history = engine.store.fork_source(row["workflow_id"])
        editorial.fork_plan(source, history, from_state, params)
        return {"to": from_state, "new_workflow_id": None}
    dest = machine.decide(row["kind"], row["state"], action, row["failed_from_state"]).state
    return {"to": dest}


def _apply(engine: Any, action: str, row: Mapping[str, Any], from_state: str | None,
           params: Mapping[str, Any] | None) -> dict[str, Any]:
    workflow_id: uuid.UUID = row["workflow_id"]
    if action == "fork":
        return {"to": from_state,
                "new_workflow_id": str(engine.fork(workflow_id, from_state, params))}
    return {"to": getattr(engine, action)(workflow_id)}
