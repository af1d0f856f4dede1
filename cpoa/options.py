"""Command-line option types and their ``CPOA_*`` environment twins, checked only when used.

An option's environment twin is read when the parser is built but converted only once the
command that has the option was chosen (:func:`resolve`): a bad ``CPOA_API_PORT`` stops
``cpoa serve``, never ``cpoa list`` or ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any

from cpoa import errors, prune

YES = ("1", "true", "yes", "on")
NO = ("0", "false", "no", "off", "")


@dataclasses.dataclass(frozen=True)
class FromEnv:
    """An option's default, still raw, taken from its environment variable.

    Args:
        variable: The variable's name, for the error message.
        raw: Its text.
        convert: The option's type, which checks and converts the text.
    """

    variable: str
    raw: str
    convert: Callable[[str], Any]


def env_default(variable: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    """Returns the option's default: ``default``, or the variable's text to convert later."""
    raw = os.environ.get(variable, "").strip()
    return FromEnv(variable, raw, convert) if raw else default


def resolve(args: argparse.Namespace) -> None:
    """Converts the environment defaults of the chosen command's options, in place.

    Raises:
        ConfigError: naming the variable and what a valid value looks like.
    """
    for name, value in vars(args).items():
        if isinstance(value, FromEnv):
            try:
                setattr(args, name, value.convert(value.raw))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise errors.ConfigError(f"{value.variable}: {exc}",
                                         variable=value.variable) from None


def port(text: str) -> int:
    """Parses a TCP port number (0 to 65535)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a TCP port: give a whole number from 0 to 65535")
    return value


def positive_int(text: str) -> int:
    """Parses a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: give a whole number of at least 1")
    return value


def yes_no(text: str) -> bool:
    """Parses a yes/no value: 1, true, yes, on or 0, false, no, off (any case)."""
    value = text.strip().lower()
    if value in YES or value in NO:
        return value in YES
    raise argparse.ArgumentTypeError(
        f"{text!r} is not yes or no: give 1, true, yes, on or 0, false, no, off")


def duration(text: str) -> float:
    """Parses an age such as 30d, 12h, 90m, 3600s or a number of seconds."""
    try:
        return prune.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def host_list(text: str) -> list[str]:
    """Parses comma-separated ``host`` or ``host:port`` entries."""
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts or any(" " in h or h.count(":") > 1 and not h.startswith("[") for h in hosts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of hosts: give host or host:port, comma-separated")
    return hosts
