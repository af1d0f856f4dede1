"""The subcommands of ``cpoa`` that live outside :mod:`cpoa.cli`, by theme, and what every
subcommand shares: :func:`add` (a subcommand that also accepts -v) and :func:`output` (text,
or one JSON document with ``--json``).

:mod:`cpoa.cli` owns ``main``, the error handler and the parser; it calls each theme's
``configure_*_parser``. Imports point one way: cli → commands.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                     help="more logs (-v info, -vv debug); logs are JSON on stderr")


def add(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Adds a subcommand that also accepts -v after its name."""
    return sub.add_parser(name, parents=[_COMMON], **kwargs)


def output(args: argparse.Namespace, document: Any, text: str) -> None:
    """Prints ``document`` as JSON when the command was given ``--json``, else ``text``."""
    print(json.dumps(document, default=str, indent=2) if getattr(args, "json", False) else text)
