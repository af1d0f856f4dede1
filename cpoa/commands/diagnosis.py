"""The commands of ``cpoa`` that say what holds workflows where they are: ``why ID`` (one
workflow: lease, schedule, agent tasks, agent limits) and ``agents status`` (every agent's queue).

Exit codes as every command's (:mod:`cpoa.cli`): 0 ok, 1 the operation failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime

from cpoa import commands, inputs, queues
from cpoa.engine import Engine
from cpoa.gateway import why


def command_why(engine: Engine, args: argparse.Namespace) -> int:
    diagnosis = why.diagnose(engine.store, engine.settings, inputs.workflow_id(args.workflow_id))
    text = [f"{diagnosis['workflow_id']}  {diagnosis['kind']}  {diagnosis['state']}",
            diagnosis["reason"]]
    text += [f"  {t['step']:<13} {t['agent']:<5} {t['status']:<10} {t['item_key']}"
             for t in diagnosis["tasks"]]
    commands.output(args, diagnosis, "\n".join(text))
    return 0


def command_agents_status(engine: Engine, args: argparse.Namespace) -> int:
    agents = queues.every_agent(engine.store.agent_queues())
    now = datetime.datetime.now(datetime.timezone.utc)
    commands.output(args, [queues.as_json(q) for q in agents], queues.table(agents, now))
    return 0
