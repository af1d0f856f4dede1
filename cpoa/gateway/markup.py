"""HTML and SVG built from escaped parts: text is escaped unless it is already :class:`Markup`.

The dashboard shows text that came from callers and agents (topics, errors, URLs). Building
pages only through :func:`el` means a value cannot be put into markup unescaped by forgetting
a call: escaping is the default, and only markup made here passes through as is.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

_VOID = frozenset({"br", "hr", "img", "input", "link", "meta", "source"})


class Markup(str):
    """A string that is already safe markup (made by this module, never from data)."""


Child = Markup | str | int | float | None | Iterable["Child"]


def escape(value: Any) -> Markup:
    """Returns ``value`` as markup: unchanged if it is Markup, else its text escaped."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(children: Iterable[Child]) -> Markup:
    """Returns the children, each escaped unless markup, one after another."""
    parts: list[str] = []
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, (str, int, float)):
            parts.append(escape(child))
        else:
            parts.append(join(child))
    return Markup("".join(parts))


def attributes(attrs: Mapping[str, Any] | None) -> Markup:
    """Returns ` name="value"` pairs; None or False leaves one out, True writes its name."""
    parts = []
    for name, value in (attrs or {}).items():
        if value is None or value is False:
            continue
        name = name.rstrip("_").replace("_", "-")  # class_ -> class, data_state -> data-state
        parts.append(f" {name}" if value is True else f' {name}="{escape(value)}"')
    return Markup("".join(parts))


def el(tag: str, attrs: Mapping[str, Any] | None = None, *children: Child) -> Markup:
    """Returns one element: ``el("td", {"class_": "x"}, text)``."""
    if tag in _VOID:
        return Markup(f"<{tag}{attributes(attrs)}>")
    return Markup(f"<{tag}{attributes(attrs)}>{join(children)}</{tag}>")
