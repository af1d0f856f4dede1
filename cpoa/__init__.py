"""CPOA: durable podcast workflows on PostgreSQL.

    >>> import cpoa
    >>> workflow_id = cpoa.start_workflow("podcast", {"topic": "tidal power"})
    >>> cpoa.advance(workflow_id)   # or let `cpoa worker` drive it
"""

from __future__ import annotations

from cpoa.api import advance, cancel, connect, get_workflow, retry, start_workflow
from cpoa.engine import Engine
from cpoa.errors import CPOAError

__all__ = ["CPOAError", "Engine", "advance", "cancel", "connect", "get_workflow", "retry",
           "start_workflow"]
